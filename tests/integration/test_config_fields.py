"""Each config.json field's effect, seen from inside the container or from /proc/<pid> on the host (rootful)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import helpers
import pytest

wait_for = helpers.wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rootful config fields need root")

NAMESPACE_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
                   "cgroup": "cgroup", "user": "user", "time": "time"}


def ns_inode(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{NAMESPACE_FILES[kind]}")


def run_ok(bundle) -> str:
    result = bundle.run()
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


class Running:
    """A started `sleep 100` container for checks from /proc/<pid>; deleted with --force on exit."""

    def __init__(self, bundle, *, start: bool = True):
        self.bundle = bundle
        self.start = start

    def __enter__(self) -> int:
        result = self.bundle.create()
        assert result.returncode == 0, result.stderr
        try:
            if self.start:
                assert self.bundle.start().returncode == 0
            pid = self.bundle.state()["pid"]
            if self.start:
                # After start the init has exec'd sleep; wait for that so /proc shows the final process.
                assert wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"))
        except BaseException:
            self.bundle.delete(force=True)
            raise
        return pid

    def __exit__(self, *exc) -> None:
        assert self.bundle.delete(force=True).returncode == 0


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


# ---- namespaces -----------------------------------------------------------------------------------------

def test_each_default_namespace_is_new(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    with Running(bundle, start=False) as pid:
        for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup"):
            assert ns_inode(pid, kind) != ns_inode("self", kind), kind
        for kind in ("user", "time"):
            assert ns_inode(pid, kind) == ns_inode("self", kind), kind


def test_user_and_time_namespaces_are_new_when_asked(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; "
                                           "cat /proc/self/timens_offsets; sleep 100"])
    linux = bundle.config["linux"]
    linux["namespaces"] += [{"type": "user"}, {"type": "time"}]
    linux["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    linux["timeOffsets"] = {"monotonic": {"secs": 86400, "nanosecs": 0}}
    with Running(bundle) as pid:
        assert ns_inode(pid, "user") != ns_inode("self", "user")
        assert ns_inode(pid, "time") != ns_inode("self", "time")
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", "200000", "65536"]
        assert status_fields(pid)["Uid"].split()[0] == "200000"
        assert Path(f"/proc/{pid}/timens_offsets").read_text().split()[:3] == ["monotonic", "86400", "0"]


@pytest.fixture
def netns_holder():
    """A host process sleeping in a network namespace of its own, whose path a container can join."""
    holder = subprocess.Popen(["unshare", "--net", "--uts", "sh", "-c", "hostname holder-host; exec sleep 100"])
    try:
        assert wait_for(lambda: ns_inode(holder.pid, "network") != ns_inode("self", "network")
                        and Path(f"/proc/{holder.pid}/cmdline").read_bytes().startswith(b"sleep"))
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_namespaces_joined_by_path(make_bundle, netns_holder):
    bundle = make_bundle(args=["sleep", "100"])
    for ns in bundle.config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{netns_holder}/ns/net"
    bundle.config["linux"]["namespaces"] = [ns for ns in bundle.config["linux"]["namespaces"]
                                            if ns["type"] != "uts"]
    bundle.config["linux"]["namespaces"].append({"type": "uts", "path": f"/proc/{netns_holder}/ns/uts"})
    del bundle.config["hostname"]
    with Running(bundle) as pid:
        assert ns_inode(pid, "network") == ns_inode(netns_holder, "network")
        assert ns_inode(pid, "uts") == ns_inode(netns_holder, "uts")
        assert ns_inode(pid, "ipc") != ns_inode("self", "ipc")
    # The joined namespace outlives the container, and still holds its own hostname.
    assert subprocess.run(["nsenter", "-t", str(netns_holder), "--uts", "hostname"], capture_output=True,
                          text=True).stdout == "holder-host\n"


def test_a_namespace_left_out_is_the_hosts(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    bundle.config = helpers.without_namespace(bundle.config, "network")
    with Running(bundle, start=False) as pid:
        assert ns_inode(pid, "network") == ns_inode("self", "network")
        assert ns_inode(pid, "pid") != ns_inode("self", "pid")


# ---- mounts ---------------------------------------------------------------------------------------------

def test_bind_mount_read_only_and_read_write(make_bundle, test_dir):
    shared = test_dir / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hello\n")
    bundle = make_bundle(args=["sh", "-c", "cat /ro/from-host; echo x > /ro/new 2>/dev/null && echo wrote-ro; "
                                           "echo from-container > /rw/new; grep -E ' /r[ow] ' /proc/mounts"])
    bundle.config["mounts"] += [
        {"destination": "/ro", "type": "bind", "source": str(shared), "options": ["bind", "ro"]},
        {"destination": "/rw", "type": "bind", "source": str(shared), "options": ["rbind", "rw"]},
    ]
    out = run_ok(bundle).splitlines()
    assert out[0] == "hello"
    assert "wrote-ro" not in out
    assert (shared / "new").read_text() == "from-container\n"
    options = {line.split()[1]: line.split()[3].split(",") for line in out[1:]}
    assert "ro" in options["/ro"] and "rw" in options["/rw"]


def test_tmpfs_options_reach_the_kernel(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "grep ' /scratch ' /proc/mounts; stat -c %a /scratch"])
    bundle.config["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=1750",
                                                "uid=12", "gid=34"]})
    line, mode = run_ok(bundle).splitlines()
    options = line.split()[3].split(",")
    assert line.split()[2] == "tmpfs"
    assert {"nosuid", "nodev", "noexec", "size=1024k", "mode=1750", "uid=12", "gid=34"} <= set(options), options
    assert mode == "1750"


def test_mount_propagation_slave_sees_later_host_mounts(make_bundle, test_dir):
    source = test_dir / "propagating"
    source.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(source)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(source)], check=True)
        (source / "later").mkdir()
        bundle = make_bundle(args=["sh", "-c", "while [ ! -e /slave/later/marker ]; do sleep 0.02; done; "
                                               "cat /slave/later/marker; ls /private/later"])
        bundle.config["mounts"] += [
            {"destination": "/slave", "type": "bind", "source": str(source), "options": ["rbind", "rslave"]},
            {"destination": "/private", "type": "bind", "source": str(source),
             "options": ["rbind", "rprivate"]},
        ]
        out = bundle.root.parent / "prop.out"
        assert bundle.run("-d", stdout=out).returncode == 0
        try:
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(source / "later")], check=True)
            try:
                (source / "later" / "marker").write_text("propagated\n")
                assert wait_for(lambda: out.read_text() == "propagated\n", timeout=10), out.read_text()
                assert wait_for(lambda: bundle.state()["status"] == "stopped")
            finally:
                subprocess.run(["umount", str(source / "later")], check=True)
        finally:
            bundle.delete(force=True)
    finally:
        subprocess.run(["umount", "--lazy", str(source)], check=True)


# ---- process ----------------------------------------------------------------------------------------------

CAP_BIT = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10,
           "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18, "CAP_AUDIT_WRITE": 29}


def cap_mask(names: list[str]) -> int:
    return sum(1 << CAP_BIT[name] for name in names)


def test_all_five_capability_sets(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    sets = {
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }
    bundle.config["process"]["capabilities"] = sets
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    with Running(bundle) as pid:
        status = status_fields(pid)
    # A non-root process keeps across execve only what is ambient (permitted and effective get it back).
    assert int(status["CapBnd"], 16) == cap_mask(sets["bounding"])
    assert int(status["CapInh"], 16) == cap_mask(sets["inheritable"])
    assert int(status["CapAmb"], 16) == cap_mask(sets["ambient"])
    assert int(status["CapPrm"], 16) == cap_mask(sets["ambient"])
    assert int(status["CapEff"], 16) == cap_mask(sets["ambient"])


def test_capabilities_of_root_are_exactly_the_configured_sets(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_AUDIT_WRITE"]
    bundle.config["process"]["capabilities"] = {"bounding": caps, "permitted": caps, "effective": caps[:2]}
    bundle.config["process"]["noNewPrivileges"] = False
    with Running(bundle) as pid:
        status = status_fields(pid)
    assert int(status["CapBnd"], 16) == cap_mask(caps)
    assert int(status["CapPrm"], 16) == cap_mask(caps)
    # execve as uid 0 raises effective to permitted (no file capabilities involved: the legacy root rule).
    assert int(status["CapEff"], 16) == cap_mask(caps)
    assert int(status["CapInh"], 16) == 0
    assert int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "0"


def test_rlimits_reach_proc_limits(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    bundle.config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 1048576},
        {"type": "RLIMIT_NPROC", "soft": 77, "hard": 88},
        {"type": "RLIMIT_MSGQUEUE", "soft": 4096, "hard": 8192},
    ]
    with Running(bundle) as pid:
        limits = {line[:26].strip(): line[26:].split()[:2]
                  for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]}
    assert limits["Max open files"] == ["123", "456"]
    assert limits["Max core file size"] == ["0", "1048576"]
    assert limits["Max processes"] == ["77", "88"]
    assert limits["Max msgqueue size"] == ["4096", "8192"]


def test_user_groups_and_umask(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "grep -E '^(Uid|Gid|Groups|Umask):' /proc/self/status; "
                                           "touch /tmp/f; stat -c %a /tmp/f"])
    bundle.config["process"]["user"] = {"uid": 1234, "gid": 2345, "additionalGids": [11, 22, 33],
                                        "umask": 0o027}
    bundle.config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["mode=1777"]})
    lines = run_ok(bundle).splitlines()
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in lines[:-1]}
    assert fields["Uid"] == ["1234"] * 4
    assert fields["Gid"] == ["2345"] * 4
    assert fields["Groups"] == ["11", "22", "33"]
    assert fields["Umask"] == ["0027"]
    assert lines[-1] == "640"


def test_cwd_env_and_args(make_bundle):
    bundle = make_bundle(args=["sh", "-c", 'pwd; echo "$FIRST|$SECOND"; echo "$0"', "argv-zero"])
    bundle.config["process"]["cwd"] = "/dev/mqueue"
    bundle.config["process"]["env"] += ["FIRST=one", "SECOND=two words"]
    assert run_ok(bundle).splitlines() == ["/dev/mqueue", "one|two words", "argv-zero"]


def test_oom_score_adj(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    bundle.config["process"]["oomScoreAdj"] = 456
    with Running(bundle) as pid:
        assert Path(f"/proc/{pid}/oom_score_adj").read_text() == "456\n"


def test_no_new_privileges(make_bundle):
    bundle = make_bundle(args=["grep", "NoNewPrivs", "/proc/self/status"])
    assert run_ok(bundle).split() == ["NoNewPrivs:", "1"]
    bundle = make_bundle(args=["grep", "NoNewPrivs", "/proc/self/status"])
    bundle.config["process"]["noNewPrivileges"] = False
    assert run_ok(bundle).split() == ["NoNewPrivs:", "0"]


# ---- uts, sysctl, personality ---------------------------------------------------------------------------

def test_hostname_and_domainname(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"])
    bundle.config["hostname"] = "box-one"
    bundle.config["domainname"] = "example.test"
    host_name = Path("/proc/sys/kernel/hostname").read_text()
    assert run_ok(bundle).splitlines() == ["box-one", "example.test"]
    assert Path("/proc/sys/kernel/hostname").read_text() == host_name


def test_sysctl_in_new_net_and_ipc_namespaces(make_bundle):
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    host_shm = Path("/proc/sys/kernel/shm_rmid_forced").read_text()
    new_forward = "0" if host_forward.strip() == "1" else "1"
    new_shm = "0" if host_shm.strip() == "1" else "1"
    bundle = make_bundle(args=["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/shm_rmid_forced"])
    bundle.config["linux"]["sysctl"] = {"net.ipv4.ip_forward": new_forward,
                                        "kernel.shm_rmid_forced": new_shm}
    assert run_ok(bundle).split() == [new_forward, new_shm]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward
    assert Path("/proc/sys/kernel/shm_rmid_forced").read_text() == host_shm


def test_personality_linux32(make_bundle):
    bundle = make_bundle(args=["uname", "-m"])
    bundle.config["linux"]["personality"] = {"domain": "LINUX32"}
    assert run_ok(bundle) == "i686\n"
    plain = make_bundle(args=["uname", "-m"])
    assert run_ok(plain) == os.uname().machine + "\n"


# ---- paths ------------------------------------------------------------------------------------------------

def test_masked_and_readonly_paths(make_bundle):
    script = ("wc -c < /proc/timer_list; ls /sys/firmware | wc -l; "
              "echo 1 > /proc/sys/kernel/panic_on_oops 2>/dev/null && echo sys-writable; "
              "echo h > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable; "
              "echo x > /sys/firmware/x 2>/dev/null && echo firmware-writable; echo end")
    bundle = make_bundle(args=["sh", "-c", script])
    bundle.config["process"]["capabilities"] = {k: ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"]
                                                for k in ("bounding", "effective", "permitted")}
    bundle.config["linux"]["maskedPaths"] = ["/proc/timer_list", "/sys/firmware", "/proc/no-such-path"]
    bundle.config["linux"]["readonlyPaths"] = ["/proc/sys", "/proc/sysrq-trigger"]
    assert run_ok(bundle).split() == ["0", "0", "end"]


def test_root_readonly(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "touch /probe 2>&1; grep ' / ' /proc/mounts"])
    bundle.config["root"]["readonly"] = True
    out = run_ok(bundle)
    assert "Read-only file system" in out
    assert " ro," in out.splitlines()[-1] or out.splitlines()[-1].split()[3].startswith("ro")
    writable = make_bundle(args=["sh", "-c", "touch /probe && echo made"], own_rootfs=True)
    writable.config["root"]["readonly"] = False
    assert run_ok(writable) == "made\n"
    assert (writable.path / "rootfs" / "probe").exists()


# ---- devices ----------------------------------------------------------------------------------------------

def test_default_devices_have_the_right_numbers(make_bundle):
    names = ["null", "zero", "full", "random", "urandom", "tty", "ptmx"]
    bundle = make_bundle(args=["sh", "-c", "for d in " + " ".join(names) + "; do "
                                           "stat -L -c '%n %t:%T %F' /dev/$d; done; "
                                           "for l in fd stdin ptmx; do readlink /dev/$l; done; head -c 4 /dev/zero | wc -c"])
    lines = run_ok(bundle).splitlines()
    found = {line.split()[0]: line.split()[1] for line in lines[:len(names)]}
    assert found == {"/dev/null": "1:3", "/dev/zero": "1:5", "/dev/full": "1:7", "/dev/random": "1:8",
                     "/dev/urandom": "1:9", "/dev/tty": "5:0", "/dev/ptmx": "5:2"}
    assert all("character special file" in line for line in lines[:len(names)])
    assert lines[len(names):len(names) + 3] == ["/proc/self/fd", "/proc/self/fd/0", "pts/ptmx"]
    assert lines[-1] == "4"


def test_linux_devices_are_made_with_mode_and_owner(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "stat -c '%t:%T %a %u %g %F' /dev/mine /dev/sub/blk; "
                                           "echo data > /dev/mine && echo written"])
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/mine", "type": "c", "major": 1, "minor": 3, "fileMode": 0o620, "uid": 1001, "gid": 1002},
        {"path": "/dev/sub/blk", "type": "b", "major": 7, "minor": 200, "fileMode": 0o600},
    ]
    bundle.config["process"]["capabilities"] = {k: ["CAP_DAC_OVERRIDE"]
                                                for k in ("bounding", "effective", "permitted")}
    lines = run_ok(bundle).splitlines()
    assert lines[0] == "1:3 620 1001 1002 character special file"
    assert lines[1] == "7:c8 600 0 0 block special file"
    assert lines[2] == "written"


def test_device_cgroup_denies_a_node_not_allowed(make_bundle):
    # mknod is allowed (the rules decide who may open a node); reading /dev/mem's numbers is not.
    bundle = make_bundle(args=["sh", "-c", "mknod /dev/memish c 1 1 && head -c 1 /dev/memish 2>&1; echo rc=$?; "
                                           "head -c 1 /dev/zero | wc -c"])
    bundle.config["process"]["capabilities"] = {k: ["CAP_MKNOD", "CAP_SYS_RAWIO"]
                                                for k in ("bounding", "effective", "permitted")}
    out = run_ok(bundle).splitlines()
    assert "Operation not permitted" in out[0] and out[1] == "rc=1", out
    assert out[2] == "1"


# ---- cgroups ----------------------------------------------------------------------------------------------

def cgroup_dir(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return helpers.CGROUP_ROOT / controllers.split(",")[0].removeprefix("name=") / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def limited_bundle(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    bundle.config["linux"]["resources"].update({
        "memory": {"limit": 64 * 1024 * 1024, "reservation": 32 * 1024 * 1024},
        "pids": {"limit": 50},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
    })
    return bundle


def check_limits(pid: int) -> None:
    memory = cgroup_dir(pid, "memory")
    assert (memory / "memory.limit_in_bytes").read_text() == f"{64 * 1024 * 1024}\n"
    assert (memory / "memory.soft_limit_in_bytes").read_text() == f"{32 * 1024 * 1024}\n"
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text() == "50\n"
    cpu = cgroup_dir(pid, "cpu")
    assert (cpu / "cpu.shares").read_text() == "512\n"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000\n"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000\n"
    cpuset = cgroup_dir(pid, "cpuset")
    assert (cpuset / "cpuset.cpus").read_text() == "0\n"
    assert (cpuset / "cpuset.mems").read_text() == "0\n"
    assert Path(f"/proc/{pid}/status").read_text().count("Cpus_allowed_list:\t0\n") == 1


def test_cgroup_limits_with_a_relative_path(make_bundle):
    bundle = limited_bundle(make_bundle)
    with Running(bundle) as pid:
        check_limits(pid)
        for controller in ("memory", "pids", "cpu", "cpuset", "freezer", "devices"):
            directory = cgroup_dir(pid, controller)
            assert directory.name == bundle.id and directory.parent.name == helpers.CGROUP_PARENT
            assert str(pid) in (directory / "cgroup.procs").read_text().split()
    assert not bundle.cgroup_dirs()


def test_cgroup_limits_with_an_absolute_path(make_bundle):
    bundle = limited_bundle(make_bundle)
    bundle.config["linux"]["cgroupsPath"] = helpers.cgroups_path(bundle.id, absolute=True)
    with Running(bundle) as pid:
        check_limits(pid)
        for controller in ("memory", "pids", "cpu"):
            expected = helpers.CGROUP_ROOT / controller / helpers.CGROUP_PARENT / bundle.id
            assert cgroup_dir(pid, controller) == expected
    assert not bundle.cgroup_dirs()


def test_pids_limit_is_enforced(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 0.3 & done 2>&1; wait"])
    bundle.config["linux"]["resources"]["pids"] = {"limit": 4}
    result = bundle.run()
    assert "can't fork" in result.stdout + result.stderr or "Resource temporarily unavailable" in (
        result.stdout + result.stderr), result
