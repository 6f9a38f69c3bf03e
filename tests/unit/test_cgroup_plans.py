"""Which files a linux.resources dict turns into, for v1 and v2 (pure translation, no kernel)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ocirt.cgroups import v1, v2
from ocirt.errors import CgroupError

MiB = 1 << 20


def test_v1_plan_covers_every_field_in_order():
    notices: list[str] = []
    steps = v1.plan({
        "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3}],
        "memory": {"limit": 64 * MiB, "swap": 128 * MiB, "reservation": MiB, "kernel": MiB, "kernelTCP": MiB,
                   "swappiness": 0, "disableOOMKiller": True, "useHierarchy": True},
        "cpu": {"shares": 512, "quota": 1000, "period": 2000, "realtimePeriod": 10000, "realtimeRuntime": 500,
                "cpus": "0-1", "mems": "0", "idle": 1, "burst": 500},
        "pids": {"limit": -1},
        "blockIO": {"weight": 300, "leafWeight": 200,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 400}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 50}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
        "network": {"classID": 0x100001, "priorities": [{"name": "eth0", "priority": 5}]},
        "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
    }, notices)
    assert steps == [
        ("devices", "devices.deny", "a *:* rwm"),
        ("devices", "devices.allow", "c 1:3 rwm"),
        ("memory", "@limit+swap", (64 * MiB, 128 * MiB, False)),
        ("memory", "memory.soft_limit_in_bytes", str(MiB)),
        ("memory", "memory.kmem.tcp.limit_in_bytes", str(MiB)),
        ("memory", "memory.swappiness", "0"),
        ("memory", "memory.oom_control", "1"),
        ("memory", "memory.use_hierarchy", "1"),
        ("cpuset", "cpuset.cpus", "0-1"),
        ("cpuset", "cpuset.mems", "0"),
        ("cpu", "@shares", 512),
        ("cpu", "cpu.cfs_period_us", "2000"),
        ("cpu", "cpu.cfs_quota_us", "1000"),
        ("cpu", "cpu.cfs_burst_us", "500"),
        ("cpu", "cpu.rt_period_us", "10000"),
        ("cpu", "cpu.rt_runtime_us", "500"),
        ("cpu", "cpu.idle", "1"),
        ("pids", "pids.max", "max"),
        ("blkio", "@weight", "300"),
        ("blkio", "blkio.leaf_weight", "200"),
        ("blkio", "@weight_device", "8:0 400"),
        ("blkio", "blkio.throttle.read_bps_device", "8:0 1000"),
        ("blkio", "blkio.throttle.write_iops_device", "8:16 50"),
        ("hugetlb", "hugetlb.2MB.limit_in_bytes", str(4 * MiB)),
        ("net_cls", "net_cls.classid", str(0x100001)),
        ("net_prio", "net_prio.ifpriomap", "eth0 5"),
        ("rdma", "rdma.max", "mlx5_1 hca_handle=3 hca_object=10000"),
    ]
    assert notices == ["memory.kernel is ignored: the kernel no longer supports kernel memory limits"]


def test_v1_zero_means_unset_and_unified_needs_v2():
    assert v1.plan({"memory": {"limit": 0}, "cpu": {"shares": 0}, "pids": {"limit": 0}, "unified": {}}, []) == []
    assert v1.plan({"memory": {"swappiness": -1}}, []) == []
    assert v1.plan({"memory": {"swappiness": (1 << 64) - 1}}, []) == []
    with pytest.raises(CgroupError, match="unified needs cgroup v2"):
        v1.plan({"unified": {"memory.high": "1G"}}, [])
    with pytest.raises(CgroupError, match="memory.swappiness to 101"):
        v1.plan({"memory": {"swappiness": 101}}, [])


@pytest.mark.parametrize("shares, weight", [(2, 1), (1024, 39), (262144, 10000)])
def test_shares_to_weight(shares, weight):
    assert v2.shares_to_weight(shares) == weight


@pytest.mark.parametrize("shares, bound", [(1, "minimum is 2"), (262145, "maximum is 262144")])
def test_v2_refuses_shares_v1_would_clamp_when_written(shares, bound, tmp_path):
    """As on v1 (where the kernel clamps and the read-back refuses): the create fails, naming the bound."""
    steps = v2.plan({"cpu": {"shares": shares}}, [])
    assert steps == [("cpu", "@shares", shares)]
    with pytest.raises(CgroupError, match=f"cannot set cpu.shares to {shares}: the {bound} "):
        v2.write_steps(steps, str(tmp_path))
    assert not (tmp_path / "cpu.weight").exists()


@pytest.mark.parametrize("swap, limit, expected", [
    (0, -1, -1), (-1, 100, -1), (0, 100, None), (300, 100, 200), (100, 100, 0)])
def test_swap_is_memory_plus_swap_on_v1_and_swap_alone_on_v2(swap, limit, expected):
    assert v2.swap_max(swap, limit) == expected


@pytest.mark.parametrize("swap, limit, message", [(300, 0, "needs a memory limit"), (50, 100, "is below")])
def test_swap_without_a_sane_memory_limit_is_refused(swap, limit, message):
    with pytest.raises(CgroupError, match=message):
        v2.swap_max(swap, limit)


def test_v2_plan_maps_to_unified_files():
    notices: list[str] = []
    steps = v2.plan({
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 64 * MiB, "swap": 96 * MiB, "reservation": MiB, "swappiness": 10},
        "cpu": {"shares": 1024, "quota": 50000, "cpus": "0", "idle": 0, "burst": 1000},
        "pids": {"limit": 10},
        "blockIO": {"weight": 500, "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 4096}]},
        "hugepageLimits": [{"pageSize": "1GB", "limit": -1}],
        "unified": {"memory.high": "50M"},
    }, notices)
    assert steps == [
        ("", "@devices", [{"allow": False, "access": "rwm"}]),
        ("memory", "@swap", str(32 * MiB)),
        ("memory", "memory.max", str(64 * MiB)),
        ("memory", "memory.low", str(MiB)),
        ("cpu", "cpu.weight", "39"),
        ("cpu", "cpu.max", "50000 100000"),
        ("cpu", "cpu.max.burst", "1000"),
        ("cpu", "cpu.idle", "0"),
        ("cpuset", "cpuset.cpus", "0"),
        ("pids", "pids.max", "10"),
        ("io", "@weight", 500),
        ("io", "io.max", "8:0 wbps=4096"),
        ("hugetlb", "hugetlb.1GB.max", "max"),
        ("memory", "memory.high", "50M"),
    ]
    assert v2.controllers_needed(steps) == {"memory", "cpu", "cpuset", "pids", "io", "hugetlb"}
    assert any("swappiness" in notice for notice in notices)
    rootless_notices: list[str] = []
    assert v2.plan({"devices": [{"allow": False, "access": "rwm"}]}, rootless_notices, rootless=True) == []
    assert any("devices" in notice for notice in rootless_notices)


def test_v2_refuses_realtime_and_cgroup_procs():
    with pytest.raises(CgroupError, match="realtime"):
        v2.plan({"cpu": {"realtimeRuntime": 100}}, [])
    with pytest.raises(CgroupError, match="not a cgroup limit file"):
        v2.plan({"unified": {"cgroup.procs": "1"}}, [])


def test_importing_the_package_stays_stdlib_only():
    code = ("import sys\nimport ocirt.cgroups\n"
            "heavy = {'jsonschema', 'attrs', 'pyroute2', 'seccomp', 'prctl'} & set(sys.modules)\n"
            "print(sorted(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "[]"


COMOUNTED = """\
25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 /ctr /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
34 25 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 25 0:31 / /mnt/with\\040space/é rw - cgroup cgroup rw,freezer
"""


def test_mountinfo_with_cpu_and_cpuacct_co_mounted():
    from ocirt import cgroups

    table = cgroups.parse_mountinfo(COMOUNTED)
    assert table.v1["cpu"] == table.v1["cpuacct"] == cgroups.Mount("/sys/fs/cgroup/cpu,cpuacct", "/")
    assert table.v1["name=systemd"].mountpoint == "/sys/fs/cgroup/systemd"
    assert table.v1["freezer"].mountpoint == "/mnt/with space/é"
    assert table.v2 == cgroups.Mount("/sys/fs/cgroup/unified", "/")
    # A mount whose root is a sub-cgroup (cgroup namespace, bind mount): /proc/self/cgroup paths
    # are relative to the hierarchy's real root, so the mount's root is taken off.
    assert cgroups._own_dir(table.v1["pids"], "/ctr/sub") == "/sys/fs/cgroup/pids/sub"
    assert cgroups._own_dir(table.v1["pids"], "/ctr") == "/sys/fs/cgroup/pids"
    # Co-mounted controllers share one directory, which is created, joined and removed once.
    manager = cgroups.Manager("c1", "v1", False, {"cpu": "/x/cpu,cpuacct/c1", "cpuacct": "/x/cpu,cpuacct/c1",
                                                 "memory": "/x/memory/c1"}, None, None, [])
    assert manager._directories() == ["/x/cpu,cpuacct/c1", "/x/memory/c1"]
