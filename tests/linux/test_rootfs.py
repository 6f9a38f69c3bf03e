"""The container's filesystem, built for real in forked namespaces (see rootfs_harness.py).

Each test states one rule of runtime-spec config.md "Mounts" / config-linux.md, or one path-safety
property, and checks it from inside the container after pivot_root.
"""

from __future__ import annotations

import copy
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rootfs_harness as h  # noqa: E402

from ocirt import syscalls  # noqa: E402
from ocirt.errors import ConfigError, OcirtError  # noqa: E402
from ocirt.linux import procfs  # noqa: E402
from ocirt.linux.rootfs import plan_rootfs  # noqa: E402
from ocirt.spec.default import default_config  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and mounts need root")


@pytest.fixture
def bundle():
    path = h.make_bundle_dir()
    yield path
    # Every mount lived in the child's namespaces: none may be left in the host's table.
    leftover = h.host_mounts_under(path)
    for point in sorted(leftover, key=len, reverse=True):
        syscalls.umount2(point, syscalls.MNT_DETACH)
    h.remove_bundle_dir(path)
    assert leftover == []


def rootless_bundle(path: Path) -> Path:
    h.chown_tree(path, h.ROOTLESS_UID, h.ROOTLESS_GID)
    return path


def config(*, rootless: bool = False, mounts: list | None = None, **linux) -> dict:
    cfg = default_config(rootless=rootless, uid=h.ROOTLESS_UID, gid=h.ROOTLESS_GID)
    if mounts is not None:
        cfg["mounts"] = cfg["mounts"] + mounts
    cfg["linux"].update(linux)
    return cfg


def ok(result: h.ContainerResult) -> h.ContainerResult:
    assert result.error is None, f"{result.error}\n{result.get('__traceback__')}"
    return result


def default_checks() -> dict:
    with open("/dev/null", "r+b") as null:
        null.write(b"discarded")
        null_read = null.read()
    with open("/dev/zero", "rb") as zero:
        zero_read = zero.read(4)
    with open("/proc/keys", "rb") as keys:
        masked_file = keys.read()
    mounts = h.mountinfo()
    return {
        "fstypes": {m["point"]: m["fstype"] for m in mounts},
        "options": {m["point"]: m["options"] for m in mounts},
        "super": {m["point"]: m["super"] for m in mounts},
        "null_read": null_read.decode(), "zero_read": list(zero_read),
        "devices": {name: h.describe(f"/dev/{name}")
                    for name in ("null", "zero", "full", "random", "urandom", "tty")},
        "links": {name: h.describe(f"/dev/{name}") for name in ("fd", "stdin", "stdout", "stderr", "ptmx")},
        "masked_file": masked_file.decode(),
        "masked_dir": os.listdir("/proc/acpi") if os.path.isdir("/proc/acpi") else None,
        "masked_dir_write": h.try_write("/proc/acpi/x"),
        "proc_sys_write": h.try_write("/proc/sys/kernel/hostname", "changed"),
        "root_write": h.try_write("/newfile"),
        "dev_write": h.try_write("/dev/shm/f"),
        "self_pid": os.readlink("/proc/self"),
        "ptmx_mode": h.describe("/dev/pts/ptmx"),
    }


