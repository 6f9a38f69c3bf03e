"""How the container's process is set up, next to runc and crun on the same bundle: HOME, the fds the init
holds while it waits for ``start``, the exec user's cwd and capabilities, the scheduler, a cwd that does
not exist yet, UTS sysctls. Root and rootless where both apply.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import helpers
import pytest


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


@pytest.fixture(params=["root", "rootless-subids"])
def mapped_user(request) -> helpers.UnprivilegedUser | None:
    """Root, or a rootless user whose subordinate ids map the uids 1000 and 4242 of the container."""
    if request.param == "rootless-subids":
        return request.getfixturevalue("subid_user")
    return None


def bundle_for(make_bundle, user, args, **kwargs) -> helpers.Bundle:
    bundle = make_bundle(user=user, args=args, **kwargs)
    if user is not None and user.subuid is not None:
        helpers.use_subid_maps(bundle.config, user)
    return bundle


def without_home(bundle: helpers.Bundle) -> None:
    bundle.config["process"]["env"] = [e for e in bundle.config["process"]["env"] if not e.startswith("HOME=")]


def output_of(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- HOME ------------------------------------------------------------------------------------------------------
PRINT_HOME = ["sh", "-c", "echo HOME=$HOME"]


@pytest.mark.parametrize(("uid", "home"), [(0, "/root"), (1000, "/home/user"), (4242, "/")])
def test_home_comes_from_the_rootfs_passwd_or_is_slash(make_bundle, mapped_user, uid, home):
    # runc: the home of the uid's entry in the container's /etc/passwd, "/" without one.
    bundle = bundle_for(make_bundle, mapped_user, PRINT_HOME)
    without_home(bundle)
    bundle.config["process"]["user"] = {"uid": uid, "gid": uid}
    assert output_of(bundle.run()) == f"HOME={home}\n"


def test_a_home_in_the_env_is_kept_and_an_empty_one_is_filled(make_bundle, user):
    bundle = make_bundle(user=user, args=PRINT_HOME)
    without_home(bundle)
    bundle.config["process"]["env"].append("HOME=/somewhere")
    assert output_of(bundle.run()) == "HOME=/somewhere\n"
    bundle.config["process"]["env"][-1] = "HOME="
    assert output_of(bundle.run()) == "HOME=/root\n"


def test_exec_sets_home_for_the_exec_user(make_bundle, mapped_user):
    bundle = bundle_for(make_bundle, mapped_user, ["sleep", "600"])
    without_home(bundle)
    assert bundle.run("-d").returncode == 0
    try:
        assert output_of(bundle.runtime(["exec", bundle.id, *PRINT_HOME])) == "HOME=/root\n"
        assert output_of(bundle.runtime(["exec", "--user", "1000:1000", bundle.id, *PRINT_HOME])) == \
            "HOME=/home/user\n"
        assert output_of(bundle.runtime(["exec", "--user", "4242", bundle.id, *PRINT_HOME])) == "HOME=/\n"
        assert output_of(bundle.runtime(["exec", "--env", "HOME=/x", bundle.id, *PRINT_HOME])) == "HOME=/x\n"
    finally:
        bundle.delete(force=True)


@pytest.mark.parametrize("kind", ["fifo", "host-symlink", "huge", "directory"])
def test_home_reads_only_the_containers_own_regular_passwd(make_bundle, user, test_dir, kind):
    """/etc/passwd is the container's: a FIFO there must not hang the init, a symlink resolves inside the
    rootfs (never to a host file of that name), and only the first MiB of it is read."""
    bundle = make_bundle(user=user, args=PRINT_HOME, own_rootfs=True)
    without_home(bundle)
    passwd = bundle.path / "rootfs" / "etc" / "passwd"
    passwd.unlink()
    if kind == "fifo":
        os.mkfifo(passwd)
    elif kind == "host-symlink":
        host_file = test_dir / "host-passwd"
        host_file.write_text("root:x:0:0:root:/from-the-host:/bin/sh\n")
        os.chmod(host_file, 0o644)
        passwd.symlink_to(host_file)
    elif kind == "huge":
        with open(passwd, "w") as f:
            f.write(("#" * 1023 + "\n") * 1024)  # one MiB of comments before the entry
            f.write("root:x:0:0:root:/far-down:/bin/sh\n")
    else:
        passwd.mkdir()
    if user is not None:
        helpers.chown_tree(bundle.path / "rootfs", user.uid, user.gid)
    assert output_of(bundle.run(timeout=20)) == "HOME=/\n"


# -- the fds of the init at create ------------------------------------------------------------------------------
def create_with_stray_fds(bundle: helpers.Bundle, stray: Path, *extra: str) -> subprocess.CompletedProcess:
    """``create`` from a shell that leaves fd 4 (a file) and fd 10 (/dev/null) open in the runtime, as bats
    and many callers do."""
    bundle.write()
    runtime = bundle.runtime_path or helpers.runtime_path()
    script = f'exec 4>"{stray}" 10</dev/null; exec "$@"'
    command = ["bash", "-c", script, "bash", runtime, "--root", str(bundle.root), "create", *extra,
               "--bundle", str(bundle.path), bundle.id]
    identity: dict = {}
    if bundle.user is not None:
        identity = {"user": bundle.user.uid, "group": bundle.user.gid, "extra_groups": [], "cwd": bundle.user.home}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=30,
                              env=helpers.base_env(bundle.user), **identity)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, "", err.read())


def fds_of(pid: int) -> dict[int, str]:
    fds = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return fds


def test_the_init_never_holds_the_callers_stray_fds(make_bundle, user, test_dir):
    bundle = make_bundle(user=user, args=["true"])
    stray = test_dir / "stray.out"
    stray.touch()
    os.chmod(stray, 0o666)
    try:
        result = create_with_stray_fds(bundle, stray)
        assert result.returncode == 0, result.stderr
        pid = bundle.state()["pid"]
        held = fds_of(pid)
        assert str(stray) not in held.values(), held
        assert 4 not in held and 10 not in held, held
    finally:
        bundle.delete(force=True)


def test_preserved_fds_reach_the_init_and_nothing_beyond(make_bundle, user, test_dir):
    bundle = make_bundle(user=user, args=["true"])
    stray = test_dir / "stray.out"
    stray.touch()
    os.chmod(stray, 0o666)
    try:
        # --preserve-fds 2 keeps 3 and 4: fd 4 is the file, fd 10 is still the caller's stray.
        result = create_with_stray_fds(bundle, stray, "--preserve-fds", "2")
        assert result.returncode == 0, result.stderr
        held = fds_of(bundle.state()["pid"])
        assert held.get(4) == str(stray), held
        assert 10 not in held, held
    finally:
        bundle.delete(force=True)


# -- sysctls of the UTS namespace ------------------------------------------------------------------------------
def assert_refused(result: subprocess.CompletedProcess, bundle: helpers.Bundle, *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not (bundle.root / bundle.id).exists()


@pytest.mark.parametrize("uts", ["new", "none"])
def test_the_kernel_hostname_sysctl_is_refused(make_bundle, user, uts):
    # runc and crun: it conflicts with the hostname field, with or without a UTS namespace.
    bundle = make_bundle(user=user, args=["hostname"])
    if uts == "none":
        bundle.config = helpers.without_namespace(bundle.config, "uts")
        bundle.config.pop("hostname", None)
    bundle.config["linux"]["sysctl"] = {"kernel.hostname": "sysctl-name"}
    assert_refused(bundle.run(), bundle, "'kernel.hostname' conflicts with the hostname field")


def test_the_kernel_domainname_sysctl_needs_a_uts_namespace(make_bundle, user):
    bundle = make_bundle(user=user, args=["cat", "/proc/sys/kernel/domainname"])
    bundle.config["linux"]["sysctl"] = {"kernel.domainname": "example.test"}
    if user is None:
        # Rootless, /proc/sys/kernel/domainname belongs to the host's root: the write is refused (EACCES).
        assert output_of(bundle.run()) == "example.test\n"
    bundle.config = helpers.without_namespace(bundle.config, "uts")
    bundle.config.pop("hostname", None)
    assert_refused(bundle.run(), bundle, "'kernel.domainname' needs a uts namespace")


@pytest.mark.parametrize(("kind", "proc_name", "key", "value"), [
    ("network", "net", "net.ipv4.ip_forward", "1"), ("uts", "uts", "kernel.domainname", "x")])
def test_a_sysctl_in_the_runtimes_own_namespace_joined_by_path_is_refused(make_bundle, kind, proc_name, key,
                                                                          value):
    # runc refuses it for the network namespace ("not allowed in host network namespace").
    bundle = make_bundle(args=["true"])
    config = helpers.without_namespace(bundle.config, kind)
    config["linux"]["namespaces"].append({"type": kind, "path": f"/proc/{os.getpid()}/ns/{proc_name}"})
    config["linux"]["sysctl"] = {key: value}
    bundle.config = config
    assert_refused(bundle.run(), bundle, f"'{key}': the {kind} namespace", "is the runtime's own")


# -- a process.cwd the rootfs lacks ------------------------------------------------------------------------------
def test_a_missing_cwd_is_created_inside_the_rootfs(make_bundle, user):
    # runc and crun create it (0755, the container's root), also under a read-only root.
    bundle = make_bundle(user=user, args=["sh", "-c", "pwd; stat -c '%a %u' /made/for/cwd /made"], own_rootfs=True)
    assert bundle.config["root"]["readonly"] is True
    if user is not None:  # a rootless user's own rootfs
        helpers.chown_tree(bundle.path / "rootfs", user.uid, user.gid)
    bundle.config["process"]["cwd"] = "/made/for/cwd"
    assert output_of(bundle.run()) == "/made/for/cwd\n755 0\n755 0\n"
    assert (bundle.path / "rootfs" / "made" / "for" / "cwd").is_dir()


def test_a_missing_cwd_behind_a_symlink_is_made_in_the_rootfs_not_on_the_host(make_bundle, user, test_dir):
    host_dir = test_dir / "host-side"
    host_dir.mkdir()
    os.chmod(host_dir, 0o777)
    bundle = make_bundle(user=user, args=["pwd"], own_rootfs=True)
    link = bundle.path / "rootfs" / "elsewhere"
    link.symlink_to(host_dir)  # absolute: inside the container it names a path of the rootfs
    if user is not None:
        helpers.chown_tree(bundle.path / "rootfs", user.uid, user.gid)
    bundle.config["process"]["cwd"] = "/elsewhere/sub"
    assert output_of(bundle.run()) == f"{host_dir}/sub\n"  # the physical path, inside the container
    assert list(host_dir.iterdir()) == [], "nothing was made on the host"
    assert (bundle.path / "rootfs" / str(host_dir).lstrip("/") / "sub").is_dir()


def test_a_cwd_through_a_file_is_one_line_and_leaves_nothing(make_bundle, user):
    bundle = make_bundle(user=user, args=["pwd"])
    bundle.config["process"]["cwd"] = "/etc/passwd/sub"
    result = bundle.run()
    assert result.returncode == 1
    assert_refused(result, bundle, "cwd /etc/passwd/sub")


def test_exec_does_not_create_a_missing_cwd(make_bundle, user):
    # Neither do runc and crun: only the container's own process.cwd is made.
    bundle = make_bundle(user=user, args=["sleep", "600"], own_rootfs=True)
    bundle.config["root"]["readonly"] = False
    assert bundle.run("-d").returncode == 0
    try:
        result = bundle.runtime(["exec", "--cwd", "/not/made", bundle.id, "true"])
        assert result.returncode == 255
        assert "no such file or directory" in result.stderr
        assert not (bundle.path / "rootfs" / "not").exists()
    finally:
        bundle.delete(force=True)


# -- exec: the user's cwd and the capabilities -----------------------------------------------------------------
def cap_line(output: str, name: str) -> int:
    for line in output.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {name} in {output!r}")


CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE = 1 << 5, 1 << 10, 1 << 29


def test_exec_user_gets_a_cwd_only_root_can_enter(make_bundle, mapped_user):
    # runc changes directory before dropping privileges (and again after, if root was refused).
    bundle = bundle_for(make_bundle, mapped_user, ["sleep", "600"], own_rootfs=True)
    os.chmod(bundle.path / "rootfs" / "root", 0o700)
    if mapped_user is not None:
        helpers.chown_tree(bundle.path / "rootfs", mapped_user.uid, mapped_user.gid)
    bundle.config["process"]["cwd"] = "/root"
    assert bundle.run("-d").returncode == 0
    try:
        assert output_of(bundle.runtime(["exec", "--user", "1000:1000", bundle.id, "pwd"])) == "/root\n"
    finally:
        bundle.delete(force=True)


def test_exec_applies_the_containers_ambient_capabilities(make_bundle, mapped_user, test_dir):
    bundle = bundle_for(make_bundle, mapped_user, ["sleep", "600"])
    caps = bundle.config["process"]["capabilities"]
    caps["inheritable"] = ["CAP_KILL"]
    caps["ambient"] = ["CAP_KILL"]
    assert bundle.run("-d").returncode == 0
    status = ["cat", "/proc/self/status"]
    try:
        for flags in ([], ["--user", "1000:1000"]):
            seen = output_of(bundle.runtime(["exec", *flags, bundle.id, *status]))
            assert cap_line(seen, "CapAmb") == CAP_KILL, flags
        # A process file without capabilities gets the container's, as with runc and crun.
        bare = {"args": status, "cwd": "/", "user": {"uid": 1000, "gid": 1000}, "env": ["PATH=/bin"]}
        process_file = bundle.path / "bare.json"
        process_file.write_text(json.dumps(bare))
        seen = output_of(bundle.runtime(["exec", "--process", process_file, bundle.id]))
        assert cap_line(seen, "CapAmb") == CAP_KILL
        assert cap_line(seen, "CapBnd") == CAP_KILL | CAP_NET_BIND_SERVICE | CAP_AUDIT_WRITE
        # One with capabilities of its own gets exactly those.
        own = dict(bare, capabilities={"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "effective": [],
                                       "inheritable": [], "ambient": []})
        process_file.write_text(json.dumps(own))
        seen = output_of(bundle.runtime(["exec", "--process", process_file, bundle.id]))
        assert (cap_line(seen, "CapAmb"), cap_line(seen, "CapBnd")) == (0, CAP_KILL)
    finally:
        bundle.delete(force=True)


# -- the scheduler ---------------------------------------------------------------------------------------------
# runc 1.1.5 and crun 1.8.1 ignore process.scheduler on this machine (the policy stays SCHED_OTHER); ocirt
# applies it, so where the kernel refuses a policy the message says why.
def policy_of(text: str) -> int:
    return int(next(line for line in text.splitlines() if line.startswith("policy")).split(":")[1])


@pytest.mark.parametrize(("policy", "number"), [("SCHED_FIFO", 1), ("SCHED_RR", 2)])
def test_a_realtime_policy_is_set_in_run_and_exec_given_realtime_runtime(make_bundle, policy, number):
    bundle = make_bundle(args=["sh", "-c", "grep ^policy /proc/self/sched; exec sleep 600"])
    bundle.config["process"]["scheduler"] = {"policy": policy, "priority": 10}
    bundle.config["linux"]["resources"]["cpu"] = {"realtimeRuntime": 20000, "realtimePeriod": 1000000}
    # Right below the root cgroup: a child's real-time runtime comes out of its parent's, and the suite's
    # own parent cgroup has none.
    bundle.config["linux"]["cgroupsPath"] = "/" + bundle.id
    out = bundle.path / "init.out"
    assert bundle.run("-d", stdout=out).returncode == 0
    try:
        assert helpers.wait_for(lambda: "policy" in out.read_text())
        assert policy_of(out.read_text()) == number
        exec_out = output_of(bundle.runtime(["exec", bundle.id, "grep", "^policy", "/proc/self/sched"]))
        assert policy_of(exec_out) == number, "exec takes the container's scheduler, as runc 1.2 does"
    finally:
        bundle.delete(force=True)


def test_a_realtime_policy_without_realtime_runtime_is_one_line_before_anything_runs(make_bundle):
    bundle = make_bundle(args=["true"])
    bundle.config["process"]["scheduler"] = {"policy": "SCHED_FIFO", "priority": 10}
    result = bundle.run()
    assert_refused(result, bundle, "SCHED_FIFO needs real-time runtime", "cpu.rt_runtime_us is 0",
                   "realtimeRuntime")
    assert not bundle.cgroup_dirs()


def test_a_realtime_policy_rootless_says_what_it_lacks(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.config["process"]["scheduler"] = {"policy": "SCHED_RR", "priority": 5}
    assert_refused(bundle.run(), bundle, "cannot set scheduler SCHED_RR: operation not permitted",
                   "CAP_SYS_NICE in the host's user namespace")


def test_batch_and_nice_apply_root_and_rootless(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh", "-c", "grep ^policy /proc/self/sched; cut -d' ' -f19 /proc/self/stat"])
    bundle.config["process"]["scheduler"] = {"policy": "SCHED_BATCH", "nice": 19}
    policy, nice = output_of(bundle.run()).split("\n")[:2]
    assert (policy_of(policy), nice) == (3, "19")
