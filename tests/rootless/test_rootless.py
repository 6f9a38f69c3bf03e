"""Rootless mode end to end: real unprivileged users run whole containers (create, start, state, kill,
delete, run) with the runtime under test, and root hands them a cgroup v1 subtree through
`ocirt cgroup delegate` when a test needs limits.

What each group shows:
  - the id maps (single own id, or subordinate ranges through newuidmap) as seen inside and from the host;
  - the container's view: pid 1, hostname, /proc, /sys, the bind-mounted device nodes;
  - where state lives (XDG_RUNTIME_DIR/ocirt, or a private 0700 directory without it);
  - limits in a delegated subtree are enforced by the kernel (pids, memory, cpu, blkio);
  - without delegation a container still runs (with a notice), but asking for a limit that can't be
    applied is a clear error that leaves nothing behind;
  - device requests and devices cgroup rules, and id mappings /etc/subuid doesn't grant.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import helpers
import pytest

wait_for = helpers.wait_for
pid_alive = helpers.pid_alive

pytestmark = [
    pytest.mark.rootless,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates users and delegates cgroups: needs root"),
]

MiB = 1 << 20
DELEGATED_CONTROLLERS = "memory,blkio,cpu,pids"
DELEGATE_COMMAND = "ocirt cgroup delegate"


# ---- small helpers -----------------------------------------------------------------------------------

def host_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid the host sees for ``pid``."""
    uid = gid = -1
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def ocirt_admin(*args: str) -> subprocess.CompletedProcess[str]:
    """ocirt's own root-only admin commands (cgroup delegation): always ocirt, whichever runtime is under
    test, since runc and crun have no such command."""
    return subprocess.run([str(helpers.REPO / "bin" / "ocirt"), *args], capture_output=True, text=True,
                          timeout=30, env=helpers.base_env())


def container_cgroup(hierarchy: str, user: helpers.UnprivilegedUser, container_id: str) -> Path:
    """Where a rootless container without cgroupsPath lands: beneath the user's delegated subtree."""
    return helpers.CGROUP_ROOT / hierarchy / "ocirt" / user.name / container_id


def state_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def log_file(bundle: helpers.Bundle) -> Path:
    """A --log file the test user may write, in its own bundle directory."""
    path = bundle.path / "ocirt.log"
    path.touch()
    os.chown(path, bundle.user.uid, bundle.user.gid)
    return path


def log_messages(path: Path) -> list[str]:
    messages = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            messages.append(json.loads(line)["msg"])
        elif 'msg="' in line:
            messages.append(line.split('msg="', 1)[1].rsplit('"', 1)[0])
    return messages


def assert_nothing_left(bundle: helpers.Bundle) -> None:
    """The failed create left no state, process, mount or cgroup (the harness checks again at teardown)."""
    assert state_dirs(bundle.root) == []
    assert helpers.processes_using([bundle.path, bundle.rootfs]) == {}
    assert helpers.mounts_mentioning([bundle.path, bundle.rootfs]) == []
    assert bundle.cgroup_dirs() == []


def child_cgroups(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_dir()] if directory.is_dir() else []


def assert_not_delegated(user: helpers.UnprivilegedUser) -> None:
    """Precondition of the no-delegation tests: no earlier test left a subtree behind for this user."""
    left = [p for p in helpers.cgroup_mounts() if (p / "ocirt" / user.name).exists()]
    assert not left, f"a delegation for {user.name} is still in place under {left}"


@pytest.fixture
def delegation(unprivileged_user):
    """Root delegates memory, blkio, cpu and pids to the plain test user at the default place
    (`<mount>/ocirt/<user>`) for one test, and takes it back afterwards."""
    user = unprivileged_user
    result = ocirt_admin("cgroup", "delegate", "--user", user.name, "--controllers", DELEGATED_CONTROLLERS)
    assert result.returncode == 0, result.stderr
    directories = [Path(line) for line in result.stdout.split()]
    assert directories, "delegate reported no directory"
    try:
        yield directories
    finally:
        leftovers = [child for directory in directories for child in child_cgroups(directory)]
        for child in leftovers:
            helpers.remove_cgroup(child)
        undone = ocirt_admin("cgroup", "undelegate", "--user", user.name, "--controllers", DELEGATED_CONTROLLERS)
        still_there = [d for d in directories if d.exists()]
        for directory in still_there:
            helpers.remove_cgroup(directory)
        assert not leftovers, f"container cgroups outlived the test: {leftovers}"
        assert undone.returncode == 0, undone.stderr
        assert not still_there, f"undelegate left {still_there}"