def assert_default_layout(result: h.ContainerResult, *, rootless: bool) -> None:
    fstypes = result["fstypes"]
    assert fstypes["/"] == "ext4"
    assert fstypes["/proc"] == "proc"
    assert fstypes["/dev"] == "tmpfs"
    assert fstypes["/dev/pts"] == "devpts"
    assert fstypes["/dev/shm"] == "tmpfs"
    assert fstypes["/dev/mqueue"] == "mqueue"
    assert fstypes["/sys"] == "sysfs"
    assert "ro" in result["options"]["/sys"]
    assert {"nosuid", "noexec", "nodev"} <= set(result["options"]["/dev/shm"])
    assert result["self_pid"] == "1"  # the proc of the container's pid namespace
    assert result["null_read"] == "" and result["zero_read"] == [0, 0, 0, 0]
    for name, (major, minor) in {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                                 "urandom": (1, 9), "tty": (5, 0)}.items():
        assert result["devices"][name]["type"] == "c"
        assert result["devices"][name]["rdev"] == [major, minor]
    links = result["links"]
    assert links["fd"]["link"] == "/proc/self/fd"
    assert [links[n]["link"] for n in ("stdin", "stdout", "stderr")] == [f"/proc/self/fd/{i}" for i in range(3)]
    assert links["ptmx"]["link"] == "pts/ptmx"
    assert result["masked_file"] == ""  # /proc/keys has /dev/null over it
    assert result["masked_dir"] == [] and result["masked_dir_write"] == "EROFS"
    assert result["proc_sys_write"] == "EROFS"
    assert result["root_write"] == "EROFS"  # root.readonly
    assert result["dev_write"] == "ok"
    assert "/proc/kcore" not in fstypes  # missing on this kernel: skipped, not created
    assert result["ptmx_mode"]["mode"] == 0o666  # ptmxmode=0666
    if rootless:
        assert fstypes["/dev/null"] == "devtmpfs"  # the host's node, bound: mknod is refused
        assert not any(opt.startswith("gid=") for opt in result["super"]["/dev/pts"])
    else:
        assert "/dev/null" not in fstypes  # a real node made with mknod
        assert result["devices"]["null"]["mode"] == 0o666
        assert "gid=5" in result["super"]["/dev/pts"]
        assert fstypes["/sys/fs/cgroup"] == "tmpfs"
        assert fstypes["/sys/fs/cgroup/memory"] == "cgroup"
        assert "ro" in result["options"]["/sys/fs/cgroup/memory"]


@needs_root
def test_default_config_rootful(bundle) -> None:
    result = ok(h.run_rootfs(config(), bundle, default_checks))
    assert_default_layout(result, rootless=False)


@needs_root
def test_default_config_rootless(bundle) -> None:
    rootless_bundle(bundle)
    result = ok(h.run_rootfs(config(rootless=True), bundle, default_checks, rootless=True))
    assert_default_layout(result, rootless=True)


@needs_root
def test_rootless_sysfs_without_netns_becomes_a_readonly_rbind(bundle) -> None:
    rootless_bundle(bundle)
    cfg = config(rootless=True)
    # a config that still asks for a fresh sysfs, with no network namespace of its own
    cfg["mounts"] = [m if m["destination"] != "/sys" else
                     {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid"]}
                     for m in cfg["mounts"]]
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "sys": h.mount_at("/sys"), "write": h.try_write("/sys/kernel/uevent_helper")}, rootless=True))
    assert result["sys"]["fstype"] == "sysfs"
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(result["sys"]["options"])
    assert result["write"] in ("EROFS", "EACCES")


def _two_level_source(name: str) -> list[dict]:
    """Mounts that build <rootfs>/<name> (tmpfs) with <name>/sub (tmpfs) inside the container."""
    return [{"destination": f"/{name}", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
            {"destination": f"/{name}/sub", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]}]


@needs_root
def test_bind_options_ro_rro_and_recursion(bundle) -> None:
    rootfs = bundle / "rootfs"
    src = f"{rootfs}/src"
    cfg = config(mounts=_two_level_source("src") + [
        {"destination": "/b-ro", "type": "bind", "source": src, "options": ["rbind", "ro"]},
        {"destination": "/b-rro", "type": "bind", "source": src, "options": ["rbind", "rro"]},
        {"destination": "/b-flat", "type": "bind", "source": src, "options": ["bind"]},
        {"destination": "/b-flags", "source": src, "options": ["bind", "nosuid", "nodev", "noexec",
                                                                "nosymfollow", "noatime"]},
    ])

    def checks() -> dict:
        return {p: (h.mount_at(p) or {}).get("options") for p in
                ("/b-ro", "/b-ro/sub", "/b-rro", "/b-rro/sub", "/b-flat", "/b-flat/sub", "/b-flags")} | {
            "w_ro": h.try_write("/b-ro/f"), "w_ro_sub": h.try_write("/b-ro/sub/f"),
            "w_rro_sub": h.try_write("/b-rro/sub/f"), "w_flat_sub": h.try_write("/b-flat/sub/f")}

    result = ok(h.run_rootfs(cfg, bundle, checks))
    assert "ro" in result["/b-ro"] and "rw" in result["/b-ro/sub"]  # ro is not recursive
    assert result["w_ro"] == "EROFS" and result["w_ro_sub"] == "ok"
    assert "ro" in result["/b-rro"] and "ro" in result["/b-rro/sub"] and result["w_rro_sub"] == "EROFS"
    assert result["/b-flat/sub"] is None  # plain bind: the submount is not carried over
    assert {"nosuid", "nodev", "noexec", "nosymfollow", "noatime"} <= set(result["/b-flags"])


