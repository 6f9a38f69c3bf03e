"""The v2 code path on the host's cgroup2 mount (here /sys/fs/cgroup/unified, with only hugetlb)."""

from __future__ import annotations

import json
import os
import posixpath
import signal
import time

import pytest

from ocirt import cgroups
from ocirt.cgroups import fs

from .conftest import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MiB = 1 << 20


@pytest.fixture
def v2_manager(unified_root_restored, cgroup_prefix):
    table = cgroups.mounts()
    assert table.v2 is not None
    state = {"version": cgroups.STATE_VERSION, "container_id": "c1", "mode": "v2", "rootless": False,
             "paths": {cgroups.UNIFIED: posixpath.join(table.v2.mountpoint, cgroup_prefix, "c1")},
             "v2_mount": table.v2.mountpoint}
    manager = cgroups.load_manager(state)
    yield manager
    manager.kill_all(signal.SIGKILL)
    wait_for(lambda: not manager.pids())
    manager.destroy()


def test_freeze_kill_and_pids_through_cgroup2_files(v2_manager, spawn, tmp_path):
    manager = v2_manager
    manager.create()
    directory = manager.paths()[cgroups.UNIFIED]
    assert os.path.isdir(directory)
    counter = tmp_path / "counter"
    counter.write_text("0")
    child = spawn(
        "import os, time\n"
        f"fd = os.open({str(counter)!r}, os.O_WRONLY)\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        "    os.pwrite(fd, b'%20d' % n, 0)\n"
        "    time.sleep(0.002)\n"
    )
    manager.apply(child.pid)
    child.release()

    def value() -> int:
        return int(counter.read_text() or 0)

    assert wait_for(lambda: value() > 3)
    assert wait_for(lambda: len(manager.pids()) == 2)
    assert child.pid in manager.pids()

    manager.freeze()
    assert fs.read_keyed(directory, "cgroup.events")["frozen"] == 1
    assert manager.is_frozen()
    frozen_at = value()
    time.sleep(0.15)
    assert value() == frozen_at
    manager.thaw()
    assert fs.read_keyed(directory, "cgroup.events")["frozen"] == 0
    assert wait_for(lambda: value() > frozen_at + 3)

    stats = manager.stats()
    json.dumps(stats)
    assert set(stats) >= {"cpu", "memory", "pids", "blkio", "hugetlb"}
    assert stats["cpu"]["usage"]["total"] > 0

    # SIGKILL goes through cgroup.kill: the grandchild, which nobody listed, dies as well.
    manager.kill_all(signal.SIGKILL)
    assert child.process.wait(timeout=10) == -signal.SIGKILL
    assert wait_for(lambda: manager.pids() == [])
    manager.destroy()
    assert not os.path.exists(directory)


def test_hugetlb_limit_in_cgroup2(v2_manager):
    manager = v2_manager
    manager.create()
    directory = manager.paths()[cgroups.UNIFIED]
    root_controllers = (fs.read_or_none(cgroups.mounts().v2.mountpoint, "cgroup.controllers") or "").split()
    if "hugetlb" not in root_controllers or not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        pytest.skip("no hugetlb controller or no 2 MiB pages in cgroup2")
    manager.update({"hugepageLimits": [{"pageSize": "2MB", "limit": 8 * MiB}]})
    assert fs.read(directory, "hugetlb.2MB.max") == str(8 * MiB)
    assert manager.stats()["hugetlb"]["2MB"]["usage"] == 0
    manager.update({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]})
    assert fs.read(directory, "hugetlb.2MB.max") == "max"


def test_unified_keys_are_written_verbatim(v2_manager):
    manager = v2_manager
    manager.create()
    directory = manager.paths()[cgroups.UNIFIED]
    manager.update({"unified": {"cgroup.max.descendants": "7"}})
    assert fs.read(directory, "cgroup.max.descendants") == "7"
    with pytest.raises(cgroups.CgroupError, match="not a cgroup limit file"):
        manager.update({"unified": {"../cgroup.procs": "1"}})


def test_missing_controller_is_reported(v2_manager):
    manager = v2_manager
    manager.create()
    available = (fs.read_or_none(cgroups.mounts().v2.mountpoint, "cgroup.controllers") or "").split()
    if "pids" in available:
        pytest.skip("pids is available in cgroup2 here")
    with pytest.raises(cgroups.CgroupError, match="cannot use the pids controller .* does not offer it"):
        manager.update({"pids": {"limit": 5}})