# The checks a container runs on itself; one line each, so a failure names the check.
INSIDE_CHECKS = r"""
echo "uid_map $(cat /proc/self/uid_map | tr -s ' ' | tr '\n' ';')"
echo "gid_map $(cat /proc/self/gid_map | tr -s ' ' | tr '\n' ';')"
echo "id $(id -u) $(id -g)"
echo "pid $$"
echo "hostname $(hostname)"
echo "proc $(grep -c '^proc /proc proc ' /proc/mounts)"
echo "sys $(grep -c ' /sys sysfs ' /proc/mounts)"
echo "sys_mode $(awk '$2 == "/sys" {split($4, o, ","); print o[1]}' /proc/mounts)"
echo "sys_readable $(test -r /sys/kernel/mm/transparent_hugepage/enabled -o -d /sys/class && echo yes)"
echo "null $(echo discard > /dev/null && echo ok) $(wc -c < /dev/null)"
echo "zero $(head -c 4096 /dev/zero | tr -d '\000' | wc -c) $(head -c 4096 /dev/zero | wc -c)"
a=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'); b=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "urandom ${#a} $([ "$a" != "$b" ] && echo differ)"
echo "devnodes $(stat -c '%F %t:%T' /dev/null /dev/zero /dev/urandom | tr '\n' ';')"
"""


def parse_checks(output: str) -> dict[str, str]:
    return {key: value for key, _, value in (line.partition(" ") for line in output.splitlines())}


def expected_device_lines() -> str:
    return "character special file 1:3;character special file 1:5;character special file 1:9;"


# ---- the container as seen from inside -----------------------------------------------------------------

def test_single_map_container_sees_itself_as_root_with_a_working_dev(make_bundle, unprivileged_user):
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["sh", "-c", INSIDE_CHECKS])
    bundle.config["hostname"] = "rootless-box"
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    seen = parse_checks(result.stdout)
    assert seen["uid_map"] == f" 0 {user.uid} 1;"
    assert seen["gid_map"] == f" 0 {user.gid} 1;"
    assert seen["id"] == "0 0"
    assert seen["pid"] == "1"
    assert seen["hostname"] == "rootless-box"
    assert seen["proc"] == "1"
    assert seen["sys"] == "1"
    assert seen["sys_mode"] == "ro"  # the host's /sys, bound read-only: no private network namespace
    assert seen["sys_readable"] == "yes"
    assert seen["null"] == "ok 0"
    assert seen["zero"] == "0 4096"
    assert seen["urandom"] == "32 differ"
    assert seen["devnodes"] == expected_device_lines()


def test_multi_map_container_sees_the_subordinate_range(make_bundle, subid_user):
    user = subid_user
    bundle = make_bundle(user=user, args=["sh", "-c", INSIDE_CHECKS])
    helpers.use_subid_maps(bundle.config, user)
    bundle.config["hostname"] = "rootless-multi"
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    seen = parse_checks(result.stdout)
    start, count = user.subuid
    assert seen["uid_map"] == f" 0 {user.uid} 1; 1 {start} {count};"
    gstart, gcount = user.subgid
    assert seen["gid_map"] == f" 0 {user.gid} 1; 1 {gstart} {gcount};"
    assert seen["id"] == "0 0"
    assert seen["pid"] == "1"
    assert seen["hostname"] == "rootless-multi"
    assert seen["proc"] == "1" and seen["sys"] == "1"
    assert seen["null"] == "ok 0"
    assert seen["zero"] == "0 4096"
    assert seen["urandom"] == "32 differ"
    assert seen["devnodes"] == expected_device_lines()


