"""ocirt.linux.seccomp against the real kernel: every filter is loaded in a forked child."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import statistics
import struct
import time
from pathlib import Path

import pytest
import seccomp as libseccomp

from ocirt import OCI_VERSION, syscalls
from ocirt import log as ocirt_log
from ocirt.errors import ConfigError, OcirtError
from ocirt.linux import seccomp as oseccomp

from .forked import run_forked

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (filters without no_new_privs, uid 0)")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _native_syscalls() -> list[str]:
    names = []
    for number in range(0, 1024):
        try:
            names.append(libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, number).decode())
        except ValueError:
            continue
    return names


ALL_SYSCALLS = _native_syscalls()
PERSONALITY_NR = libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, "personality")
GETPRIORITY_NR = libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, "getpriority")
MKDIR_NAMES = {libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, name) for name in ("mkdir", "mkdirat")
               if libseccomp.resolve_syscall(libseccomp.Arch.NATIVE, name) >= 0}


def allow_list_profile(blocked: tuple[str, ...] = (), **extra) -> dict:
    """A docker-like profile: deny by default, allow every syscall this arch has but ``blocked``."""
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": [n for n in ALL_SYSCALLS if n not in blocked], "action": "SCMP_ACT_ALLOW"}],
    }
    profile.update(extra)
    return profile


def block_mkdir(action: str, **rule) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": action, **rule}]}


def raw_syscall(number: int, *args: int) -> int | str:
    """The raw result: a value, or the errno name (glibc's personality() hides errors, syscall() doesn't)."""
    result = _libc.syscall(ctypes.c_long(number), *(ctypes.c_ulong(a) for a in args))
    if result == -1:
        return errno.errorcode[ctypes.get_errno()]
    return result


def mkdir_outcome(path: str) -> str:
    try:
        os.mkdir(path)
    except OSError as err:
        return errno.errorcode[err.errno]
    return "created"


def seccomp_status() -> tuple[str, str]:
    fields = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":\t" in line)
    return fields["Seccomp"].strip(), fields.get("Seccomp_filters", "").strip()


def set_no_new_privs() -> None:
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)


def load(section: dict) -> int | None:
    set_no_new_privs()
    return oseccomp.install_filter(oseccomp.compile_filter(section, cache_dir=None))


# ---- actions ---------------------------------------------------------------------------------------


def test_errno_rule_blocks_mkdir_and_nothing_else(tmp_path):
    def child():
        load(block_mkdir("SCMP_ACT_ERRNO"))
        probe = tmp_path / "file"
        probe.write_text("still works")
        return {"mkdir": mkdir_outcome(str(tmp_path / "d")), "read": probe.read_text(),
                "listdir": sorted(os.listdir(tmp_path)), "pid": os.getpid() > 0, "status": seccomp_status()}

    result = run_forked(child).ok()
    assert result["mkdir"] == "EPERM"
    assert result["read"] == "still works"
    assert result["listdir"] == ["file"]
    assert result["status"] == ["2", "1"]  # filter mode, one filter
    assert not (tmp_path / "d").exists()


def test_allow_list_with_default_errno_ret(tmp_path):
    section = allow_list_profile(blocked=("mkdir", "mkdirat"), defaultErrnoRet=errno.EXDEV)
    assert len(section["syscalls"][0]["names"]) > 300

    def child():
        load(section)
        return {"mkdir": mkdir_outcome(str(tmp_path / "d")), "cwd": os.getcwd(), "uid": os.getuid()}

    result = run_forked(child).ok()
    assert result["mkdir"] == "EXDEV"
    assert result["uid"] == 0
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("action", ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS"])
def test_kill_actions_end_the_process_with_sigsys(tmp_path, action):
    def child():
        load(block_mkdir(action))
        os.mkdir(tmp_path / "d")
        return "mkdir returned"

    result = run_forked(child)
    assert result.signal == signal.SIGSYS, result
    assert result.value is None
    assert not (tmp_path / "d").exists()


def test_trap_sends_sigsys_to_a_handler(tmp_path):
    def child():
        caught = []
        signal.signal(signal.SIGSYS, lambda signum, frame: caught.append(signum))
        load(block_mkdir("SCMP_ACT_TRAP"))
        outcome = mkdir_outcome(str(tmp_path / "d"))
        os.getpid()  # gives the interpreter a point to run the Python-level handler
        return {"caught": caught, "outcome": outcome}

    result = run_forked(child).ok()
    assert result["caught"] == [signal.SIGSYS]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("action", "rule", "expected"), [
    ("SCMP_ACT_ERRNO", {"errnoRet": errno.EROFS}, "EROFS"),
    ("SCMP_ACT_ERRNO", {}, "EPERM"),
    # Without a tracer the kernel fails a traced syscall with ENOSYS.
    ("SCMP_ACT_TRACE", {"errnoRet": 7}, "ENOSYS"),
    ("SCMP_ACT_LOG", {}, "created"),
])
def test_returning_actions(tmp_path, action, rule, expected):
    def child():
        load(block_mkdir(action, **rule))
        return mkdir_outcome(str(tmp_path / "d"))

    assert run_forked(child).ok() == expected
    assert (tmp_path / "d").exists() == (expected == "created")


# ---- argument comparisons ----------------------------------------------------------------------------

PERSONAS = [0, 4, 8, 9, 0x0040008]


@pytest.mark.parametrize(("op", "value", "value_two", "blocked"), [
    ("SCMP_CMP_EQ", 8, 0, {8}),
    ("SCMP_CMP_NE", 8, 0, {0, 4, 9, 0x0040008}),
    ("SCMP_CMP_LT", 8, 0, {0, 4}),
    ("SCMP_CMP_LE", 8, 0, {0, 4, 8}),
    ("SCMP_CMP_GT", 8, 0, {9, 0x0040008}),
    ("SCMP_CMP_GE", 8, 0, {8, 9, 0x0040008}),
    # value is the mask, valueTwo the value the masked argument must equal
    ("SCMP_CMP_MASKED_EQ", 0xFF, 8, {8, 0x0040008}),
])
def test_argument_operators(op, value, value_two, blocked):
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{
        "names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
        "args": [{"index": 0, "value": value, "valueTwo": value_two, "op": op}]}]}

    def child():
        load(section)
        return {str(persona): raw_syscall(PERSONALITY_NR, persona) for persona in PERSONAS}

    outcome = run_forked(child).ok()
    assert {p for p in PERSONAS if outcome[str(p)] == "EACCES"} == blocked
    assert all(isinstance(outcome[str(p)], int) for p in PERSONAS if p not in blocked)


def test_comparisons_of_one_argument_are_ored_and_of_different_arguments_anded():
    prio_process, prio_pgrp, nobody = 0, 1, 0x3FFFFFF0
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
         "args": [{"index": 0, "value": prio_process, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": nobody, "op": "SCMP_CMP_EQ"}]},
    ]}

    def child():
        load(section)
        return [raw_syscall(PERSONALITY_NR, 8), raw_syscall(PERSONALITY_NR, 9), raw_syscall(PERSONALITY_NR, 4),
                raw_syscall(GETPRIORITY_NR, prio_process, nobody),
                raw_syscall(GETPRIORITY_NR, prio_pgrp, nobody),
                raw_syscall(GETPRIORITY_NR, prio_process, 0)]

    p8, p9, p4, both, first_only, second_only = run_forked(child).ok()
    assert (p8, p9) == ("EACCES", "EACCES")
    assert isinstance(p4, int)
    assert both == "EACCES"
    assert first_only == "ESRCH"  # not filtered: the kernel's own answer for a missing group
    assert isinstance(second_only, int)


# ---- notify --------------------------------------------------------------------------------------------

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif), 80 bytes
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp), 24 bytes
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, data.nr, data.arch, data.ip, data.args[6]
_NOTIF_RESP = struct.Struct("=QqiI")  # id, val, error, flags


@pytest.mark.parametrize("flags", [[], ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_FILTER_FLAG_TSYNC"]])
def test_notify_listener_reaches_the_agent_and_answers(tmp_path, flags):
    listener_path = str(tmp_path / "agent.sock")
    target = tmp_path / "notified"
    section = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": listener_path,
               "listenerMetadata": "MKDIR=answer-erofs", "flags": flags,
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    compiled = oseccomp.compile_filter(section, cache_dir=None)
    assert compiled.flags & oseccomp.SECCOMP_FILTER_FLAG_NEW_LISTENER
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    agent.bind(listener_path)
    agent.listen(1)
    seen: dict = {}

    def child():
        set_no_new_privs()
        notify_fd = oseccomp.install_filter(compiled)
        state = {"ociVersion": OCI_VERSION, "id": "ocirt-test-notify", "status": "creating",
                 "pid": os.getpid(), "bundle": str(tmp_path), "annotations": {"k": "v"}}
        oseccomp.send_listener_fd(compiled.listener_path, notify_fd, state, compiled.listener_metadata)
        os.close(notify_fd)
        return mkdir_outcome(str(target))

    def answer(pid: int) -> None:
        agent.settimeout(10)
        connection, _ = agent.accept()
        with connection:
            message, fds, _, _ = socket.recv_fds(connection, 65536, 4)
            assert connection.recv(1) == b""  # one message, then the runtime closes
        seen["state"] = json.loads(message)
        assert len(fds) == 1
        with os.fdopen(fds[0], "rb", buffering=0) as notify:
            request = bytearray(_NOTIF.size)
            fcntl.ioctl(notify.fileno(), SECCOMP_IOCTL_NOTIF_RECV, request, True)
            notif_id, notif_pid, _, nr, *_ = _NOTIF.unpack(request)
            seen["pid"], seen["nr"] = notif_pid, nr
            response = bytearray(_NOTIF_RESP.pack(notif_id, 0, -errno.EROFS, 0))
            fcntl.ioctl(notify.fileno(), SECCOMP_IOCTL_NOTIF_SEND, response, True)
        seen["child"] = pid

    try:
        result = run_forked(child, while_running=answer)
    finally:
        agent.close()
    assert result.ok() == "EROFS"
    assert not target.exists()
    state = seen["state"]
    assert state["ociVersion"] == OCI_VERSION
    assert state["fds"] == ["seccompFd"]
    assert state["pid"] == seen["child"]
    assert state["metadata"] == "MKDIR=answer-erofs"
    assert state["state"]["id"] == "ocirt-test-notify" and state["state"]["status"] == "creating"
    assert seen["pid"] == seen["child"]
    assert seen["nr"] in MKDIR_NAMES


def test_send_listener_fd_reports_a_missing_agent(tmp_path):
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OcirtError, match=r"cannot send the seccomp listener to .*nobody\.sock: no such file"):
            oseccomp.send_listener_fd(str(tmp_path / "nobody.sock"), read_end, {"pid": 1}, None)
    finally:
        os.close(read_end)
        os.close(write_end)


# ---- flags, unknown names, preconditions ---------------------------------------------------------------


@pytest.mark.parametrize("flag", ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                                  "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"])
def test_flags_are_accepted(tmp_path, flag):
    section = dict(block_mkdir("SCMP_ACT_ERRNO"), flags=[flag])
    compiled = oseccomp.compile_filter(section, cache_dir=None)
    if flag == "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV":
        assert compiled.flags == 0  # meaningless (and refused by the kernel) without a listener
    else:
        assert compiled.flags == oseccomp.FILTER_FLAGS[flag]

    def child():
        set_no_new_privs()
        assert oseccomp.install_filter(compiled) is None
        return mkdir_outcome(str(tmp_path / "d"))

    assert run_forked(child).ok() == "EPERM"


@pytest.fixture
def debug_log(tmp_path):
    path = tmp_path / "ocirt.log"
    saved = (ocirt_log.config.path, ocirt_log.config.json, ocirt_log.config.threshold)
    ocirt_log.configure(str(path), debug=True)
    yield path
    ocirt_log.config.path, ocirt_log.config.json, ocirt_log.config.threshold = saved


def test_unknown_syscall_names_are_skipped(tmp_path, debug_log):
    section = block_mkdir("SCMP_ACT_ERRNO")
    section["syscalls"][0]["names"].append("ocirt_no_such_syscall")
    compiled = oseccomp.compile_filter(section, cache_dir=None)
    assert compiled.skipped == ("ocirt_no_such_syscall",)
    assert "unknown syscall 'ocirt_no_such_syscall' in linux.seccomp.syscalls[0] skipped" in debug_log.read_text()

    def child():
        set_no_new_privs()
        oseccomp.install_filter(compiled)
        return mkdir_outcome(str(tmp_path / "d"))

    assert run_forked(child).ok() == "EPERM"


def test_install_needs_no_new_privs_or_cap_sys_admin(tmp_path):
    compiled = oseccomp.compile_filter(block_mkdir("SCMP_ACT_ERRNO"), cache_dir=None)

    def without_either():
        effective, permitted, inheritable = syscalls.capget()
        syscalls.capset(effective & ~(1 << 21), permitted, inheritable)
        try:
            oseccomp.install_filter(compiled)
        except OcirtError as err:
            return {"error": str(err), "status": seccomp_status()}
        return {"error": None}

    def with_cap_sys_admin():
        assert syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) == 0
        oseccomp.install_filter(compiled)
        return mkdir_outcome(str(tmp_path / "d"))

    refused = run_forked(without_either).ok()
    assert refused["error"] == ("cannot load the seccomp filter: the process has neither no_new_privs set "
                                "nor CAP_SYS_ADMIN")
    assert refused["status"] == ["0", "0"]  # nothing was loaded
    assert run_forked(with_cap_sys_admin).ok() == "EPERM"


def test_kernel_refusal_is_reported():
    bogus = oseccomp.CompiledFilter(b"\xff\xff\x00\x00\x00\x00\x00\x00", 0, False, None, None, (), False)

    def child():
        set_no_new_privs()
        try:
            oseccomp.install_filter(bogus)
        except OcirtError as err:
            return {"error": str(err), "status": seccomp_status()}
        return None

    outcome = run_forked(child).ok()
    assert outcome == {"error": "cannot load the seccomp filter (flags 0x0): invalid argument",
                       "status": ["0", "0"]}


# ---- the cache -----------------------------------------------------------------------------------------


def test_cache_hit_avoids_rebuilding(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    section = allow_list_profile(blocked=("mkdir", "mkdirat"))
    started = time.perf_counter()
    cold = oseccomp.compile_filter(section, cache_dir=str(cache))
    cold_ms = (time.perf_counter() - started) * 1e3
    assert not cold.from_cache
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".bpf"
    assert files[0].stat().st_mode & 0o777 == 0o600

    def no_rebuild(section):
        raise AssertionError("the filter was rebuilt despite a cache entry")

    monkeypatch.setattr(oseccomp, "_build", no_rebuild)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        hit = oseccomp.compile_filter(section, cache_dir=str(cache))
        timings.append((time.perf_counter() - started) * 1e3)
    assert hit.from_cache
    assert hit.bpf == cold.bpf and hit.skipped == cold.skipped
    hit_ms = statistics.median(timings)
    print(f"\nseccomp compile, {len(section['syscalls'][0]['names'])} syscalls: cold {cold_ms:.2f} ms, "
          f"cached median {hit_ms:.3f} ms")
    assert hit_ms < 1.5, timings

    def child():
        set_no_new_privs()
        oseccomp.install_filter(hit)
        return mkdir_outcome(str(tmp_path / "d"))

    assert run_forked(child).ok() == "EPERM"


def test_a_changed_section_misses_the_cache(tmp_path):
    cache = str(tmp_path / "cache")
    first = oseccomp.compile_filter(block_mkdir("SCMP_ACT_ERRNO"), cache_dir=cache)
    changed = oseccomp.compile_filter(block_mkdir("SCMP_ACT_ERRNO", errnoRet=errno.EROFS), cache_dir=cache)
    again = oseccomp.compile_filter(block_mkdir("SCMP_ACT_ERRNO", errnoRet=errno.EROFS), cache_dir=cache)
    assert (first.from_cache, changed.from_cache, again.from_cache) == (False, False, True)
    assert first.bpf != changed.bpf
    assert len(os.listdir(cache)) == 2


def test_a_damaged_or_foreign_cache_entry_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    section = block_mkdir("SCMP_ACT_ERRNO")
    fresh = oseccomp.compile_filter(section, cache_dir=str(cache))
    (entry,) = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:-3])  # truncated
    rebuilt = oseccomp.compile_filter(section, cache_dir=str(cache))
    assert not rebuilt.from_cache and rebuilt.bpf == fresh.bpf
    assert oseccomp.compile_filter(section, cache_dir=str(cache)).from_cache
    entry.chmod(0o666)  # anyone could have written it: not trusted
    assert not oseccomp.compile_filter(section, cache_dir=str(cache)).from_cache
    assert entry.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]  # no temporary file left


# ---- config errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "message"), [
    ({"defaultAction": "SCMP_ACT_BOGUS"}, "linux.seccomp.defaultAction: unknown seccomp action 'SCMP_ACT_BOGUS'"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY cannot be the default action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 5},
     "an errno return value is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not SCMP_ACT_ALLOW"),
    (dict(block_mkdir("SCMP_ACT_KILL", errnoRet=1)), "linux.seccomp.syscalls[0].action: an errno return value"),
    (dict(block_mkdir("SCMP_ACT_ERRNO", errnoRet=70000)), "errno return value 70000 is not an integer"),
    (dict(block_mkdir("SCMP_ACT_ERRNO"), architectures=["SCMP_ARCH_Z80"]),
     "linux.seccomp.architectures[0]: unknown architecture 'SCMP_ARCH_Z80'"),
    (dict(block_mkdir("SCMP_ACT_ERRNO"), flags=["SECCOMP_FILTER_FLAG_BOGUS"]),
     "linux.seccomp.flags[0]: unknown seccomp flag 'SECCOMP_FILTER_FLAG_BOGUS'"),
    (block_mkdir("SCMP_ACT_ERRNO", args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[0].args[0].index: 6 is not an argument index"),
    (block_mkdir("SCMP_ACT_ERRNO", args=[{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]),
     "linux.seccomp.syscalls[0].args[0].op: unknown seccomp operator 'SCMP_CMP_ABOUT'"),
    (block_mkdir("SCMP_ACT_ERRNO", args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
     "linux.seccomp.syscalls[0].args[0].value: -1 is not an unsigned 64-bit integer"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]},
     "linux.seccomp.syscalls[0].names must be a non-empty array"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock",
      "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]},
     "SCMP_ACT_NOTIFY cannot be used for 'write'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]},
     "a rule uses SCMP_ACT_NOTIFY but listenerPath is not set"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"},
     "linux.seccomp.listenerMetadata is set but listenerPath is not"),
])
def test_config_errors_name_the_field(tmp_path, section, message):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as caught:
        oseccomp.compile_filter(section, cache_dir=str(cache))
    assert message in str(caught.value)
    assert not cache.exists() or not list(cache.iterdir())


def test_rules_with_the_default_action_are_dropped(tmp_path):
    section = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EROFS, "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS},
    ]}
    plain = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EROFS}
    assert oseccomp.compile_filter(section, cache_dir=None).bpf == oseccomp.compile_filter(plain, cache_dir=None).bpf
