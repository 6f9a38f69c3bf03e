"""The cgroup manager as root on the real kernel: files written, limits enforced, lifecycle."""

from __future__ import annotations

import errno
import json
import os
import posixpath
import signal
import time

import pytest

from ocirt import cgroups
from ocirt.cgroups import fs, v2
from ocirt.errors import CgroupError

from .conftest import existing_dirs, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MiB = 1 << 20
MODE = cgroups.detect_mode()


def v1_only(manager: cgroups.Manager, controller: str) -> str:
    paths = manager.paths()
    if controller not in paths:
        pytest.skip(f"no {controller} cgroup on this host")
    return paths[controller]


def test_detect_mode_matches_mounts():
    table = cgroups.mounts()
    mode = cgroups.detect_mode()
    assert mode in ("v1", "v2", "hybrid")
    assert (mode == "hybrid") == (table.v2 is not None and any(not k.startswith("name=") for k in table.v1))
    assert cgroups.detect_mode() is mode


def test_paths_follow_runc_rules(cgroup_prefix):
    own = cgroups.own_cgroups()
    table = cgroups.mounts()
    relative = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    absolute = cgroups.open_manager("c1", f"/{cgroup_prefix}/c1", rootless=False, resources=None)
    default = cgroups.open_manager("ctr-id", None, rootless=False, resources=None)
    for controller, mount in table.v1.items():
        own_dir = cgroups._own_dir(mount, own.get(controller))
        assert relative.paths()[controller] == posixpath.join(own_dir, cgroup_prefix, "c1")
        assert absolute.paths()[controller] == posixpath.join(mount.mountpoint, cgroup_prefix, "c1")
        assert default.paths()[controller] == posixpath.join(own_dir, "ctr-id")
    if cgroups.detect_mode() == "v2":
        # Beside our own cgroup, which holds processes and so could give a child no controller.
        assert table.v2 is not None
        beside = posixpath.dirname(cgroups._own_dir(table.v2, own.get(cgroups.UNIFIED)))
        assert relative.paths() == {cgroups.UNIFIED: posixpath.join(beside, cgroup_prefix, "c1")}
        assert absolute.paths() == {cgroups.UNIFIED: posixpath.join(table.v2.mountpoint, cgroup_prefix, "c1")}
        assert default.paths() == {cgroups.UNIFIED: posixpath.join(beside, "ctr-id")}
    # `..` cannot climb out of the caller's cgroup.
    sneaky = cgroups.open_manager("c1", f"../../{cgroup_prefix}", rootless=False, resources=None)
    if "memory" in table.v1:
        own_memory = cgroups._own_dir(table.v1["memory"], own.get("memory"))
        assert sneaky.paths()["memory"] == posixpath.join(own_memory, cgroup_prefix)
    assert not existing_dirs(cgroup_prefix)


def test_refuses_the_runtimes_own_cgroup_and_the_root():
    own = cgroups.own_cgroups()
    with pytest.raises(CgroupError, match="root cgroup"):
        cgroups.open_manager("c1", "/", rootless=False, resources=None)
    deepest = max(own.values(), key=len)
    if deepest != "/":
        with pytest.raises(CgroupError, match="own cgroup"):
            cgroups.open_manager("c1", deepest, rootless=False, resources=None)