def with_devpts_gid5(config: dict) -> dict:
    """The devpts options rootful configs carry (tty group 5), as engines often pass them rootless too."""
    for mount in config["mounts"]:
        if mount["type"] == "devpts":
            mount["options"] = [o for o in mount.get("options", []) if not o.startswith("gid=")] + ["gid=5"]
    return config


def test_devpts_drops_gid5_when_gid5_is_not_mapped(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", "grep ' /dev/pts ' /proc/mounts"])
    with_devpts_gid5(bundle.config)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert "gid=" not in result.stdout and "devpts" in result.stdout, result.stdout


def test_devpts_keeps_gid5_when_the_subordinate_map_covers_it(make_bundle, subid_user):
    bundle = make_bundle(user=subid_user, args=["sh", "-c", "grep ' /dev/pts ' /proc/mounts"])
    helpers.use_subid_maps(bundle.config, subid_user)
    with_devpts_gid5(bundle.config)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    # devpts shows its gid as the host sees it: container gid 5 is subordinate gid start + 4.
    assert f"gid={subid_user.subgid[0] + 4}," in result.stdout, result.stdout


# ---- the lifecycle, and the container as seen from the host ---------------------------------------------

def test_single_map_lifecycle_and_host_view(make_bundle, unprivileged_user, test_dir):
    user = unprivileged_user
    out = test_dir / "out"
    bundle = make_bundle(user=user, args=["sh", "-c", "echo started $(id -u); exec sleep 60"])
    created = bundle.create(stdout=out)
    assert created.returncode == 0, created.stderr
    state = bundle.state()
    assert state["status"] == "created"
    pid = state["pid"]
    # pid 1 of the container is the user's own process on the host, uid and gid alike.
    assert host_ids(pid) == (user.uid, user.gid)
    assert os.stat(f"/proc/{pid}").st_uid == user.uid
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    assert (bundle.root / bundle.id).is_dir()
    assert (bundle.root / bundle.id).stat().st_uid == user.uid
    assert bundle.start().returncode == 0
    assert wait_for(lambda: out.read_text() == "started 0\n")
    assert bundle.state()["status"] == "running"
    assert bundle.kill("KILL").returncode == 0  # pid 1 ignores TERM without a handler
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert bundle.delete().returncode == 0
    assert not pid_alive(pid)
    assert state_dirs(bundle.root) == []
    missing = bundle.runtime(["state", bundle.id])
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_multi_map_process_runs_as_a_subordinate_id_on_the_host(make_bundle, subid_user):
    user = subid_user
    bundle = make_bundle(user=user, args=["sleep", "60"])
    helpers.use_subid_maps(bundle.config, user)
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    # Container id 1000 is subordinate id start + 999 (container id 1 is the range's first host id).
    assert host_ids(pid) == (user.subuid[0] + 999, user.subgid[0] + 999)
    assert bundle.start().returncode == 0
    assert bundle.state()["status"] == "running"
    assert bundle.kill("KILL").returncode == 0
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert bundle.delete().returncode == 0
    assert not pid_alive(pid)


def test_a_non_root_container_user_reaches_the_exec_fifo_as_root_too(make_bundle):
    """The same exec fifo rule with a rootful user namespace: container uid 1000 is host uid base+1000,
    neither the fifo's owner nor root, and must still be able to signal `start` through it."""
    bundle = make_bundle(args=["id", "-u"])
    base = helpers.free_subid_start(65536) + 65536 * 9
    bundle.config["linux"]["namespaces"].append({"type": "user"})
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1000\n"


def test_run_returns_the_container_exit_status(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", "echo out; echo err >&2; exit 7"])
    result = bundle.run()
    assert result.returncode == 7
    assert result.stdout == "out\n"
    assert "err" in result.stderr
    assert state_dirs(bundle.root) == []


# ---- where state lives ----------------------------------------------------------------------------------

def run_with_default_root(bundle: helpers.Bundle, args: list[str], env: dict[str, str | None]):
    """The runtime as the bundle's user, with no --root: the runtime picks its own state directory."""
    full_env = helpers.base_env(bundle.user)
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    # Files, not pipes: the container inherits the runtime's stdio and would hold a pipe open.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run([bundle.runtime_path, *args], stdout=out, stderr=err, timeout=30, env=full_env,
                              cwd=bundle.user.home, user=bundle.user.uid, group=bundle.user.gid,
                              extra_groups=[], stdin=subprocess.DEVNULL, check=False)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def lifecycle_with_default_root(bundle: helpers.Bundle, expected_root: Path, env: dict[str, str | None]):
    bundle.write()
    created = run_with_default_root(bundle, ["create", "--bundle", str(bundle.path), bundle.id], env)
    assert created.returncode == 0, created.stderr
    assert (expected_root / bundle.id).is_dir()
    state = run_with_default_root(bundle, ["state", bundle.id], env)
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout)["status"] == "created"
    listing = run_with_default_root(bundle, ["list", "-q"], env)
    assert bundle.id in listing.stdout.split()
    deleted = run_with_default_root(bundle, ["delete", "--force", bundle.id], env)
    assert deleted.returncode == 0, deleted.stderr
    assert not (expected_root / bundle.id).exists()