@needs_root
def test_propagation_options(bundle) -> None:
    rootfs = bundle / "rootfs"
    cfg = config(mounts=[
        {"destination": "/m-shared", "type": "tmpfs", "source": "tmpfs", "options": ["shared"]},
        {"destination": "/m-private", "type": "tmpfs", "source": "tmpfs", "options": ["rprivate"]},
        {"destination": "/m-unbindable", "type": "tmpfs", "source": "tmpfs", "options": ["unbindable"]},
        {"destination": "/m-slave", "source": f"{rootfs}/m-shared", "options": ["rbind", "slave"]},
    ])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        p: h.mount_at(p)["optional"] for p in ("/m-shared", "/m-private", "/m-unbindable", "/m-slave")}))
    assert any(tag.startswith("shared:") for tag in result["/m-shared"])
    assert result["/m-private"] == []
    assert result["/m-unbindable"] == ["unbindable"]
    assert any(tag.startswith("master:") for tag in result["/m-slave"])


@needs_root
def test_file_bind_creates_a_file_target(bundle) -> None:
    source = bundle / "hostfile"
    source.write_text("from the host\n")
    cfg = config(mounts=[{"destination": "/etc/new/deep/file", "type": "bind", "source": str(source),
                          "options": ["bind", "ro"]}])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "content": open("/etc/new/deep/file").read(), "write": h.try_write("/etc/new/deep/file")}))
    assert result["content"] == "from the host\n"
    assert result["write"] == "EROFS"
    assert stat.S_ISREG(os.lstat(bundle / "rootfs" / "etc/new/deep/file").st_mode)


@needs_root
def test_linux_devices_are_made_with_mknod(bundle) -> None:
    cfg = config()
    cfg["linux"]["devices"] = [
        {"path": "/dev/custom-full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o640, "uid": 1000,
         "gid": 100},
        {"path": "/dev/sub/fifo", "type": "p", "fileMode": 0o600},
    ]
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "full": h.describe("/dev/custom-full"), "fifo": h.describe("/dev/sub/fifo")}))
    assert result["full"] == {"mode": 0o640, "uid": 1000, "gid": 100, "type": "c", "rdev": [1, 7]}
    assert result["fifo"]["type"] == "p" and result["fifo"]["mode"] == 0o600


@needs_root
def test_rootless_linux_devices_are_bound_from_the_host(bundle) -> None:
    rootless_bundle(bundle)
    cfg = config(rootless=True)
    cfg["linux"]["devices"] = [{"path": "/dev/full", "type": "c", "major": 1, "minor": 7}]
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "full": h.describe("/dev/full"), "fs": h.mount_at("/dev/full")["fstype"]}, rootless=True))
    assert result["full"]["rdev"] == [1, 7] and result["fs"] == "devtmpfs"


@needs_root
@pytest.mark.parametrize("absolute", [True, False])
def test_symlinked_destination_resolves_inside_the_rootfs(bundle, absolute: bool) -> None:
    canary = bundle / "host-canary"
    canary.mkdir()
    (canary / "keep").write_text("host")
    target = str(canary) if absolute else "../../../../../../../../.." + str(canary)
    (bundle / "rootfs" / "mnt" / "escape").symlink_to(target)
    cfg = config(mounts=[
        {"destination": "/mnt/escape/dir", "type": "tmpfs", "source": "tmpfs", "options": ["mode=700"]},
        {"destination": "/mnt/escape/file", "type": "bind", "source": str(bundle / "rootfs" / "etc" / "passwd"),
         "options": ["bind"]},
    ])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "dir": h.mount_at(str(canary) + "/dir"), "file": h.mount_at(str(canary) + "/file")}))
    # Inside the container the mounts sit at the link's target *within* the rootfs ...
    assert result["dir"]["fstype"] == "tmpfs"
    assert result["file"] is not None
    # ... and the host directory the link names was never touched.
    assert sorted(os.listdir(canary)) == ["keep"]
    assert (bundle / "rootfs" / str(canary).lstrip("/") / "dir").is_dir()