def test_create_writes_every_limit(cgroup_prefix):
    resources = {
        "memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": 32 * MiB, "swappiness": 10},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 42},
        "blockIO": {"weight": 300},
    }
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=resources)
    manager.create()
    paths = manager.paths()
    if MODE == "v2":
        unified = paths[cgroups.UNIFIED]
        assert fs.read(unified, "memory.max") == str(64 * MiB)
        assert fs.read(unified, "memory.swap.max") == str(32 * MiB)  # v2's swap alone: 96 - 64
        assert fs.read(unified, "memory.low") == str(32 * MiB)
        assert "memory.swappiness is ignored: cgroup v2 has no per-cgroup swappiness" in manager.notices
        assert fs.read(unified, "cpu.weight") == "20"
        assert fs.read(unified, "cpu.max") == "20000 100000"
        assert fs.read(unified, "pids.max") == "42"
        if fs.exists(unified, "io.bfq.weight"):
            assert fs.read(unified, "io.bfq.weight").split()[-1] == "300"
        else:
            assert fs.read(unified, "io.weight").split()[-1] == str(v2.blkio_weight_to_io_weight(300))
        assert fs.read(unified, "cpuset.cpus") == "0" and fs.read(unified, "cpuset.mems") == "0"
        manager.destroy()
        assert not os.path.exists(unified)
        manager.destroy()  # idempotent
        return
    memory, cpu, pids, blkio, cpuset = (paths[c] for c in ("memory", "cpu", "pids", "blkio", "cpuset"))
    assert fs.read(memory, "memory.limit_in_bytes") == str(64 * MiB)
    assert fs.read(memory, "memory.memsw.limit_in_bytes") == str(96 * MiB)
    assert fs.read(memory, "memory.soft_limit_in_bytes") == str(32 * MiB)
    assert fs.read(memory, "memory.swappiness") == "10"
    assert fs.read(cpu, "cpu.shares") == "512"
    assert fs.read(cpu, "cpu.cfs_quota_us") == "20000"
    assert fs.read(cpu, "cpu.cfs_period_us") == "100000"
    assert fs.read(pids, "pids.max") == "42"
    weight_file = "blkio.weight" if fs.exists(blkio, "blkio.weight") else "blkio.bfq.weight"
    assert fs.read(blkio, weight_file).split()[-1] == "300"
    assert fs.read(cpuset, "cpuset.cpus") == "0"
    assert fs.read(cpuset, "cpuset.mems") == "0"
    # The intermediate cpuset level got its parent's cpus/mems, or no task could ever join it.
    assert fs.read(posixpath.dirname(cpuset), "cpuset.cpus") == fs.read(
        posixpath.dirname(posixpath.dirname(cpuset)), "cpuset.cpus")
    manager.destroy()
    assert not any(os.path.exists(p) for p in paths.values())
    manager.destroy()  # idempotent


def test_pids_limit_makes_fork_fail_with_eagain(cgroup_prefix, spawn):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources={"pids": {"limit": 5}})
    manager.create()
    child = spawn(
        "import os, time\n"
        "made, failure = [], 0\n"
        "for _ in range(10):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as err:\n"
        "        failure = err.errno\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    made.append(pid)\n"
        "print(len(made), failure, flush=True)\n"
        "for pid in made:\n"
        "    os.kill(pid, 9)\n"
        "    os.waitpid(pid, 0)\n"
    )
    manager.apply(child.pid)
    assert manager.pids() == [child.pid]
    child.release()
    code, out = child.wait()
    made, failure = map(int, out.split())
    assert code == 0
    assert made == 4
    assert failure == errno.EAGAIN
    wait_for(lambda: not manager.pids())
    manager.destroy()


def test_memory_limit_gets_a_hog_oom_killed(cgroup_prefix, spawn):
    resources = {"memory": {"limit": 32 * MiB, "swap": 32 * MiB}}
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=resources)
    manager.create()
    event_fd = manager.oom_eventfd()
    try:
        hog = spawn("chunks = []\nfor _ in range(256):\n    chunks.append(b'x' * (1 << 20))\nprint('survived')\n")
        manager.apply(hog.pid)
        hog.release()
        code, out = hog.wait()
        assert code == -signal.SIGKILL
        assert "survived" not in out
        if event_fd is not None:
            assert int.from_bytes(os.read(event_fd, 8), "little") >= 1
        if MODE == "v2":
            assert fs.read_keyed(manager.paths()[cgroups.UNIFIED], "memory.events")["oom_kill"] >= 1
        else:
            assert fs.read_keyed(manager.paths()["memory"], "memory.oom_control").get("oom_kill", 1) >= 1
    finally:
        if event_fd is not None:
            os.close(event_fd)
    wait_for(lambda: not manager.pids())
    manager.destroy()