def test_state_lives_under_xdg_runtime_dir(make_bundle, unprivileged_user, leak_tracker):
    user = unprivileged_user
    expected_root = user.runtime_dir / "ocirt"
    leak_tracker.roots[expected_root] = user
    bundle = make_bundle(user=user, args=["sleep", "60"])
    try:
        lifecycle_with_default_root(bundle, expected_root, {})
        assert expected_root.stat().st_uid == user.uid
        assert stat.S_IMODE(expected_root.stat().st_mode) & 0o077 == 0
    finally:
        with contextlib.suppress(OSError):
            expected_root.rmdir()


def test_without_xdg_runtime_dir_state_goes_to_a_private_directory(make_bundle, unprivileged_user, leak_tracker):
    user = unprivileged_user
    expected_root = Path(f"/tmp/ocirt-{user.uid}")
    # The uid is this session's fresh test user's: anything already there is a stale leftover of an
    # earlier holder of the same uid.
    shutil.rmtree(expected_root, ignore_errors=True)
    leak_tracker.roots[expected_root] = user
    bundle = make_bundle(user=user, args=["sleep", "60"])
    try:
        lifecycle_with_default_root(bundle, expected_root, {"XDG_RUNTIME_DIR": None})
        st = expected_root.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == user.uid
        assert stat.S_IMODE(st.st_mode) == 0o700
    finally:
        if (expected_root / bundle.id).exists():
            run_with_default_root(bundle, ["delete", "--force", bundle.id], {"XDG_RUNTIME_DIR": None})
        shutil.rmtree(expected_root, ignore_errors=True)


def test_a_state_directory_owned_by_someone_else_is_refused(make_bundle, unprivileged_user, test_dir):
    user = unprivileged_user
    foreign = test_dir / "foreign-root"
    foreign.mkdir(mode=0o777)
    os.chmod(foreign, 0o777)
    bundle = make_bundle(user=user, args=["true"])
    bundle.write()
    result = bundle.runtime(["--rootless", "true", "create", "--bundle", bundle.path, bundle.id], root=foreign)
    assert result.returncode != 0
    assert f"state directory {foreign} is owned by uid 0, not by you" in result.stderr
    assert list(foreign.iterdir()) == []


# ---- a delegated cgroup subtree ---------------------------------------------------------------------------

def test_pids_limit_makes_forks_fail(make_bundle, unprivileged_user, delegation):
    # busybox sh gives up at the first fork that fails; each background job that did start is echoed.
    script = (f"echo max $(cat /sys/fs/cgroup/pids/ocirt/{unprivileged_user.name}/$ID/pids.max); "
              "for i in 1 2 3 4 5 6 7 8; do sleep 1 & echo started $!; done; wait; echo all forked")
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", script])
    bundle.config["process"]["env"].append(f"ID={bundle.id}")
    bundle.config["linux"]["resources"] = {"pids": {"limit": 5}}
    result = bundle.run()
    lines = result.stdout.splitlines()
    assert lines[0] == "max 5", result.stdout
    # sh itself plus four sleeps fill pids.max=5: the fifth fork fails with EAGAIN.
    assert [line.split()[0] for line in lines[1:]] == ["started"] * 4, (result.stdout, result.stderr)
    assert "can't fork: Resource temporarily unavailable" in result.stderr
    assert result.returncode != 0


