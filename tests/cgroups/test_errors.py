"""Kernel refusals become CgroupErrors naming the file and value, and a failed create leaves nothing."""

from __future__ import annotations

import os
import signal

import pytest

from ocirt import cgroups
from ocirt.errors import CgroupError

from .conftest import existing_dirs, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MiB = 1 << 20


@pytest.mark.parametrize("shares, bound", [(1, "minimum"), (10_000_000, "maximum")])
def test_cpu_shares_out_of_range_names_the_file_and_cleans_up(cgroup_prefix, shares, bound):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False,
                                   resources={"pids": {"limit": 10}, "cpu": {"shares": shares}})
    with pytest.raises(CgroupError, match=rf"cannot set cpu\.shares to {shares}: the {bound}"):
        manager.create()
    # Not only the container's cgroup: the prefix level create() made is gone as well.
    assert existing_dirs(cgroup_prefix) == []


def test_invalid_cpuset_is_reported_with_the_kernels_reason(cgroup_prefix):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources={"cpu": {"cpus": "999"}})
    with pytest.raises(CgroupError, match=r"^cannot set cpuset\.cpus to 999: numerical result out of range$"):
        manager.create()
    assert existing_dirs(cgroup_prefix) == []


def test_create_into_an_existing_parent_keeps_the_parent(cgroup_prefix):
    keeper = cgroups.open_manager("keep", f"{cgroup_prefix}/keep", rootless=False, resources=None)
    keeper.create()
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources={"cpu": {"shares": 1}})
    with pytest.raises(CgroupError):
        manager.create()
    assert not existing_dirs(f"{cgroup_prefix}/c1")
    assert all(os.path.isdir(path) for path in keeper.paths().values())
    keeper.destroy()


def test_memory_limit_below_usage_is_refused_by_the_kernel(cgroup_prefix, spawn):
    if cgroups.detect_mode() == "v2":
        pytest.skip("v1 behaviour: the kernel answers EBUSY")
    if any(line.split()[0] != "Filename" for line in open("/proc/swaps")):
        pytest.skip("with swap the kernel can reclaim instead of refusing")
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources={"memory": {"limit": -1}})
    manager.create()
    holder = spawn("data = b'z' * (24 << 20)\nprint('ready', flush=True)\nimport time\ntime.sleep(60)\n")
    manager.apply(holder.pid)
    holder.release()
    assert holder.process.stdout is not None
    assert holder.process.stdout.readline().strip() == "ready"
    with pytest.raises(CgroupError, match=r"^cannot set memory\.limit_in_bytes to 4194304: device or resource busy$"):
        manager.update({"memory": {"limit": 4 * MiB}})
    with pytest.raises(CgroupError, match="below the current usage"):
        manager.update({"memory": {"limit": 4 * MiB, "checkBeforeUpdate": True}})
    assert holder.process.poll() is None  # refused, not OOM-killed
    manager.kill_all(signal.SIGKILL)
    holder.process.wait(timeout=10)
    wait_for(lambda: not manager.pids())
    manager.destroy()
    assert not existing_dirs(f"{cgroup_prefix}/c1")


def test_moving_a_missing_pid_names_the_cgroup(cgroup_prefix):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    manager.create()
    with pytest.raises(CgroupError, match=r"cannot move process 999999999 into cgroup /sys/fs/cgroup/.*: no such process"):
        manager.apply(999_999_999)
    manager.destroy()


def test_destroy_refuses_while_a_process_is_inside(cgroup_prefix, spawn):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    manager.create()
    child = spawn("import time\ntime.sleep(60)\n")
    manager.apply(child.pid)
    with pytest.raises(CgroupError, match=rf"cannot remove cgroup .*: device or resource busy \(processes still inside: {child.pid}\)"):
        manager.destroy(timeout=0.05)
    child.kill()
    wait_for(lambda: not manager.pids())
    manager.destroy()
    assert not existing_dirs(f"{cgroup_prefix}/c1")


def test_state_from_another_version_is_refused():
    with pytest.raises(CgroupError, match="unsupported cgroup state version"):
        cgroups.load_manager({"version": 99})
