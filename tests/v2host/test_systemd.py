"""The systemd cgroup driver: `--systemd-cgroup` with runc's slice:prefix:name, a transient scope over
D-Bus (the system bus as root, the user's own bus as the lingering user) with the limits as unit
properties, annotations passed through, the scope gone after delete."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import MODE, run

MiB = 1 << 20
SYSTEMD = ("--systemd-cgroup",)
LIMITS = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 32}, "cpu": {"quota": 50000, "period": 100000}}


def systemctl(caller, *args: str) -> subprocess.CompletedProcess[str]:
    scope = ["--user"] if caller.rootless else []
    return subprocess.run(["systemctl", *scope, *args], capture_output=True, text=True, timeout=60)


def show(caller, unit: str, *names: str) -> dict[str, str]:
    out = systemctl(caller, "show", unit, *(f"--property={name}" for name in names)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def slice_for(caller) -> str:
    return "user.slice" if caller.rootless else "system.slice"


def needs_limits(caller) -> None:
    if caller.rootless and MODE == "v1":
        pytest.skip("cgroup v1: systemd delegates no controller to a user (test_rootless_v1_* covers it)")


def v1_files(unit_cgroup: str) -> list[str]:
    """The scope's limits as the v1 hierarchies hold them (systemd on v1 makes the scope in each)."""
    root = "/sys/fs/cgroup"
    return [open(f"{root}/{controller}{unit_cgroup}/{name}").read().strip()
            for controller, name in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max"),
                                     ("cpu,cpuacct", "cpu.cfs_quota_us"), ("cpu,cpuacct", "cpu.cfs_period_us"))]


@pytest.mark.parametrize("given", ["slice:prefix:name", "absent"])
def test_scope_with_limits_as_properties_and_in_the_files(v2bundle, caller, given):
    needs_limits(caller)
    read_back = ("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"
                 if MODE == "v2" else "true")
    bundle = v2bundle(["sh", "-c", f"{read_back}; sleep 600"], resources=LIMITS,
                      cgroups_path=None if given == "absent" else "")
    unit = f"ocirt-{bundle.id}.scope"
    if given != "absent":
        bundle.config["linux"]["cgroupsPath"] = f"{slice_for(caller)}:ocirt:{bundle.id}"
    bundle.config["annotations"] = {"org.systemd.property.TimeoutStopSec": "7",
                                    "org.systemd.property.CollectMode": "'inactive-or-failed'"}
    bundle.write()
    out = bundle.path / "out"
    result = bundle.runtime(["run", "-d", "--bundle", str(bundle.path), bundle.id], global_args=SYSTEMD,
                            stdout=out)
    assert result.returncode == 0, result.stderr
    try:
        props = show(caller, unit, "ActiveState", "Delegate", "Slice", "MemoryMax", "MemoryLimit", "TasksMax",
                     "CPUQuotaPerSecUSec", "TimeoutStopUSec", "CollectMode", "ControlGroup")
        assert props["ActiveState"] == "active" and props["Delegate"] == "yes", props
        assert props["Slice"] == slice_for(caller)
        assert props["MemoryMax" if MODE == "v2" else "MemoryLimit"] == str(64 * MiB)
        assert props["TasksMax"] == "32" and props["CPUQuotaPerSecUSec"] == "500ms"
        assert props["TimeoutStopUSec"] == "7s" and props["CollectMode"] == "inactive-or-failed"
        assert props["ControlGroup"].endswith(f"/{slice_for(caller)}/{unit}")
        if MODE == "v2":
            import helpers

            assert helpers.wait_for(lambda: len(out.read_text().split()) >= 4, timeout=30)
            assert out.read_text().split() == [str(64 * MiB), "32", "50000", "100000"]
        else:
            assert v1_files(props["ControlGroup"]) == [str(64 * MiB), "32", "50000", "100000"]
        pids = bundle.runtime(["ps", "--format", "json", bundle.id], global_args=SYSTEMD)
        assert pids.returncode == 0 and pids.stdout.strip() != "[]", pids
        # An exec'd process joins the running scope (it is not started a second time). It also joins the
        # container's cgroup namespace, whose root is the scope: "0::/" there, and a path with ".." if the
        # process had stayed in the caller's cgroup.
        joined = bundle.runtime(["exec", bundle.id, "cat", "/proc/self/cgroup"], global_args=SYSTEMD)
        assert joined.returncode == 0, joined.stderr
        assert joined.stdout == "0::/\n" or MODE != "v2", joined.stdout
    finally:
        deleted = bundle.runtime(["delete", "--force", bundle.id], global_args=SYSTEMD)
    assert deleted.returncode == 0, deleted.stderr
    assert show(caller, unit, "LoadState").get("LoadState") in ("not-found", None)