def test_the_same_forks_succeed_without_the_pids_limit(make_bundle, unprivileged_user, delegation):
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 1 & echo started $!; done; wait; echo all forked"
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", script])
    bundle.config["linux"]["resources"] = {"pids": {"limit": 50}}
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "all forked"
    assert result.stdout.count("started") == 8


def test_memory_limit_gets_a_hog_oom_killed(make_bundle, unprivileged_user, delegation):
    user = unprivileged_user
    memory_dir = f"/sys/fs/cgroup/memory/ocirt/{user.name}/$ID"
    # dd's 64 MiB block buffer is filled by read(2), page by page, past the 32 MiB limit.
    script = (f"dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; s=$?; "
              f"echo status $s; echo limit $(cat {memory_dir}/memory.limit_in_bytes); "
              f"echo failcnt $(cat {memory_dir}/memory.failcnt {memory_dir}/memory.memsw.failcnt); "
              f"echo max_usage $(cat {memory_dir}/memory.max_usage_in_bytes); "
              f"echo oom_kill $(grep '^oom_kill ' {memory_dir}/memory.oom_control); exit $s")
    bundle = make_bundle(user=user, args=["sh", "-c", script])
    bundle.config["process"]["env"].append(f"ID={bundle.id}")
    bundle.config["linux"]["resources"] = {"memory": {"limit": 32 * MiB, "swap": 32 * MiB}}
    result = bundle.run()
    seen = parse_checks(result.stdout)
    assert seen.get("status") == "137", (result.stdout, result.stderr)
    assert result.returncode == 137
    assert seen["limit"] == str(32 * MiB)
    # Usage peaked at the limit, never past it. (memory.failcnt stays 0 on this kernel even then, so
    # the peak and the OOM kill count are the evidence.)
    assert int(seen["max_usage"]) == 32 * MiB, seen
    assert seen["oom_kill"].endswith("oom_kill 1"), seen["oom_kill"]
    print(f"OOM evidence: {seen}")


def test_a_small_allocation_fits_under_the_memory_limit(make_bundle, unprivileged_user, delegation):
    bundle = make_bundle(user=unprivileged_user, args=["dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1"])
    bundle.config["linux"]["resources"] = {"memory": {"limit": 32 * MiB, "swap": 32 * MiB}}
    result = bundle.run()
    assert result.returncode == 0, result.stderr


def test_cpu_quota_holds_the_container_to_half_a_cpu(make_bundle, unprivileged_user, delegation):
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["sh", "-c", "while :; do :; done"])
    bundle.config["linux"]["resources"] = {"cpu": {"quota": 50000, "period": 100000}}
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    cpu_dir = container_cgroup("cpu", user, bundle.id)
    cpuacct_dir = container_cgroup("cpuacct", user, bundle.id)
    assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert bundle.start().returncode == 0
    time.sleep(0.3)  # past the first period, whose budget was unspent
    ticks_per_second = os.sysconf("SC_CLK_TCK")

    def measure(seconds: float) -> tuple[float, float]:
        """(utime+stime, cpuacct.usage) over ``seconds`` of wall time, each as a share of one CPU."""
        wall0, ticks0 = time.monotonic(), cpu_ticks(pid)
        usage0 = int((cpuacct_dir / "cpuacct.usage").read_text())
        time.sleep(seconds)
        wall1, ticks1 = time.monotonic(), cpu_ticks(pid)
        usage1 = int((cpuacct_dir / "cpuacct.usage").read_text())
        wall = wall1 - wall0
        return (ticks1 - ticks0) / ticks_per_second / wall, (usage1 - usage0) / 1e9 / wall

    try:
        by_ticks, by_cpuacct = measure(1.5)
        if min(by_ticks, by_cpuacct) < 0.35:
            # The quota caps from above; falling short only means a busy machine kept the loop off
            # the CPU. One more window before calling it a failure.
            by_ticks, by_cpuacct = measure(1.5)
        throttled = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
    finally:
        assert bundle.kill("KILL").returncode == 0
        assert wait_for(lambda: bundle.state()["status"] == "stopped")
        assert bundle.delete().returncode == 0
    print(f"cpu quota 50%: stat ratio {by_ticks:.3f}, cpuacct ratio {by_cpuacct:.3f}; "
          f"throttled in {throttled['nr_throttled']} of {throttled['nr_periods']} periods")
    assert 0.35 <= by_cpuacct <= 0.65, by_cpuacct
    assert 0.35 <= by_ticks <= 0.65, by_ticks
    assert int(throttled["nr_throttled"]) > 0