@needs_root
@pytest.mark.parametrize("dest, fstype", [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "tmpfs")])
def test_symlinked_proc_sys_dev_are_refused(bundle, dest: str, fstype: str) -> None:
    canary = bundle / "host-canary"
    canary.mkdir()
    rootfs = bundle / "rootfs"
    os.rmdir(rootfs / dest.lstrip("/"))
    (rootfs / dest.lstrip("/")).symlink_to(str(canary))
    result = h.run_rootfs(config(), bundle, lambda: {})
    assert result.error is not None
    assert f"mount {fstype} on {dest}: {dest} is a symlink" in result.error
    assert os.listdir(canary) == []


@needs_root
def test_destination_leading_into_proc_through_a_symlink_is_refused(bundle) -> None:
    (bundle / "rootfs" / "data").symlink_to("/proc/self/attr")
    volume = bundle / "volume"
    volume.mkdir()
    cfg = config(mounts=[{"destination": "/data", "type": "bind", "source": str(volume), "options": ["rbind"]}])
    result = h.run_rootfs(cfg, bundle, lambda: {})
    assert result.error is not None
    assert f"mount {volume} on /data: the destination resolves to a path inside /proc" in result.error


@needs_root
def test_only_a_procfs_may_be_bound_onto_proc(bundle) -> None:
    fake = bundle / "fake-proc"
    fake.mkdir()
    cfg = config()
    cfg["mounts"][0] = {"destination": "/proc", "type": "bind", "source": str(fake), "options": ["rbind"]}
    result = h.run_rootfs(cfg, bundle, lambda: {})
    assert result.error is not None
    assert f"mount {fake} on /proc: the mounted filesystem is not proc" in result.error


@needs_root
def test_devices_are_not_made_through_a_symlinked_dev(bundle) -> None:
    canary = bundle / "host-canary"
    canary.mkdir()
    rootfs = bundle / "rootfs"
    os.rmdir(rootfs / "dev")
    (rootfs / "dev").symlink_to(str(canary))
    cfg = config()
    cfg["mounts"] = [m for m in cfg["mounts"] if not m["destination"].startswith("/dev")]
    result = h.run_rootfs(cfg, bundle, lambda: {})
    assert result.error is not None and "create devices: /dev is a symlink" in result.error
    assert os.listdir(canary) == []


@needs_root
def test_masked_files_use_the_real_null_device_not_the_images(bundle) -> None:
    # /dev comes from a directory of the bundle (so the runtime does not make /dev itself), where
    # "null" is a symlink to a file the container must not be able to see through a masked path.
    devdir = bundle / "devdir"
    devdir.mkdir()
    secret = bundle / "secret"
    secret.write_text("host secret\n")
    (devdir / "null").symlink_to(str(secret))
    cfg = config()
    cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] not in ("/dev", "/dev/pts", "/dev/shm",
                                                                            "/dev/mqueue")]
    cfg["mounts"].insert(1, {"destination": "/dev", "type": "bind", "source": str(devdir),
                             "options": ["rbind"]})
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "keys": h.describe("/proc/keys"), "content": open("/proc/keys").read()}))
    assert result["keys"]["type"] == "c" and result["keys"]["rdev"] == [1, 3]
    assert result["content"] == ""


@needs_root
def test_idmapped_bind_shows_the_mapped_owner(bundle) -> None:
    source = bundle / "idmap-src"
    source.mkdir()
    (source / "owned-by-root").write_text("x")
    os.chown(source / "owned-by-root", 0, 0)
    cfg = config(mounts=[{
        "destination": "/idmapped", "type": "bind", "source": str(source), "options": ["rbind", "idmap"],
        "uidMappings": [{"containerID": 0, "hostID": 4321, "size": 1}],
        "gidMappings": [{"containerID": 0, "hostID": 4322, "size": 1}],
    }])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "file": h.describe("/idmapped/owned-by-root"), "plain": h.describe("/etc/passwd")}))
    assert (result["file"]["uid"], result["file"]["gid"]) == (4321, 4322)
    assert (result["plain"]["uid"], result["plain"]["gid"]) == (0, 0)
    assert os.stat(source / "owned-by-root").st_uid == 0