def test_freeze_stops_a_counter_and_thaw_resumes_it(cgroup_prefix, spawn, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    manager.create()
    # Each value is written to a side file and renamed over the counter, so a read sees a whole number:
    # a read racing a plain overwrite of the file could see it half-written.
    child = spawn(
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        f"    with open({str(counter) + '.new'!r}, 'w') as out:\n"
        "        out.write(str(n))\n"
        f"    os.rename({str(counter) + '.new'!r}, {str(counter)!r})\n"
        "    time.sleep(0.002)\n"
    )
    manager.apply(child.pid)
    child.release()

    def value() -> int:
        return int(counter.read_text())

    assert wait_for(lambda: value() > 3)
    manager.freeze()
    assert manager.is_frozen()
    frozen_at = value()
    time.sleep(0.15)
    assert value() == frozen_at
    manager.thaw()
    assert not manager.is_frozen()
    assert wait_for(lambda: value() > frozen_at + 3)
    manager.kill_all(signal.SIGKILL)
    child.process.wait(timeout=10)
    manager.destroy()


def test_pids_kill_all_and_stats(cgroup_prefix, spawn):
    resources = {"memory": {"limit": 128 * MiB}, "pids": {"limit": 50}, "cpu": {"shares": 256}}
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=resources)
    manager.create()
    # The child forks a grandchild and burns a little CPU, then everyone sleeps.
    child = spawn(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "data = bytearray(8 << 20)\n"
        "data[::4096] = b'y' * len(data[::4096])\n"
        "end = time.monotonic() + 0.05\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    manager.apply(child.pid)
    child.release()
    assert child.process.stdout is not None
    assert child.process.stdout.readline().strip() == "ready"
    listed = manager.pids()
    assert child.pid in listed and len(listed) == 2

    stats = manager.stats()
    assert set(stats) >= {"cpu", "memory", "pids", "blkio", "hugetlb"}
    assert stats["cpu"]["usage"]["total"] > 0
    assert stats["memory"]["usage"]["usage"] >= 8 * MiB
    assert stats["memory"]["usage"]["limit"] == 128 * MiB
    assert stats["pids"] == {"current": 2, "limit": 50}
    json.dumps(stats)

    # A manager rebuilt from the saved state sees the same cgroup.
    saved = json.loads(json.dumps(manager.to_state()))
    again = cgroups.load_manager(saved)
    assert again.paths() == manager.paths()
    assert sorted(again.pids()) == sorted(listed)

    again.kill_all(signal.SIGKILL)
    assert child.process.wait(timeout=10) == -signal.SIGKILL
    assert wait_for(lambda: not manager.pids())
    again.destroy()
    assert not existing_dirs(f"{cgroup_prefix}/c1")


def test_kill_all_with_a_catchable_signal(cgroup_prefix, spawn):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    manager.create()
    child = spawn("import time\ntime.sleep(60)\n")
    manager.apply(child.pid)
    child.release()
    manager.kill_all(signal.SIGTERM)
    assert child.process.wait(timeout=10) == -signal.SIGTERM
    assert not manager.is_frozen()
    manager.destroy()


def test_update_lowers_limits_live(cgroup_prefix, spawn):
    resources = {"memory": {"limit": 256 * MiB, "swap": 256 * MiB}, "pids": {"limit": 100},
                 "cpu": {"shares": 1024, "quota": 50000, "period": 100000}}
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=resources)
    manager.create()
    child = spawn("import time\ntime.sleep(60)\n")
    manager.apply(child.pid)
    manager.update({"memory": {"limit": 64 * MiB, "swap": 64 * MiB}, "pids": {"limit": 3},
                    "cpu": {"shares": 128, "quota": 10000}})
    paths = manager.paths()
    if MODE == "v2":
        unified = paths[cgroups.UNIFIED]
        assert fs.read(unified, "memory.max") == str(64 * MiB)
        assert fs.read(unified, "memory.swap.max") == "0"
        assert fs.read(unified, "pids.max") == "3"
        assert fs.read(unified, "cpu.weight") == "5"
        # v2 has one file for quota and period: an update naming only the quota keeps the period.
        assert fs.read(unified, "cpu.max") == "10000 100000"
        manager.update({"memory": {"limit": 512 * MiB, "swap": 512 * MiB}})
        assert fs.read(unified, "memory.max") == str(512 * MiB)
        manager.kill_all(signal.SIGKILL)
        child.process.wait(timeout=10)
        manager.destroy()
        return
    assert fs.read(paths["memory"], "memory.limit_in_bytes") == str(64 * MiB)
    assert fs.read(paths["memory"], "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert fs.read(paths["pids"], "pids.max") == "3"
    assert fs.read(paths["cpu"], "cpu.shares") == "128"
    assert fs.read(paths["cpu"], "cpu.cfs_quota_us") == "10000"
    assert fs.read(paths["cpu"], "cpu.cfs_period_us") == "100000"  # untouched: not in the update
    # Raising again needs memsw first; the manager orders the pair.
    manager.update({"memory": {"limit": 512 * MiB, "swap": 512 * MiB}})
    assert fs.read(paths["memory"], "memory.limit_in_bytes") == str(512 * MiB)
    manager.kill_all(signal.SIGKILL)
    child.process.wait(timeout=10)
    manager.destroy()


DEFAULT_DEVICE_LINES = ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                        "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"]