def test_blkio_weight_lands_in_bfq_weight(make_bundle, unprivileged_user, delegation):
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["linux"]["resources"] = {"blockIO": {"weight": 321}}
    assert bundle.create().returncode == 0
    blkio_dir = container_cgroup("blkio", user, bundle.id)
    assert blkio_dir.stat().st_uid == user.uid  # made by the user inside its subtree
    assert (blkio_dir / "blkio.bfq.weight").read_text().split()[-1] == "321"
    assert bundle.delete(force=True).returncode == 0
    assert not blkio_dir.exists()


def test_after_delete_the_users_cgroups_state_and_mounts_are_gone(make_bundle, unprivileged_user, delegation):
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["sleep", "60"])
    bundle.config["linux"]["resources"] = {"memory": {"limit": 64 * MiB}, "pids": {"limit": 20},
                                           "cpu": {"shares": 512}, "blockIO": {"weight": 200}}
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    made = bundle.cgroup_dirs()
    hierarchies = {p.relative_to(helpers.CGROUP_ROOT).parts[0] for p in made}
    assert {"memory", "pids", "cpu", "cpuacct", "blkio"} <= hierarchies
    for directory in made:
        assert directory.parent.name == user.name and directory.parent.parent.name == "ocirt"
        assert str(pid) in (directory / "cgroup.procs").read_text().split()
    assert "devices" not in hierarchies
    container_mounts = helpers.mountinfo(str(pid))
    assert any(point == "/proc" for point, _, _ in container_mounts)
    assert bundle.start().returncode == 0
    assert bundle.kill("KILL").returncode == 0
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert bundle.delete().returncode == 0
    assert not pid_alive(pid)
    assert not any(p.exists() for p in made)
    assert state_dirs(bundle.root) == []
    assert helpers.mounts_mentioning([bundle.path, bundle.rootfs]) == []
    for directory in delegation:
        assert directory.is_dir() and child_cgroups(directory) == []


def as_user(user: helpers.UnprivilegedUser, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, user=user.uid,
                          group=user.gid, extra_groups=[], env=helpers.base_env(user), cwd=user.home)


@pytest.fixture
def capped_delegation(unprivileged_user):
    """An administrator's cap: root delegates `<top>/<user>` (memory, pids) and sets limits on `<top>`,
    the level above, which stays root's. Yields (top, delegated path)."""
    user = unprivileged_user
    top = f"{helpers.ID_PREFIX}rootless-{secrets.token_hex(4)}"
    path = f"{top}/{user.name}"
    made = ocirt_admin("cgroup", "delegate", "--user", user.name, "--controllers", "memory,pids", "--path", path)
    try:
        assert made.returncode == 0, made.stderr
        (helpers.CGROUP_ROOT / "memory" / top / "memory.limit_in_bytes").write_text(str(32 * MiB))
        (helpers.CGROUP_ROOT / "pids" / top / "pids.max").write_text("5")
        yield top, path
    finally:
        for hierarchy in ("memory", "pids"):
            if (helpers.CGROUP_ROOT / hierarchy / top).exists():
                assert helpers.remove_cgroup(helpers.CGROUP_ROOT / hierarchy / top)


