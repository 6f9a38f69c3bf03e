"""``seccomp.Verdicts``: what a profile answers for a syscall by name, used to explain a step of the init that
fails after the filter is loaded."""

from __future__ import annotations

from ocirt.linux.seccomp import Verdicts


def test_default_deny_with_an_allow_list():
    verdicts = Verdicts({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]})
    assert verdicts.denies("setuid", 1)
    assert verdicts.denies("setuid", None)
    assert not verdicts.denies("write", 1)
    assert not verdicts.denies("setuid", 2), "EPERM is the default errno: ENOENT is not the profile's"


def test_default_errno_and_rule_errno():
    verdicts = Verdicts({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
        {"names": ["capset"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]})
    assert verdicts.denies("setuid", 38) and not verdicts.denies("setuid", 1)
    assert verdicts.denies("capset", 13) and not verdicts.denies("capset", 38)


def test_default_allow_with_a_conditional_deny():
    verdicts = Verdicts({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["setuid"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1000, "op": "SCMP_CMP_EQ"}]}]})
    assert verdicts.denies("setuid", 1), "denied for some arguments"
    assert not verdicts.denies("setgid", 1)


def test_log_and_notify_let_the_call_through_and_kill_has_no_errno():
    verdicts = Verdicts({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
        {"names": ["write"], "action": "SCMP_ACT_LOG"}, {"names": ["openat"], "action": "SCMP_ACT_NOTIFY"}]})
    assert not verdicts.denies("write", 1) and not verdicts.denies("openat", 1)
    assert verdicts.denies("close", 1)


def test_trace_without_a_tracer_is_enosys():
    verdicts = Verdicts({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getcwd"], "action": "SCMP_ACT_TRACE"}]})
    assert verdicts.denies("getcwd", 38) and not verdicts.denies("getcwd", 1)