def test_devices_rules_are_written_in_order_then_the_defaults(cgroup_prefix):
    # Order matters: the deny of w comes after the allow of rw and takes w back.
    resources = {"devices": [{"allow": False, "access": "rwm"},
                             {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rw"},
                             {"allow": False, "type": "c", "major": 1, "minor": 11, "access": "w"},
                             {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=resources)
    devices = v1_only(manager, "devices")
    manager.create()
    # The default devices come last, so a config can't take /dev/null away.
    assert fs.read(devices, "devices.list").splitlines() == ["c 1:11 r", *DEFAULT_DEVICE_LINES]
    manager.destroy()


def test_devices_are_denied_by_default(cgroup_prefix):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    devices = v1_only(manager, "devices")
    manager.create()
    assert fs.read(devices, "devices.list").splitlines() == DEFAULT_DEVICE_LINES
    manager.destroy()


def test_unified_resources_are_refused_on_v1(cgroup_prefix):
    if cgroups.detect_mode() != "v1":
        pytest.skip("only v1 refuses unified outright")
    with pytest.raises(CgroupError, match="unified"):
        cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False,
                             resources={"unified": {"memory.high": "1G"}})


# unified_root_restored comes first so that it is torn down after the prefix's cgroups are gone.
def test_hybrid_hugetlb_limits_go_to_the_unified_tree(unified_root_restored, cgroup_prefix):
    table = cgroups.mounts()
    if cgroups.detect_mode() != "hybrid" or "hugetlb" in table.v1:
        pytest.skip("hugetlb is not a cgroup2-only controller here")
    if not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        pytest.skip("no 2 MiB huge pages")
    label = "2MB"
    resources = {"hugepageLimits": [{"pageSize": label, "limit": 4 * MiB}]}
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=resources)
    manager.create()
    unified = manager.paths()[cgroups.UNIFIED]
    assert fs.read(unified, f"hugetlb.{label}.max") == str(4 * MiB)
    assert label in manager.stats()["hugetlb"]
    manager.destroy()
    assert not os.path.exists(unified)


def test_sigkill_reaches_a_frozen_container(cgroup_prefix, spawn):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False, resources=None)
    manager.create()
    child = spawn("import time\ntime.sleep(60)\n")
    manager.apply(child.pid)
    child.release()
    manager.freeze()
    manager.kill_all(signal.SIGKILL)
    assert child.process.wait(timeout=10) == -signal.SIGKILL
    assert wait_for(lambda: not manager.pids())
    manager.destroy()


def test_ignored_fields_are_reported_once(cgroup_prefix):
    manager = cgroups.open_manager("c1", f"{cgroup_prefix}/c1", rootless=False,
                                   resources={"memory": {"limit": 64 * MiB, "kernel": 64 * MiB}})
    manager.create()
    if MODE == "v2":
        assert manager.notices == ["memory.kernel is ignored: cgroup v2 has no separate kernel memory limit"]
        assert fs.read(manager.paths()[cgroups.UNIFIED], "memory.max") == str(64 * MiB)
    else:
        assert manager.notices == ["memory.kernel is ignored: the kernel no longer supports kernel memory limits"]
        assert fs.read(manager.paths()["memory"], "memory.limit_in_bytes") == str(64 * MiB)
    manager.destroy()