def test_a_user_cannot_lift_the_cap_above_its_delegated_subtree(make_bundle, unprivileged_user, capped_delegation):
    user = unprivileged_user
    top, path = capped_delegation
    # The user owns its level and may rearrange it, even to more than the cap above it...
    own_level = helpers.CGROUP_ROOT / "memory" / path / "memory.limit_in_bytes"
    raised = as_user(user, f"echo {1 << 30} > {own_level}")
    assert raised.returncode == 0, raised.stderr
    # ...but the level above is root's: the user can neither raise nor remove that cap.
    cap = helpers.CGROUP_ROOT / "memory" / top / "memory.limit_in_bytes"
    refused = as_user(user, f"echo -1 > {cap}")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert cap.read_text().strip() == str(32 * MiB)

    # A container asking for far more than the cap is still held to it, in memory and in pids.
    script = ("dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo dd $?; "
              "for i in 1 2 3 4 5 6 7 8; do sleep 1 & echo started; done; wait; echo all forked")
    bundle = make_bundle(user=user, args=["sh", "-c", script])
    bundle.config["linux"]["cgroupsPath"] = f"/{path}/{bundle.id}"
    bundle.config["linux"]["resources"] = {"memory": {"limit": 256 * MiB}, "pids": {"limit": 100}}
    result = bundle.run()
    lines = result.stdout.splitlines()
    assert lines[0] == "dd 137", (result.stdout, result.stderr)
    assert lines[1:] == ["started"] * 4, (result.stdout, result.stderr)
    assert "can't fork" in result.stderr
    assert not (helpers.CGROUP_ROOT / "memory" / path / bundle.id).exists()


# ---- no delegation ------------------------------------------------------------------------------------------

def test_without_delegation_a_container_without_limits_runs_with_a_notice(make_bundle, unprivileged_user):
    assert_not_delegated(unprivileged_user)
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", "echo ran as $(id -u)"])
    log = log_file(bundle)
    result = bundle.run(global_args=["--log", str(log)])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran as 0\n"
    messages = log_messages(log)
    assert any(f"not delegated to user {unprivileged_user.name}" in m for m in messages), messages
    assert bundle.cgroup_dirs() == []


def test_a_pids_limit_without_delegation_is_a_clear_error(make_bundle, unprivileged_user):
    user = unprivileged_user
    assert_not_delegated(unprivileged_user)
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["linux"]["resources"] = {"pids": {"limit": 5}}
    result = bundle.run()
    assert result.returncode != 0
    assert "pids" in result.stderr
    assert f"{DELEGATE_COMMAND} --user {user.name} --controllers pids" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_nothing_left(bundle)


def test_a_pids_limit_with_only_memory_delegated_is_a_clear_error(make_bundle, unprivileged_user):
    user = unprivileged_user
    assert_not_delegated(unprivileged_user)
    delegated = ocirt_admin("cgroup", "delegate", "--user", user.name, "--controllers", "memory")
    assert delegated.returncode == 0, delegated.stderr
    try:
        bundle = make_bundle(user=user, args=["true"])
        bundle.config["linux"]["resources"] = {"pids": {"limit": 5}, "memory": {"limit": 64 * MiB}}
        result = bundle.run()
        assert result.returncode != 0
        assert (f"cannot apply pids limits: the pids cgroup is not delegated to user {user.name}; "
                f"run `{DELEGATE_COMMAND} --user {user.name} --controllers pids` as root") in result.stderr
        assert_nothing_left(bundle)
        assert child_cgroups(Path(delegated.stdout.split()[0])) == []
    finally:
        undone = ocirt_admin("cgroup", "undelegate", "--user", user.name, "--controllers", "memory")
    assert undone.returncode == 0, undone.stderr


# ---- devices ---------------------------------------------------------------------------------------------