@needs_root
def test_write_proc_file_ignores_mounts_over_proc(bundle) -> None:
    def checks() -> dict:
        # The container stacks a tmpfs over /proc/sys/kernel, with a decoy "hostname" file in it.
        fd = os.open("/proc/sys/kernel", syscalls.O_PATH | os.O_DIRECTORY)
        tmpfs = syscalls.fsopen("tmpfs")
        syscalls.fsconfig(tmpfs, syscalls.FSCONFIG_CMD_CREATE)
        mnt = syscalls.fsmount(tmpfs)
        syscalls.move_mount(mnt, "", fd, "", syscalls.MOVE_MOUNT_F_EMPTY_PATH | syscalls.MOVE_MOUNT_T_EMPTY_PATH)
        with open("/proc/sys/kernel/hostname", "w") as decoy:
            decoy.write("decoy\n")
        procfs.write_proc_file("sys/kernel/hostname", "through-private-proc")
        try:
            procfs.write_proc_file("sys/kernel/no-such-knob", "1")
            missing = "no error"
        except OcirtError as err:
            missing = str(err)
        return {"nodename": os.uname().nodename, "decoy": open("/proc/sys/kernel/hostname").read(),
                "missing": missing}

    result = ok(h.run_rootfs(config(), bundle, checks))
    assert result["nodename"] == "through-private-proc"  # the real knob of the container's uts namespace
    assert result["decoy"] == "decoy\n"
    assert "/proc/sys/kernel/no-such-knob" in result["missing"]
    assert os.uname().nodename != "through-private-proc"


@needs_root
def test_mount_errors_name_destination_and_cause(bundle) -> None:
    cfg = config(mounts=[{"destination": "/bad", "type": "tmpfs", "source": "tmpfs",
                          "options": ["size=not-a-size"]}])
    result = h.run_rootfs(cfg, bundle, lambda: {})
    assert result.error is not None
    assert "mount tmpfs on /bad: invalid argument" in result.error


@needs_root
def test_console_is_bound_onto_a_regular_file(bundle) -> None:
    master, slave = os.openpty()
    try:
        slave_path = os.ttyname(slave)
        rdev = os.fstat(slave).st_rdev
        result = ok(h.run_rootfs(config(), bundle, lambda: {"console": h.describe("/dev/console")},
                                 console_path=slave_path))
        assert result["console"]["type"] == "c"
        assert result["console"]["rdev"] == [os.major(rdev), os.minor(rdev)]
    finally:
        os.close(master)
        os.close(slave)


@needs_root
@pytest.mark.parametrize("rootless", [False, True])
def test_console_from_the_containers_own_devpts(bundle, rootless: bool) -> None:
    import fcntl
    import struct

    from ocirt.linux import rootfs

    def make_console(plan) -> None:
        # What the init does: a pty of the container's devpts, its slave bound by fd onto /dev/console.
        master = rootfs.open_ptmx(plan)
        fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK: unlock
        slave = fcntl.ioctl(master, 0x5441, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)  # TIOCGPTPEER
        rootfs.mount_console(plan, f"/proc/self/fd/{slave}")
        os.close(slave)

    if rootless:
        rootless_bundle(bundle)
    result = ok(h.run_rootfs(config(rootless=rootless), bundle, lambda: {
        "console": h.describe("/dev/console"), "pts0": h.describe("/dev/pts/0")},
        rootless=rootless, after_prepare=make_console))
    assert result["console"]["type"] == "c"
    assert result["console"]["rdev"] == result["pts0"]["rdev"]


@needs_root
def test_no_pivot_moves_the_rootfs(bundle) -> None:
    result = ok(h.run_rootfs(config(), bundle, lambda: {"passwd": os.path.exists("/etc/passwd"),
                                                        "busybox": os.path.exists("/bin/busybox"),
                                                        "bundle": os.path.exists(str(bundle))},
                             plan_kwargs={"no_pivot": True}))
    assert result["passwd"] and result["busybox"] and not result["bundle"]


