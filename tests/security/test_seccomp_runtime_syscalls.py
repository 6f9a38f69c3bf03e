"""The runtime's own syscalls between loading the container's seccomp filter and execve (issue 14, items 1
and 6).

With ``noNewPrivileges: false`` the filter goes in before the user switch, so everything the runtime does
after it is filtered too. Profiles are written against runc: the runtime may make only the syscalls runc
makes there, or every container with a default-deny profile fails to start. Each profile of
``seccomp_profiles`` (Docker's, podman's, a pre-2020 one without openat2/close_range/faccessat2, and a
minimal one with only runc's syscalls and the program's) runs a container and an exec, with
noNewPrivileges true and false. A profile that denies a syscall the runtime does need gets an error that
names the step, the syscall and the profile.
"""

from __future__ import annotations

import helpers
import pytest

from security import assert_clear_error, assert_nothing_left
from security import seccomp_profiles as profiles

PROFILES = {
    "docker": profiles.docker_default,
    "podman": lambda: profiles.podman_default(profiles.DOCKER_CAPS),
    "before-2020": profiles.before_2020,
    "minimal": profiles.minimal,
}


def with_profile(bundle: helpers.Bundle, name: str, no_new_privileges: bool) -> None:
    section = PROFILES[name]()
    if section is None:
        pytest.skip(f"{profiles.PODMAN_PROFILE} is not installed")
    bundle.config["linux"]["seccomp"] = section
    bundle.config["process"]["noNewPrivileges"] = no_new_privileges


@pytest.mark.parametrize("no_new_privileges", [False, True], ids=["nnp-false", "nnp-true"])
@pytest.mark.parametrize("name", list(PROFILES))
def test_run_under_a_default_deny_profile(make_bundle, name, no_new_privileges):
    bundle = make_bundle(args=["echo", "ran"])
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [100]}
    with_profile(bundle, name, no_new_privileges)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"
    assert result.stderr == ""
    assert_nothing_left(bundle)


@pytest.mark.parametrize("no_new_privileges", [False, True], ids=["nnp-false", "nnp-true"])
@pytest.mark.parametrize("name", list(PROFILES))
def test_exec_under_a_default_deny_profile(make_bundle, name, no_new_privileges):
    bundle = make_bundle(args=["sleep", "600"])
    with_profile(bundle, name, no_new_privileges)
    started = bundle.run("-d")
    assert started.returncode == 0, started.stderr
    try:
        result = bundle.runtime(["exec", "--user", "1000:1000", bundle.id, "echo", "exec-ran"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == "exec-ran\n"
        assert result.stderr == ""
    finally:
        bundle.delete(force=True)
    assert_nothing_left(bundle)


@pytest.mark.rootless
@pytest.mark.parametrize("no_new_privileges", [False, True], ids=["nnp-false", "nnp-true"])
def test_rootless_run_and_exec_under_the_minimal_profile(make_bundle, unprivileged_user, no_new_privileges):
    bundle = make_bundle(user=unprivileged_user, args=["sleep", "600"])
    with_profile(bundle, "minimal", no_new_privileges)
    started = bundle.run("-d")
    assert started.returncode == 0, started.stderr
    try:
        result = bundle.runtime(["exec", bundle.id, "echo", "exec-ran"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == "exec-ran\n"
    finally:
        bundle.delete(force=True)
    assert_nothing_left(bundle)


def denying(*names: str, args: list[dict] | None = None) -> dict:
    """Everything allowed but ``names`` (with ``args``, when given), which fail with EPERM."""
    rule = {"names": list(names), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    if args:
        rule["args"] = args
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": profiles.ARCHES, "syscalls": [rule]}


@pytest.mark.parametrize("syscall", ["getcwd", "openat2", "close_range", "faccessat2", "access", "fchdir",
                                     "setresuid", "setresgid"])
def test_a_syscall_the_runtime_no_longer_needs_after_the_filter_may_be_denied(make_bundle, syscall):
    """Each of these used to come after the filter (cwd, executable lookup, fd sealing, user switch)."""
    bundle = make_bundle(args=["echo", "ran"])
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    bundle.config["process"]["noNewPrivileges"] = False
    bundle.config["linux"]["seccomp"] = denying(syscall)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"
    assert_nothing_left(bundle)


# Denied only for what the process user needs (uid 1000, a supplementary group), so that the init of the
# exec case, running as root without groups, still starts.
DENIALS = {
    "setuid": ([{"index": 0, "value": 1000, "op": "SCMP_CMP_EQ"}], "cannot switch to uid 1000 gid 1000"),
    "setgroups": ([{"index": 0, "value": 0, "op": "SCMP_CMP_GT"}], "cannot switch to uid 1000 gid 1000"),
    "capset": (None, "cannot set the capabilities"),
}


@pytest.mark.parametrize("syscall", list(DENIALS))
def test_run_with_a_profile_denying_what_the_runtime_needs_says_so(make_bundle, syscall):
    args, step = DENIALS[syscall]
    bundle = make_bundle(args=["echo", "ran"])
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [100]}
    bundle.config["process"]["noNewPrivileges"] = False  # the filter comes before the user switch
    bundle.config["linux"]["seccomp"] = denying(syscall, args=args)
    result = bundle.run()
    assert_clear_error(result, step, f"the container's seccomp profile denies {syscall}")
    assert_nothing_left(bundle)


@pytest.mark.parametrize("syscall", ["setuid", "setgroups"])
def test_exec_with_a_profile_denying_what_the_runtime_needs_says_so(make_bundle, syscall):
    args, step = DENIALS[syscall]
    bundle = make_bundle(args=["sleep", "600"])
    bundle.config["process"]["noNewPrivileges"] = False
    bundle.config["linux"]["seccomp"] = denying(syscall, args=args)
    started = bundle.run("-d")
    assert started.returncode == 0, started.stderr
    try:
        result = bundle.runtime(["exec", "--user", "1000:1000", "--additional-gids", "100", bundle.id,
                                 "echo", "ran"])
    finally:
        bundle.delete(force=True)
    assert_clear_error(result, step, f"the container's seccomp profile denies {syscall}")
    assert_nothing_left(bundle)


def test_a_profile_denying_execve_says_so(make_bundle):
    bundle = make_bundle(args=["echo", "ran"])
    bundle.config["linux"]["seccomp"] = denying("execve")
    result = bundle.run()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert 'exec: "echo": operation not permitted' in result.stderr, result.stderr
    assert "the container's seccomp profile denies execve" in result.stderr, result.stderr
    assert_nothing_left(bundle)
