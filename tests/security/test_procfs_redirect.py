"""procfs writes redirected by overmounting /proc files (CVE-2025-52881, and CVE-2019-19921 before it):
the runtime writes sysctls and oom_score_adj after the container's mounts exist; a runtime that writes
through the container's /proc path would write whatever was mounted there instead, and the real setting
would silently not be made. ocirt refuses config mounts inside /proc and writes procfs files only
through a private procfs instance that no mount can cover. A createContainer hook, which runs inside
the container's mount namespace after the runtime's own mounts, plays the attacker that got a mount in."""

from __future__ import annotations

import subprocess

import pytest

from security import CANARY_TEXT, assert_clear_error, assert_nothing_left, own_rootfs_bundle

# An ipc sysctl: namespaced, and (unlike the uts ones) writable by the root of a user namespace.
SYSCTL = "kernel.msgmax"
SYSCTL_VALUE = "12345"


def msgmax_of(pid: int) -> str:
    """kernel.msgmax of ``pid``'s ipc namespace, read from the host's procfs by a process in it."""
    result = subprocess.run(["nsenter", f"--ipc=/proc/{pid}/ns/ipc", "cat", "/proc/sys/kernel/msgmax"],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def seen_inside(pid: int, path: str) -> str:
    """``path`` as the container's init sees it (its ipc namespace too: ipc sysctls are per-namespace
    dentries, so a mount on the container's one is invisible from another ipc namespace)."""
    result = subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--ipc=/proc/{pid}/ns/ipc", "cat", path],
                            capture_output=True, text=True, check=True)
    return result.stdout


def holds_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        effective = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> 24 & 1)


def overmount_hook(source: str, target: str) -> dict:
    return {"path": "/bin/sh", "args": ["sh", "-c", f'mount --bind "{source}" "{target}"']}


def test_a_config_mount_over_a_sysctl_file_is_refused(make_bundle, user, canary):
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    bundle.config["linux"]["sysctl"] = {SYSCTL: SYSCTL_VALUE}
    bundle.config["mounts"].append({"destination": "/proc/sys/kernel/msgmax", "type": "bind",
                                    "source": str(canary.file), "options": ["bind"]})
    result = bundle.create()
    assert_clear_error(result, "/proc/sys/kernel/msgmax")
    assert_nothing_left(bundle)


def test_sysctl_writes_go_to_the_kernel_not_to_an_overmount(make_bundle, user, canary):
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    bundle.config["linux"]["sysctl"] = {SYSCTL: SYSCTL_VALUE}
    target = bundle.rootfs / "proc" / "sys" / "kernel" / "msgmax"
    bundle.config["hooks"] = {"createContainer": [overmount_hook(str(canary.file), str(target))]}
    result = bundle.create()
    try:
        assert result.returncode == 0, result.stderr
        pid = bundle.state()["pid"]
        assert msgmax_of(pid) == SYSCTL_VALUE, "the real sysctl is set"
        assert seen_inside(pid, "/proc/sys/kernel/msgmax") == CANARY_TEXT, "the overmount was in place"
    finally:
        bundle.delete(force=True)
    assert_nothing_left(bundle)


@pytest.mark.parametrize("value", [500, -100])
def test_oom_score_adj_goes_to_the_kernel_not_to_an_overmount(make_bundle, user, canary, value):
    if value < 0 and (user is not None or not holds_cap_sys_resource()):
        pytest.skip("lowering oom_score_adj needs CAP_SYS_RESOURCE, which the runtime's caller lacks here")
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    bundle.config["process"]["oomScoreAdj"] = value
    # The container's procfs shows its init as pid 1; /proc/self of the init is /proc/1.
    target = bundle.rootfs / "proc" / "1" / "oom_score_adj"
    bundle.config["hooks"] = {"createContainer": [overmount_hook(str(canary.file), str(target))]}
    result = bundle.create()
    try:
        assert result.returncode == 0, result.stderr
        pid = bundle.state()["pid"]
        with open(f"/proc/{pid}/oom_score_adj") as f:
            assert f.read().strip() == str(value)
        assert seen_inside(pid, "/proc/1/oom_score_adj") == CANARY_TEXT, "the overmount was in place"
    finally:
        bundle.delete(force=True)
    assert_nothing_left(bundle)


@pytest.mark.parametrize("sysctl, needs", [
    ({"kernel.core_pattern": "|/tmp/ocirt-test-never-run %p"}, "not namespaced"),
    ({"vm.overcommit_memory": "1"}, "not namespaced"),
    ({"net/../kernel/core_pattern": "|/tmp/ocirt-test-never-run"}, "malformed"),
    ({"kernel..core_pattern": "x"}, "malformed"),
    ({"net.ipv4.ip_forward": "1"}, "network namespace"),
    ({"kernel.msgmax": "9000"}, "ipc namespace"),
])
def test_sysctls_that_would_change_the_host_are_refused(make_bundle, user, sysctl, needs):
    """Only sysctls of a namespace the container owns: kernel.core_pattern set from a config would make
    the host's root run a program of the config's choosing at the next crash."""
    with open("/proc/sys/kernel/core_pattern") as f:
        core_pattern = f.read()
    bundle = make_bundle(user=user, args=["true"])
    linux = bundle.config["linux"]
    linux["sysctl"] = sysctl
    drop = {"network namespace": "network", "ipc namespace": "ipc"}.get(needs)
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != drop]
    result = bundle.create()
    assert_clear_error(result, needs)
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read() == core_pattern
    assert_nothing_left(bundle)