@needs_root
def test_rootfs_propagation_is_applied(bundle) -> None:
    result = ok(h.run_rootfs(config(rootfsPropagation="private"), bundle,
                             lambda: {"root": h.mount_at("/")["optional"]}))
    assert result["root"] == []


# ---- parse-time errors (no namespaces needed) ----

def test_missing_rootfs_is_a_config_error(tmp_path: Path) -> None:
    cfg = default_config()
    with pytest.raises(ConfigError, match="rootfs .* does not exist"):
        plan_rootfs(cfg, str(tmp_path), rootless=False)


def test_relative_root_path_is_resolved_against_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    plan = plan_rootfs(default_config(), str(tmp_path), rootless=False)
    assert plan.rootfs == str(tmp_path / "rootfs")


@pytest.mark.parametrize("mount, message", [
    ({"destination": "/x", "type": "tmpfs", "source": "t", "options": ["idmap"],
      "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
      "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}, "only supported for bind"),
    ({"destination": "/x", "source": "/tmp", "options": ["bind", "idmap"]}, "or a user namespace"),
    ({"destination": "/x", "source": "/tmp", "options": ["bind", "idmap"],
      "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}, "must be given together"),
    ({"destination": "/proc/self", "type": "tmpfs", "source": "t"}, "inside /proc"),
    ({"destination": "/x", "source": "x"}, "type is required"),
])
def test_bad_mounts_are_config_errors(tmp_path: Path, mount: dict, message: str) -> None:
    (tmp_path / "rootfs").mkdir()
    cfg = copy.deepcopy(default_config())
    cfg["mounts"].append(mount)
    with pytest.raises(ConfigError, match=message):
        plan_rootfs(cfg, str(tmp_path), rootless=False)


def test_relative_bind_source_is_relative_to_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    cfg = default_config()
    cfg["mounts"].append({"destination": "/data", "source": "volumes/data", "options": ["rbind"]})
    plan = plan_rootfs(cfg, str(tmp_path), rootless=False)
    assert plan.mounts[-1].source == str(tmp_path / "volumes" / "data")


def test_idmap_without_mappings_uses_the_user_namespace_maps(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    cfg = default_config(rootless=True, uid=1000, gid=1000)
    cfg["mounts"].append({"destination": "/data", "source": "/srv", "options": ["rbind", "ridmap"]})
    mount = plan_rootfs(cfg, str(tmp_path), rootless=True).mounts[-1]
    assert mount.uid_map == [(0, 1000, 1)] and mount.gid_map == [(0, 1000, 1)]
    assert mount.idmap_recursive


def test_rootless_plan_drops_unmapped_devpts_gid(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    cfg = default_config()
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    plan = plan_rootfs(cfg, str(tmp_path), rootless=True)
    devpts = next(m for m in plan.mounts if m.fstype == "devpts")
    assert "gid=5" not in devpts.data and "mode=0620" in devpts.data
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    plan = plan_rootfs(cfg, str(tmp_path), rootless=True)
    assert "gid=5" in next(m for m in plan.mounts if m.fstype == "devpts").data


# ---- a user namespace under real root, and locked flags ----

USERNS_BASE = 100000
USERNS_MAPS = (f"0 {USERNS_BASE} 65536\n", f"0 {USERNS_BASE} 65536\n")


def userns_config(**kwargs) -> dict:
    cfg = config(**kwargs)
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": USERNS_BASE, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": USERNS_BASE, "size": 65536}]
    return cfg


@needs_root
def test_default_config_in_a_user_namespace_as_root(bundle) -> None:
    h.chown_tree(bundle / "rootfs", USERNS_BASE, USERNS_BASE)
    result = ok(h.run_rootfs(userns_config(), bundle, default_checks, userns_maps=USERNS_MAPS))
    assert result["fstypes"]["/dev/null"] == "devtmpfs"  # bound: mknod is refused in a user namespace
    # gid 5 is mapped by the 65536-wide map, so it is kept (devpts shows it as the host's gid)
    assert f"gid={USERNS_BASE + 5}" in result["super"]["/dev/pts"]
    assert result["root_write"] == "EROFS" and result["proc_sys_write"] == "EROFS"
    assert result["masked_file"] == ""


@needs_root
def test_idmapped_mount_prepared_by_the_parent_for_a_user_namespace(bundle) -> None:
    h.chown_tree(bundle / "rootfs", USERNS_BASE, USERNS_BASE)
    source = bundle / "shared-data"
    source.mkdir()
    (source / "file").write_text("x")  # owned by the host's root
    mappings = [{"containerID": 0, "hostID": USERNS_BASE, "size": 65536}]
    cfg = userns_config(mounts=[
        {"destination": "/idmapped", "type": "bind", "source": str(source), "options": ["bind", "idmap"],
         "uidMappings": mappings, "gidMappings": mappings},
        {"destination": "/plain", "type": "bind", "source": str(source), "options": ["bind"]},
    ])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "idmapped": h.describe("/idmapped/file"), "plain": h.describe("/plain/file")},
        userns_maps=USERNS_MAPS, parent_sources=True))
    assert result["idmapped"]["uid"] == 0  # host root's file shows as the container's root
    assert result["plain"]["uid"] == 65534  # unmapped without the idmapping


@needs_root
def test_rootless_ro_bind_keeps_locked_flags(bundle) -> None:
    rootless_bundle(bundle)
    locked = bundle / "locked-src"
    locked.mkdir()

    def pre_mounts() -> None:
        syscalls.mount("tmpfs", str(locked), "tmpfs",
                       syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC, "mode=777")

    ro = config(rootless=True, mounts=[
        {"destination": "/locked-ro", "type": "bind", "source": str(locked), "options": ["bind", "ro"]}])
    result = ok(h.run_rootfs(ro, bundle, lambda: {"opts": h.mount_at("/locked-ro")["options"],
                                                   "write": h.try_write("/locked-ro/f")},
                             rootless=True, pre_mounts=pre_mounts))
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(result["opts"])
    assert result["write"] == "EROFS"
    # Clearing a locked flag is what the kernel refuses in a user namespace; the error says where.
    suid = config(rootless=True, mounts=[
        {"destination": "/locked-suid", "type": "bind", "source": str(locked), "options": ["bind", "suid"]}])
    result = h.run_rootfs(suid, bundle, lambda: {}, rootless=True, pre_mounts=pre_mounts)
    assert result.error is not None
    assert f"mount {locked} on /locked-suid: set mount attributes: operation not permitted" in result.error


@needs_root
@pytest.mark.parametrize("propagation, tag", [("shared", "shared:"), ("rslave", None), ("private", None)])
def test_rootfs_propagation_values(bundle, propagation: str, tag: str | None) -> None:
    result = ok(h.run_rootfs(config(rootfsPropagation=propagation), bundle,
                             lambda: {"root": h.mount_at("/")["optional"], "proc": h.mount_at("/proc")["fstype"]}))
    assert result["proc"] == "proc"
    if tag:
        assert any(t.startswith(tag) for t in result["root"])
    else:
        assert not any(t.startswith("shared:") for t in result["root"])


@needs_root
def test_cgroup_v1_without_cgroupns_binds_the_containers_own_cgroups(bundle) -> None:
    import uuid

    name = f"ocirt-test-rootfs-{uuid.uuid4().hex[:8]}"
    own = {controller: Path(f"/sys/fs/cgroup/{controller}/{name}") for controller in ("pids", "memory")}
    for directory in own.values():
        directory.mkdir()
        (directory / "marker").mkdir()  # a child cgroup, to recognise the directory inside
    try:
        cfg = config()
        cfg["linux"]["namespaces"] = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] != "cgroup"]
        result = ok(h.run_rootfs(cfg, bundle, lambda: {
            "pids": sorted(os.listdir("/sys/fs/cgroup/pids")),
            "memory_marker": os.path.isdir("/sys/fs/cgroup/memory/marker"),
            "fstype": h.mount_at("/sys/fs/cgroup/pids")["fstype"],
            "options": h.mount_at("/sys/fs/cgroup/pids")["options"],
            "root": h.mount_at("/sys/fs/cgroup/pids")["root"],
            "tmpfs": h.mount_at("/sys/fs/cgroup")["options"],
            "write": h.try_write("/sys/fs/cgroup/pids/pids.max", "5"),
        }, plan_kwargs={"cgroup_paths": {c: str(d) for c, d in own.items()}}))
    finally:
        for directory in own.values():
            (directory / "marker").rmdir()
            directory.rmdir()
    assert "marker" in result["pids"] and result["memory_marker"]
    assert result["fstype"] == "cgroup" and result["root"] == f"/{name}"
    assert "ro" in result["options"] and "ro" in result["tmpfs"]
    assert result["write"] == "EROFS"