def test_a_requested_device_is_bound_from_the_host(make_bundle, unprivileged_user):
    host = os.stat("/dev/fuse") if os.path.exists("/dev/fuse") else None
    if host is None or not stat.S_ISCHR(host.st_mode):
        pytest.skip("no /dev/fuse on this host")
    major, minor = os.major(host.st_rdev), os.minor(host.st_rdev)
    bundle = make_bundle(user=unprivileged_user, args=["stat", "-c", "%F %t:%T", "/dev/fuse"])
    bundle.config["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": major, "minor": minor,
                                          "fileMode": 0o666, "uid": 0, "gid": 0}]
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"character special file {major:x}:{minor:x}\n"


def test_a_device_the_host_lacks_is_a_clear_error(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.config["linux"]["devices"] = [{"path": "/dev/ocirt-no-such-device", "type": "c", "major": 1,
                                          "minor": 3}]
    result = bundle.run()
    assert result.returncode != 0
    assert "/dev/ocirt-no-such-device" in result.stderr
    assert "host" in result.stderr, result.stderr
    assert_nothing_left(bundle)


def test_a_device_whose_numbers_differ_from_the_hosts_is_refused(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.config["linux"]["devices"] = [{"path": "/dev/null", "type": "c", "major": 1, "minor": 5}]
    result = bundle.run()
    assert result.returncode != 0
    assert "/dev/null" in result.stderr and "1:5" in result.stderr, result.stderr
    assert_nothing_left(bundle)


def test_devices_cgroup_rules_are_skipped_with_one_notice(make_bundle, unprivileged_user, delegation):
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", "echo x > /dev/null && echo writable"])
    bundle.config["linux"]["resources"] = {
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
        "pids": {"limit": 50},
    }
    log = log_file(bundle)
    result = bundle.run(global_args=["--log", str(log)])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "writable\n"
    notices = [m for m in log_messages(log) if "devices cgroup" in m]
    assert notices == ["devices cgroup rules are not applied in rootless mode; "
                       "the user namespace already forbids mknod"], notices


def test_a_rootless_config_without_a_user_namespace_is_refused(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.config = helpers.without_namespace(bundle.config, "user")
    del bundle.config["linux"]["uidMappings"], bundle.config["linux"]["gidMappings"]
    result = bundle.run()
    assert result.returncode != 0
    assert "rootless containers need a user namespace" in result.stderr
    assert "ocirt spec --rootless" in result.stderr
    assert_nothing_left(bundle)


# ---- id mappings /etc/subuid does not grant ----------------------------------------------------------------

def test_an_ungranted_uid_range_is_a_clear_error(make_bundle, unprivileged_user):
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["true"])
    ungranted = helpers.free_subid_start(65536) + 65536 * 7
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": user.uid, "size": 1},
                                             {"containerID": 1, "hostID": ungranted, "size": 1000}]
    result = bundle.run()
    assert result.returncode != 0
    assert "/etc/subuid" in result.stderr, result.stderr
    assert f"{user.name}:{ungranted}:1000" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_nothing_left(bundle)


def test_an_ungranted_range_for_a_subid_user_names_the_missing_range(make_bundle, subid_user):
    user = subid_user
    bundle = make_bundle(user=user, args=["true"])
    helpers.use_subid_maps(bundle.config, user)
    start, count = user.subuid
    beyond = start + count  # just past what /etc/subuid grants
    bundle.config["linux"]["uidMappings"][1] = {"containerID": 1, "hostID": beyond, "size": 100}
    result = bundle.run()
    assert result.returncode != 0
    assert "/etc/subuid" in result.stderr and f"{user.name}:{beyond}:100" in result.stderr, result.stderr
    assert_nothing_left(bundle)


def test_an_ungranted_gid_range_names_etc_subgid(make_bundle, unprivileged_user):
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["true"])
    ungranted = helpers.free_subid_start(65536) + 65536 * 8
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": user.gid, "size": 1},
                                             {"containerID": 1, "hostID": ungranted, "size": 500}]
    result = bundle.run()
    assert result.returncode != 0
    assert "/etc/subgid" in result.stderr and f"{user.name}:{ungranted}:500" in result.stderr, result.stderr
    assert_nothing_left(bundle)
