"""The order, flags and targets of the rootfs steps, through a recording Kernel: no root, no namespaces.

prepare_rootfs, enter_rootfs and finish_rootfs run for real on a scratch rootfs (paths are resolved and made
in it); every mount, attribute, device node and owner they ask for is recorded by ``fake_kernel``.
The real-kernel tests of the same steps are tests/linux/test_rootfs.py and tests/integration/test_mounts.py.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocirt import syscalls as sc
from ocirt.linux import rootfs
from ocirt.spec.default import default_config

from .fake_kernel import RecordingKernel

RO, NOSUID, NODEV, NOEXEC = sc.MOUNT_ATTR_RDONLY, sc.MOUNT_ATTR_NOSUID, sc.MOUNT_ATTR_NODEV, sc.MOUNT_ATTR_NOEXEC


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for directory in ("proc", "sys", "dev", "tmp", "etc", "mnt"):
        (root / directory).mkdir(parents=True)
    (root / "proc" / "kcore").touch()  # stand-ins for what the masks cover
    (root / "proc" / "acpi").mkdir()
    (root / "proc" / "sys").mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


def config(**linux) -> dict:
    cfg = default_config(args=["true"], terminal=False)
    cfg["root"] = {"path": "rootfs", "readonly": False}
    cfg["mounts"] = [m for m in cfg["mounts"] if m["type"] not in ("cgroup", "sysfs")]  # the host's differ
    cfg["linux"]["maskedPaths"] = ["/proc/kcore", "/proc/acpi", "/proc/missing"]
    cfg["linux"]["readonlyPaths"] = ["/proc/sys"]
    cfg["linux"].update(linux)
    return cfg


def run_steps(cfg: dict, bundle: Path, **plan_kwargs) -> RecordingKernel:
    plan = rootfs.plan_rootfs(cfg, str(bundle), rootless=False, **plan_kwargs)
    kernel = RecordingKernel(bundle / "rootfs")
    rootfs.open_mount_sources(plan, kernel)
    rootfs.prepare_rootfs(plan, kernel=kernel)
    kernel.calls.append(kernel_marker("prepared"))
    rootfs.enter_rootfs(plan, kernel=kernel)
    rootfs.finish_rootfs(plan, kernel=kernel)
    return kernel


def kernel_marker(name: str):
    from .fake_kernel import Call

    return Call("--", (name,))


def attaches(kernel: RecordingKernel) -> list[tuple[str, str]]:
    """(what, where) of every attach, the tree shown by the filesystem it was made as."""
    return [(call.args[0].split("#")[0], call.args[1]) for call in kernel.named("attach")]


def test_default_mounts_in_config_order_then_devices_then_pivot_then_masks(bundle):
    kernel = run_steps(config(), bundle)
    assert attaches(kernel)[:6] == [
        ("/", "/"), ("proc", "/proc"), ("tmpfs", "/dev"), ("devpts", "/dev/pts"), ("tmpfs", "/dev/shm"),
        ("mqueue", "/dev/mqueue")]
    names = [call.name for call in kernel.calls]
    # the host's / becomes a recursive slave before anything is mounted
    assert kernel.named("mount")[0].args == (None, "/", None, sc.MS_SLAVE | sc.MS_REC)
    assert names.index("mount") < names.index("attach")
    assert names.index("pivot_root") > max(i for i, name in enumerate(names) if name == "mknod")
    after_pivot = kernel.calls[names.index("pivot_root"):]
    assert [c.args[1] for c in after_pivot if c.name == "attach"] == ["/proc/kcore", "/proc/acpi", "/proc/sys"]


def test_fresh_filesystems_get_their_options_and_attributes(bundle):
    kernel = run_steps(config(), bundle)
    tmpfs_options = [c.args[1:] for c in kernel.named("fsconfig") if c.args[0] == "tmpfs"][:4]
    assert tmpfs_options == [("source", "tmpfs"), ("mode", "755"), ("size", "65536k"), ("source", "shm")]
    devpts = [c.args[1:] for c in kernel.named("fsconfig") if c.args[0] == "devpts"]
    assert ("newinstance", None) in devpts and ("ptmxmode", "0666") in devpts and ("gid", "5") in devpts
    fsmounts = {c.args[0].split("#")[0]: c.args[1] for c in kernel.named("fsmount")}
    assert fsmounts["devpts"] == NOSUID | NOEXEC
    assert fsmounts["mqueue"] == NOSUID | NODEV | NOEXEC


def test_devices_are_made_by_fd_with_their_mode_and_owner(bundle):
    cfg = config(devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600,
                           "uid": 1000, "gid": 100}])
    kernel = run_steps(cfg, bundle)
    made = {c.args[0]: c.args[1:] for c in kernel.named("mknod")}
    assert made["/dev/null"] == ("c", 1, 3, 0o666)
    assert made["/dev/tty"] == ("c", 5, 0, 0o666)
    assert made["/dev/fuse"] == ("c", 10, 229, 0o600)
    owners = {c.args[0]: c.args[1:] for c in kernel.named("chown")}
    assert owners["/dev/fuse"] == (1000, 100) and owners["/dev/null"] == (0, 0)
    assert set(made) == set(owners)
    dev = bundle / "rootfs" / "dev"
    assert os.readlink(dev / "ptmx") == "pts/ptmx" and os.readlink(dev / "fd") == "/proc/self/fd"


def test_in_a_user_namespace_the_hosts_nodes_are_bound(bundle):
    cfg = config()
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    kernel = run_steps(cfg, bundle)
    assert kernel.named("mknod") == [] and kernel.named("chown") == []
    bound = dict((target, what) for what, target in attaches(kernel))
    assert bound["/dev/null"] == "clone:host:/dev/null" and bound["/dev/urandom"] == "clone:host:/dev/urandom"
    assert stat.S_ISREG((bundle / "rootfs" / "dev" / "null").lstat().st_mode)  # the file the node covers


def test_read_only_dev_and_tmpfs_wait_for_finish(bundle):
    cfg = config()
    for mount in cfg["mounts"]:
        if mount["destination"] == "/dev":
            mount["options"].append("ro")
    cfg["mounts"] += [{"destination": "/mnt/t", "type": "tmpfs", "source": "tmpfs", "options": ["ro"]},
                      {"destination": "/mnt/t/sub", "type": "tmpfs", "source": "tmpfs"}]
    kernel = run_steps(cfg, bundle)
    trees = {c.args[1]: c.args[0] for c in kernel.named("attach")}
    fsmount_attrs = {c.args[0]: c.args[1] for c in kernel.named("fsmount")}
    assert not fsmount_attrs[trees["/dev"]] & RO and not fsmount_attrs[trees["/mnt/t"]] & RO
    names = [call.name for call in kernel.calls]
    later = [c for c in kernel.calls[names.index("pivot_root"):] if c.name == "set_attrs" and c.args[1] == RO]
    assert [c.args[0] for c in later[:2]] == [trees["/dev"], trees["/mnt/t"]]


def test_read_only_bind_is_read_only_at_once(bundle, tmp_path):
    source = tmp_path / "volume"
    source.mkdir()
    cfg = config()
    cfg["mounts"].append({"destination": "/mnt/v", "type": "bind", "source": str(source), "options": ["bind", "ro"]})
    kernel = run_steps(cfg, bundle)
    names = [call.name for call in kernel.calls]
    clone = names.index("clone_path")
    assert kernel.calls[clone + 1].name == "set_attrs" and kernel.calls[clone + 1].args[1] == RO
    assert kernel.calls[clone + 2].name == "attach" and kernel.calls[clone + 2].args[1] == "/mnt/v"


def test_tmpfs_over_an_existing_directory_takes_its_mode(bundle):
    (bundle / "rootfs" / "mnt" / "e").mkdir()
    os.chmod(bundle / "rootfs" / "mnt" / "e", 0o710)
    cfg = config()
    cfg["mounts"] += [{"destination": "/mnt/e", "type": "tmpfs", "source": "tmpfs"},
                      {"destination": "/mnt/o", "type": "tmpfs", "source": "tmpfs", "options": ["mode=0410"]}]
    kernel = run_steps(cfg, bundle)
    modes = [c.args[2] for c in kernel.named("fsconfig") if c.args[:2] == ("tmpfs", "mode")]
    assert modes[-2:] == ["710", "0410"]


def test_masks_and_read_only_paths(bundle):
    kernel = run_steps(config(), bundle)
    names = [call.name for call in kernel.calls]
    after = kernel.calls[names.index("pivot_root"):]
    attached = {c.args[1]: c.args[0] for c in after if c.name == "attach"}
    assert attached["/proc/kcore"].startswith("clone:clone:host:/dev/null")  # the host's null, cloned before
    assert attached["/proc/acpi"].startswith("tmpfs")  # a directory: an empty read-only tmpfs
    assert "/proc/missing" not in attached
    ro_tmpfs = [c.args[1] for c in kernel.named("fsmount") if c.args[0] == attached["/proc/acpi"]]
    assert ro_tmpfs == [RO | NOSUID | NODEV | NOEXEC]
    readonly = [c.args for c in after if c.name == "set_attrs" and c.args[0] == attached["/proc/sys"]]
    assert readonly == [(attached["/proc/sys"], RO, 0, 0, True)]


def test_rootfs_propagation_and_readonly_root_come_last(bundle):
    cfg = config(rootfsPropagation="rshared")
    cfg["root"]["readonly"] = True
    kernel = run_steps(cfg, bundle)
    assert kernel.named("mount")[0].args == (None, "/", None, sc.MS_SHARED | sc.MS_REC)
    last = kernel.calls[-2:]
    assert [c.name for c in last] == ["set_attrs", "set_attrs"]
    assert last[0].args == ("/", RO, 0, 0, False)
    assert last[1].args == ("/", 0, 0, sc.MS_SHARED, True)


def test_a_user_namespaced_bind_of_a_source_the_mapped_root_cannot_search_is_opened_first(bundle, tmp_path):
    hidden = tmp_path / "hidden"
    (hidden / "data").mkdir(parents=True)
    os.chmod(hidden, 0o700)
    later = bundle / "rootfs" / "mnt" / "made-by-an-earlier-mount"
    cfg = config()
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = cfg["linux"]["gidMappings"] = [
        {"containerID": 0, "hostID": 200000, "size": 65536}]
    cfg["mounts"] += [{"destination": "/a", "type": "bind", "source": str(hidden / "data"), "options": ["bind"]},
                      {"destination": "/b", "type": "bind", "source": str(later), "options": ["bind"]}]
    plan = rootfs.plan_rootfs(cfg, str(bundle), rootless=False)
    kernel = RecordingKernel(bundle / "rootfs")
    if os.geteuid() != 0:
        pytest.skip("the parent opens sources only as root")
    rootfs.open_mount_sources(plan, kernel)
    assert [c.args[0] for c in kernel.named("clone_path")] == [str(hidden / "data")]
    rootfs.close_mount_sources(plan)


def test_nothing_is_made_removed_or_reowned_in_the_hosts_dev(bundle):
    """The scratch rootfs's /dev stands for the host's /dev here (as a bind of it would be)."""
    from ocirt.linux import devices

    dev = bundle / "rootfs" / "dev"
    os.symlink("/nowhere", dev / "stdin")
    host = devices.HostDevices(str(dev))
    kernel = RecordingKernel(bundle / "rootfs")
    root = os.open(bundle / "rootfs", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for make in (lambda: devices.create_devices(kernel, root, list(devices.DEFAULT_DEVICES), bind=False,
                                                    host=host),
                     lambda: devices.create_devices(kernel, root, list(devices.DEFAULT_DEVICES), bind=True,
                                                    host=host),
                     lambda: devices.create_dev_symlinks(root, kcore=False, host=host),
                     lambda: devices.bind_console(kernel, root, "/dev/null", host)):
            with pytest.raises(devices.DeviceError, match="the host's /dev"):
                make()
    finally:
        os.close(root)
    assert kernel.calls == []
    assert sorted(os.listdir(dev)) == ["stdin"] and os.readlink(dev / "stdin") == "/nowhere"