@needs_root
def test_tmpfs_without_mode_keeps_an_existing_directorys_mode(bundle) -> None:
    os.chmod(bundle / "rootfs" / "tmp", 0o1777)
    os.makedirs(bundle / "rootfs" / "private", mode=0o700)
    os.chmod(bundle / "rootfs" / "private", 0o700)
    cfg = config(mounts=[{"destination": d, "type": "tmpfs", "source": "tmpfs"}
                         for d in ("/tmp", "/private", "/fresh")])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {d: h.describe(d)["mode"]
                                                   for d in ("/tmp", "/private", "/fresh")}))
    assert result == {"/tmp": 0o1777, "/private": 0o700, "/fresh": 0o1777}


@needs_root
@pytest.mark.parametrize("rootless", [False, True])
def test_cgroup2_mount_fresh_or_bound(bundle, rootless: bool) -> None:
    import uuid

    if rootless:
        rootless_bundle(bundle)
    own = Path(f"/sys/fs/cgroup/unified/ocirt-test-rootfs-{uuid.uuid4().hex[:8]}")
    own.mkdir()
    try:
        cfg = config(rootless=rootless, mounts=[{"destination": "/cg2", "type": "cgroup2", "source": "cgroup2",
                                                  "options": ["nosuid", "nodev", "noexec", "ro"]}])
        if rootless:
            # no cgroup namespace of its own: the kernel refuses a fresh cgroup2 to the user namespace
            cfg["linux"]["namespaces"] = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] != "cgroup"]
        result = ok(h.run_rootfs(cfg, bundle, lambda: {"mount": h.mount_at("/cg2"),
                                                       "procs": os.path.exists("/cg2/cgroup.procs")},
                                 rootless=rootless, plan_kwargs={"cgroup_paths": {"unified": str(own)}}))
    finally:
        own.rmdir()
    assert result["mount"]["fstype"] == "cgroup2" and result["procs"]
    assert "ro" in result["mount"]["options"]
    # fresh in the container's cgroup namespace, or (fallback) a bind of the container's own directory
    assert result["mount"]["root"] == (f"/{own.name}" if rootless else "/")