def test_a_forged_state_does_not_stop_another_unit(v2bundle, caller):
    """The scope's directories carry the container's tag, as the cgroupfs driver's do: a state file edited to
    name some other unit (and its cgroup) makes kill and delete act on nothing outside the container."""
    bystander = f"ocirt-bystander-{os.getpid()}.service"
    scope = ["--user"] if caller.rootless else []
    started = subprocess.run(["systemd-run", *scope, f"--unit={bystander}", "sleep", "600"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    bundle = v2bundle(["sleep", "600"], resources={})
    bundle.config["linux"]["cgroupsPath"] = f"{slice_for(caller)}:ocirt:{bundle.id}"
    bundle.write()
    unit = f"ocirt-{bundle.id}.scope"
    try:
        result = bundle.runtime(["run", "-d", "--bundle", str(bundle.path), bundle.id], global_args=SYSTEMD)
        assert result.returncode == 0, result.stderr
        group = show(caller, bystander, "ControlGroup")["ControlGroup"]
        real_group = show(caller, unit, "ControlGroup")["ControlGroup"]
        state_file = bundle.root / bundle.id / "state.json"
        state = json.loads(state_file.read_text())
        saved = state["ocirt"]["cgroup"]
        saved["unit"] = bystander
        # Each directory of the scope (on v1 systemd keeps none in cpuset, net_cls...) swapped for the service's.
        saved["paths"] = {key: path.replace(real_group, group) for key, path in saved["paths"].items()
                          if os.path.isdir(path)}
        assert saved["paths"] and all(os.path.isdir(path) for path in saved["paths"].values()), saved
        state_file.write_text(json.dumps(state))
        killed = bundle.runtime(["kill", "--all", bundle.id, "KILL"], global_args=SYSTEMD)
        deleted = bundle.runtime(["delete", "--force", bundle.id], global_args=SYSTEMD)
        assert "internal error" not in killed.stderr + deleted.stderr
        assert deleted.returncode == 0, deleted.stderr
        assert "not verifiably the container's" in killed.stderr + deleted.stderr
        assert show(caller, bystander, "ActiveState")["ActiveState"] == "active"
    finally:
        # A container's init ignores SIGTERM (pid 1 of its namespace): stop would wait TimeoutStopSec for it.
        for name in (unit, bystander):
            systemctl(caller, "kill", "--signal=KILL", name)
            systemctl(caller, "stop", name)


def test_run_to_completion_and_the_scope_goes(v2bundle, caller):
    needs_limits(caller)
    bundle = v2bundle(["true"], resources={"pids": {"limit": 16}})
    bundle.config["linux"]["cgroupsPath"] = f"{slice_for(caller)}:ocirt:{bundle.id}"
    bundle.write()
    result = run(bundle, global_args=SYSTEMD)
    assert result.returncode == 0, result.stderr
    assert show(caller, f"ocirt-{bundle.id}.scope", "LoadState").get("LoadState") in ("not-found", None)


@pytest.mark.parametrize("path,message", [
    ("system.slice/x", "expected slice:prefix:name"),
    ("notaslice:ocirt:x", "is not a slice"),
    ("a--b.slice:ocirt:x", "invalid slice name"),
])
def test_bad_paths_are_refused_cleanly(v2bundle, path, message):
    bundle = v2bundle(["true"])
    bundle.config["linux"]["cgroupsPath"] = path
    bundle.write()
    result = run(bundle, global_args=SYSTEMD)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "internal error" not in result.stderr
    assert not (bundle.root / bundle.id).exists()


def test_bad_annotation_is_refused(v2bundle):
    bundle = v2bundle(["true"], cgroups_path=None)
    bundle.config["annotations"] = {"org.systemd.property.lower": "1"}
    bundle.write()
    result = run(bundle, global_args=SYSTEMD)
    assert result.returncode != 0 and "systemd property name" in result.stderr, result.stderr


def test_rootless_v1_refuses_limits_and_tracks_without(v2bundle, caller):
    """cgroup v1 with systemd: a user's manager gets no controller, so limits are refused up front with the
    reason; without limits the container still gets its scope in the user's manager."""
    if not (caller.rootless and MODE == "v1"):
        pytest.skip("rootless on a cgroup v1 host with systemd only")
    limited = v2bundle(["true"], resources={"pids": {"limit": 16}, "memory": {"limit": 64 * MiB}})
    limited.config["linux"]["cgroupsPath"] = f"user.slice:ocirt:{limited.id}"
    limited.write()
    refused = run(limited, global_args=SYSTEMD)
    assert refused.returncode != 0
    assert "memory, pids limits rootless" in refused.stderr and "cgroup v1" in refused.stderr, refused.stderr
    assert "internal error" not in refused.stderr
    assert not (limited.root / limited.id).exists()
    assert show(caller, f"ocirt-{limited.id}.scope", "LoadState").get("LoadState") in ("not-found", None)

    bundle = v2bundle(["sleep", "600"], resources={})
    bundle.config["linux"]["cgroupsPath"] = f"user.slice:ocirt:{bundle.id}"
    bundle.write()
    unit = f"ocirt-{bundle.id}.scope"
    started = bundle.runtime(["run", "-d", "--bundle", str(bundle.path), bundle.id], global_args=SYSTEMD)
    assert started.returncode == 0, started.stderr
    try:
        props = show(caller, unit, "ActiveState", "ControlGroup")
        assert props["ActiveState"] == "active", props
        assert f"/user@{os.getuid()}.service/user.slice/{unit}" in props["ControlGroup"], props
        pids = bundle.runtime(["ps", "--format", "json", bundle.id], global_args=SYSTEMD)
        assert pids.returncode == 0 and pids.stdout.strip() != "[]", pids
    finally:
        deleted = bundle.runtime(["delete", "--force", bundle.id], global_args=SYSTEMD)
    assert deleted.returncode == 0, deleted.stderr
    assert show(caller, unit, "LoadState").get("LoadState") in ("not-found", None)
