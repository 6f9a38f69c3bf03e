"""The cgroupfs driver on a pure v2 host: where the container's cgroup goes, which controllers it gets,
and every resource proven by what the kernel then does to the container (read back from inside)."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import time

import helpers
import pytest

from .conftest import cgroup_dir, own_cgroup, probe_mount, run

MiB = 1 << 20


def cgroup_of_init(out: str) -> str:
    return out.split("CG=", 1)[1].split()[0]


# The table: memory 64 MiB, pids 32, cpu 50000/100000, read back inside the container.
TABLE_LIMITS = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 32}, "cpu": {"quota": 50000, "period": 100000}}


@pytest.mark.parametrize("path_kind", ["absolute", "relative", "absent"])
def test_each_cgroups_path_kind_is_placed_and_limited(v2bundle, caller, path_kind, tmp_path):
    """An absolute path is taken as it is (rootless: one in the cgroup systemd delegated to the user, beside
    our own); relative and absent ones go where runc puts them: beside the caller's cgroup (which holds
    processes), plus the path."""
    beside = posixpath.dirname(own_cgroup())
    absolute = posixpath.join(beside if caller.rootless else "/", "ocirt-test-abs-" + helpers.new_container_id()[-8:])
    given = {"absolute": absolute, "relative": "", "absent": None}[path_kind]
    bundle = v2bundle(["sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"],
                      resources=TABLE_LIMITS, cgroups_path=given)
    hook = tmp_path / "where"
    bundle.config.setdefault("hooks", {})["createRuntime"] = [
        {"path": "/bin/sh", "args": ["sh", "-c", f"cat /proc/$(sed 's/.*\"pid\": *\\([0-9]*\\).*/\\1/')/cgroup > {hook}"]}]
    bundle.write()
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 * MiB), "32", "50000", "100000"]
    placed = hook.read_text().strip().split("::", 1)[1]
    expected = {"absolute": absolute, "relative": posixpath.join(beside, helpers.cgroups_path(bundle.id)),
                "absent": posixpath.join(beside, bundle.id)}[path_kind]
    assert placed == expected
    assert not os.path.exists("/sys/fs/cgroup" + placed)


def test_only_needed_controllers_are_enabled(v2bundle, tmp_path):
    bundle = v2bundle(["sh", "-c", "cat /sys/fs/cgroup/cgroup.controllers"], resources={"pids": {"limit": 20}})
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    assert "pids" in result.stdout.split()


def test_a_cgroup_with_processes_is_refused_with_errno_and_file(v2bundle, caller):
    """An absolute path below our own cgroup: its parent holds processes, so v2 gives it no controller."""
    inside_own = posixpath.join(own_cgroup(), "ocirt-test-inner")
    bundle = v2bundle(["true"], resources={"pids": {"limit": 20}}, cgroups_path=inside_own)
    result = run(bundle)
    assert result.returncode != 0
    message = result.stderr
    assert "EBUSY" in message and "holds processes" in message and own_cgroup() in message, message
    assert "internal error" not in message


def test_memory_max_kills_with_oom_kill_in_memory_events(v2bundle):
    bundle = v2bundle(["sh", "-c", "tail /dev/zero; grep oom_kill /sys/fs/cgroup/memory.events"],
                      resources={"memory": {"limit": 32 * MiB, "swap": 32 * MiB}})
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    assert "oom_kill 0" not in result.stdout and "oom_kill " in result.stdout, result.stdout


def test_memory_reservation_is_memory_low_and_unified_sets_high(v2bundle, test_dir):
    # Page cache is what memory.high can reclaim without swap: writing more than `high` to a file counts
    # `high` events instead of throttling the writer for ever.
    scratch = test_dir / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    bundle = v2bundle(["sh", "-c", "cat /sys/fs/cgroup/memory.low /sys/fs/cgroup/memory.high; "
                       "dd if=/dev/zero of=/scratch/f bs=1M count=40 2>/dev/null; "
                       "grep high /sys/fs/cgroup/memory.events"],
                      resources={"memory": {"limit": 128 * MiB, "reservation": 8 * MiB},
                                 "unified": {"memory.high": str(16 * MiB)}},
                      mounts=[{"destination": "/scratch", "type": "bind", "source": str(scratch),
                               "options": ["rbind", "rw"]}])
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == str(8 * MiB) and lines[1] == str(16 * MiB)
    high_events = int(lines[2].split()[1])
    assert high_events > 0, result.stdout


def test_pids_max_stops_forks(v2bundle):
    bundle = v2bundle(["sleep", "600"], resources={"pids": {"limit": 4}})
    assert bundle.runtime(["run", "-d", "--bundle", str(bundle.path), bundle.id]).returncode == 0
    try:
        directory = cgroup_dir(bundle)
        refused = [bundle.runtime(["exec", "-d", bundle.id, "sleep", "600"]).returncode != 0 for _ in range(6)]
        assert any(refused)
        assert int((directory / "pids.current").read_text()) <= 4
        assert int((directory / "pids.events").read_text().split()[1]) > 0
    finally:
        bundle.runtime(["delete", "--force", bundle.id])


def test_cpu_max_caps_the_cpu_to_wall_ratio(v2bundle):
    # A busy loop for 3 s of wall time under a 20% quota: usage_usec over the wall time stays near 0.2.
    script = ("start=$(cut -d' ' -f1 /proc/uptime); end=$(( ${start%.*} + 3 )); "
              "while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do :; done; "
              "echo WALL $start $(cut -d' ' -f1 /proc/uptime); grep usage_usec /sys/fs/cgroup/cpu.stat; "
              "cat /sys/fs/cgroup/cpu.max")
    bundle = v2bundle(["sh", "-c", script], resources={"cpu": {"quota": 20000, "period": 100000}})
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    start, end = (float(x) for x in lines[0].split()[1:3])
    usage = int(lines[1].split()[1]) / 1e6
    assert lines[2] == "20000 100000"
    ratio = usage / (end - start)
    assert 0.05 < ratio < 0.4, (usage, end - start)


@pytest.mark.parametrize("shares,weight", [(1024, 39), (512, 20), (2, 1), (262144, 10000)])
def test_cpu_shares_become_cpu_weight_as_runc_converts(v2bundle, shares, weight):
    bundle = v2bundle(["cat", "/sys/fs/cgroup/cpu.weight"], resources={"cpu": {"shares": shares}})
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(weight)


def test_cpuset_pins_the_container(v2bundle, caller):
    if caller.rootless:
        pytest.skip("cpuset is not delegated to user@UID.service by default (see the rootless test)")
    bundle = v2bundle(["sh", "-c", "grep _allowed_list /proc/self/status; cat /sys/fs/cgroup/cpuset.cpus.effective"],
                      resources={"cpu": {"cpus": "1", "mems": "0"}})
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    assert "Cpus_allowed_list:\t1" in result.stdout and "Mems_allowed_list:\t0" in result.stdout
    assert result.stdout.split("\n")[2] == "1"


def _root_disk() -> tuple[int, int]:
    import os

    dev = os.stat("/tmp").st_dev
    return os.major(dev), os.minor(dev)


def test_io_max_throttles_writes_and_io_weight_is_set(v2bundle, caller, test_dir):
    if caller.rootless:
        pytest.skip("io is not delegated to user@UID.service by default (see the rootless test)")
    major, minor = _root_disk()
    scratch = test_dir / "scratch"
    scratch.mkdir()
    script = ("cat /sys/fs/cgroup/io.weight | head -n1; s=$(cut -d' ' -f1 /proc/uptime); "
              "dd if=/dev/zero of=/scratch/f bs=64k count=48 oflag=direct 2>/dev/null; "
              "echo $s $(cut -d' ' -f1 /proc/uptime); cat /sys/fs/cgroup/io.max")
    bundle = v2bundle(["sh", "-c", script],
                      resources={"blockIO": {"weight": 500, "throttleWriteBpsDevice": [
                          {"major": major, "minor": minor, "rate": MiB}]}},
                      mounts=[{"destination": "/scratch", "type": "bind", "source": str(scratch),
                               "options": ["rbind", "rw"]}])
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "default 5000" or lines[0] == "default 4950", lines[0]
    start, end = (float(x) for x in lines[1].split())
    assert end - start >= 2.0, result.stdout  # 3 MiB at 1 MiB/s
    assert f"{major}:{minor} rbps=max wbps={MiB}" in lines[2]


def test_rootless_says_which_controllers_are_missing_and_why(v2bundle, caller):
    if not caller.rootless:
        pytest.skip("rootless only")
    bundle = v2bundle(["true"], resources={"blockIO": {"weight": 500}})
    result = run(bundle)
    assert result.returncode != 0
    assert "io" in result.stderr and "Delegate=" in result.stderr and "user@" in result.stderr, result.stderr
    assert "internal error" not in result.stderr


@pytest.fixture
def huge_pages(caller):
    """Reserve 16 huge pages in the guest for the test (the pool is empty after boot)."""
    if caller.rootless:
        pytest.skip("hugetlb is not delegated to user@UID.service by default")
    pool = "/proc/sys/vm/nr_hugepages"
    before = int(open(pool).read())
    with open(pool, "w") as handle:
        handle.write("16")
    free = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("HugePages_Free:"))
    assert free >= 8, f"the guest reserved only {free} huge pages"
    yield
    with open(pool, "w") as handle:
        handle.write(str(before))


@pytest.mark.parametrize("limit_pages,touched", [(4, 4), (8, 6)])
def test_hugetlb_limit_makes_the_next_fault_sigbus(v2bundle, caller, probe, huge_pages, limit_pages, touched):
    """hugetlb.2MB.max charges at fault time: the fault past the limit gets SIGBUS, as the kernel documents;
    with room for all six pages the same program touches every one."""
    bundle = v2bundle(["sh", "-c", "/probe/probe hugetlb 6; echo rc=$?; cat /sys/fs/cgroup/hugetlb.2MB.max; "
                                   "cat /sys/fs/cgroup/hugetlb.2MB.events"],
                      resources={"hugepageLimits": [{"pageSize": "2MB", "limit": limit_pages * 2 * MiB}]},
                      mounts=[probe_mount(probe)])
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert f"touched {touched}" in lines and f"touched {touched + 1}" not in lines, result.stdout
    assert str(limit_pages * 2 * MiB) in lines, result.stdout
    if touched < 6:
        assert f"SIGBUS at {touched + 1}" in lines and "rc=3" in lines and "max 1" in lines, result.stdout
    else:
        assert "rc=0" in lines and "max 0" in lines, result.stdout


@pytest.mark.parametrize("swap,survives", [(32 * MiB, False), (160 * MiB, True)])
def test_memory_swap_max_decides_whether_a_hog_survives(v2bundle, probe, swap, survives):
    """OCI's swap is memory+swap: 32 MiB + 32 MiB gives memory.swap.max 0, and 48 MiB of anonymous memory
    is then OOM-killed; with 128 MiB of swap allowed the same program lives, partly swapped out."""
    bundle = v2bundle(["sh", "-c", "cat /sys/fs/cgroup/memory.swap.max; /probe/probe alloc 48 "
                                   "/sys/fs/cgroup/memory.swap.current; echo rc=$?; "
                                   "grep oom_kill /sys/fs/cgroup/memory.events"],
                      resources={"memory": {"limit": 32 * MiB, "swap": swap}}, mounts=[probe_mount(probe)])
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == str(swap - 32 * MiB), result.stdout
    if survives:
        assert lines[1] == "held 48" and int(lines[2]) >= 16 * MiB and lines[3] == "rc=0", result.stdout
        assert "oom_kill 0" in lines, result.stdout
    else:
        assert "held 48" not in lines and "rc=137" in lines and "oom_kill 1" in lines, result.stdout


@pytest.fixture
def rxe_device(caller):
    """A soft-RoCE device on a dummy link (rdma_rxe): the guest has no RDMA hardware. Yields (name, node)."""
    if caller.rootless:
        pytest.skip("rdma is not delegated to user@UID.service by default, and making the device needs root")
    name, link = "ocirtrxe0", "ocirt-rxe"
    for command in (["modprobe", "-a", "rdma_rxe", "ib_uverbs"], ["ip", "link", "add", link, "type", "dummy"],
                    ["ip", "link", "set", link, "up"], ["rdma", "link", "add", name, "type", "rxe", "netdev", link]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    try:
        node = None
        assert helpers.wait_for(lambda: any(
            open(f"/sys/class/infiniband_verbs/{entry}/ibdev").read().strip() == name
            for entry in os.listdir("/sys/class/infiniband_verbs") if entry.startswith("uverbs")), timeout=30)
        for entry in os.listdir("/sys/class/infiniband_verbs"):
            if entry.startswith("uverbs") and open(f"/sys/class/infiniband_verbs/{entry}/ibdev").read().strip() == name:
                node = f"/dev/infiniband/{entry}"
        assert node and helpers.wait_for(lambda: os.path.exists(node), timeout=30), node
        yield name, node
    finally:
        subprocess.run(["rdma", "link", "delete", name], capture_output=True, timeout=60)
        subprocess.run(["ip", "link", "delete", link], capture_output=True, timeout=60)


@pytest.mark.parametrize("handles", [1, 2])
def test_rdma_max_limits_verbs_contexts(v2bundle, caller, probe, rxe_device, handles):
    """rdma.max hca_handle=1: the first verbs context on the device opens, the second is refused (EAGAIN);
    with two handles allowed both open."""
    name, node = rxe_device
    device = os.stat(node).st_rdev
    major, minor = os.major(device), os.minor(device)
    bundle = v2bundle(["sh", "-c", f"/probe/probe rdma {node} 2; cat /sys/fs/cgroup/rdma.max"],
                      resources={"rdma": {name: {"hcaHandles": handles, "hcaObjects": 100}},
                                 "devices": [{"allow": False, "access": "rwm"},
                                             {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                                             {"allow": True, "type": "c", "major": major, "minor": minor,
                                              "access": "rw"}]},
                      mounts=[probe_mount(probe)])
    bundle.config["linux"].setdefault("devices", []).append(
        {"path": node, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0})
    bundle.write()
    result = run(bundle)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.split("\n")]
    assert lines[0] == "context 1 ok", result.stdout
    assert lines[1] == ("context 2 ok" if handles == 2 else "context 2: Resource temporarily unavailable"), lines
    assert f"{name} hca_handle={handles} hca_object=100" in lines, result.stdout


def test_pause_freezes_kill_all_uses_cgroup_kill_update_and_stats(v2bundle, caller, test_dir):
    counter = test_dir / "counter"
    counter.write_text("0")
    counter.chmod(0o666)
    bundle = v2bundle(["sh", "-c", "sleep 300 & n=0; while :; do n=$((n+1)); echo $n > /c/n; sleep 0.05; done"],
                      resources={"memory": {"limit": 64 * MiB}, "pids": {"limit": 40}, "cpu": {"shares": 1024}},
                      mounts=[{"destination": "/c", "type": "bind", "source": str(test_dir), "options": ["rbind"]}])
    result = bundle.runtime(["run", "-d", "--bundle", str(bundle.path), bundle.id])
    assert result.returncode == 0, result.stderr
    try:
        directory = cgroup_dir(bundle)
        value = lambda: int((test_dir / "n").read_text() or 0) if (test_dir / "n").exists() else 0  # noqa: E731
        assert helpers.wait_for(lambda: value() > 2, timeout=30)
        assert bundle.runtime(["pause", bundle.id]).returncode == 0
        assert (directory / "cgroup.freeze").read_text().strip() == "1"
        state = json.loads(bundle.runtime(["state", bundle.id]).stdout)
        assert state["status"] == "paused"
        frozen_at = value()
        time.sleep(1)
        assert value() == frozen_at
        assert bundle.runtime(["resume", bundle.id]).returncode == 0
        assert helpers.wait_for(lambda: value() > frozen_at, timeout=30)

        update = bundle.runtime(["update", "--memory", str(96 * MiB), "--pids-limit", "50", "--cpu-share", "512",
                                 "--cpu-quota", "50000", "--cpu-period", "100000", bundle.id])
        assert update.returncode == 0, update.stderr
        assert (directory / "memory.max").read_text().strip() == str(96 * MiB)
        assert (directory / "pids.max").read_text().strip() == "50"
        assert (directory / "cpu.weight").read_text().strip() == "20"
        assert (directory / "cpu.max").read_text().strip() == "50000 100000"
        resources = test_dir / "resources.json"
        resources.write_text(json.dumps({"memory": {"limit": 80 * MiB, "reservation": 4 * MiB},
                                         "unified": {"memory.high": str(70 * MiB)}}))
        update = bundle.runtime(["update", "--resources", str(resources), bundle.id])
        assert update.returncode == 0, update.stderr
        assert (directory / "memory.max").read_text().strip() == str(80 * MiB)
        assert (directory / "memory.low").read_text().strip() == str(4 * MiB)
        assert (directory / "memory.high").read_text().strip() == str(70 * MiB)

        stats = json.loads(bundle.runtime(["events", "--stats", bundle.id]).stdout)["data"]
        assert stats["pids"]["current"] >= 2 and stats["pids"]["limit"] == 50
        assert stats["memory"]["usage"]["limit"] == 80 * MiB and stats["memory"]["usage"]["usage"] > 0
        assert stats["cpu"]["usage"]["total"] > 0

        kill = bundle.runtime(["kill", "--all", bundle.id, "KILL"])
        assert kill.returncode == 0, kill.stderr
        assert helpers.wait_for(lambda: not (directory / "cgroup.procs").read_text().strip(), timeout=30)
    finally:
        bundle.runtime(["delete", "--force", bundle.id])
    assert not directory.exists()