@needs_root
@pytest.mark.parametrize("rootless", [False, True])
def test_tmpcopyup_fills_the_tmpfs_with_what_it_covers(bundle, rootless: bool) -> None:
    canary = bundle / "host-canary"
    canary.mkdir()
    etc = bundle / "rootfs" / "etc"
    (etc / "sub").mkdir()
    (etc / "sub" / "deep").write_text("deep\n")
    os.chmod(etc / "sub" / "deep", 0o640)
    (etc / "link-out").symlink_to(str(canary))  # copied as a link, never followed
    if rootless:
        rootless_bundle(bundle)
    cfg = config(rootless=rootless, mounts=[{"destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                                              "options": ["tmpcopyup", "ro", "nosuid"]}])
    result = ok(h.run_rootfs(cfg, bundle, lambda: {
        "fs": h.mount_at("/etc")["fstype"], "opts": h.mount_at("/etc")["options"],
        "passwd": open("/etc/passwd").read().splitlines()[0], "deep": open("/etc/sub/deep").read(),
        "deep_mode": h.describe("/etc/sub/deep")["mode"], "link": h.describe("/etc/link-out"),
        "write": h.try_write("/etc/new")}, rootless=rootless))
    assert result["fs"] == "tmpfs" and "ro" in result["opts"]
    assert result["passwd"].startswith("root:x:0:0") and result["deep"] == "deep\n"
    assert result["deep_mode"] == 0o640
    assert result["link"]["link"] == str(canary)
    assert result["write"] == "EROFS"
    assert os.listdir(canary) == []
