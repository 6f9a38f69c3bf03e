"""Device nodes and the fixed entries of a container's /dev.

Without a user namespace the nodes are made with ``mknod``. In a user namespace the kernel refuses
``mknod`` (EPERM), so the host's node is bind-mounted onto an empty file instead, after checking that the
host node really is the device the config names. Every entry is created through a dirfd of its parent
inside the rootfs (see ``paths``), so a symlink planted in the image can't aim a node at the host; an
owner is set through an fd of the node just made, never through a name. A directory inside the rootfs
can still be the host's /dev itself (a bind of it, a devtmpfs): ``HostDevices`` recognises it, and
nothing is made, removed or changed there.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls
from ocirt.errors import ConfigError, OcirtError, annotated, why
from ocirt.linux import paths
from ocirt.linux.kernel import Kernel, bind


class DeviceError(OcirtError):
    pass


class HostDevices:
    """The host's /dev, as the init sees it before its first mount.

    A bind of the host's /dev, or a devtmpfs (the kernel's one instance, the host's nodes), shows that
    same directory inside the rootfs; every entry made, removed or re-owned below is the host's.
    """

    __slots__ = ("filesystems", "directories")

    def __init__(self, dev: str = "/dev") -> None:
        self.filesystems: set[int] = set()
        self.directories: set[tuple[int, int]] = set()
        try:
            st = os.stat(dev)
            root = os.stat("/")
        except OSError:
            return
        self.directories.add((st.st_dev, st.st_ino))
        if st.st_dev != root.st_dev:
            self.filesystems.add(st.st_dev)  # a filesystem of its own: all of it is the host's /dev

    def add_filesystem(self, fd: int) -> None:
        """Count the filesystem of ``fd`` (a devtmpfs the config mounts) as the host's /dev too."""
        self.filesystems.add(os.fstat(fd).st_dev)

    def is_host_dev(self, dir_fd: int) -> bool:
        st = os.fstat(dir_fd)
        return st.st_dev in self.filesystems or (st.st_dev, st.st_ino) in self.directories

    def refuse(self, dir_fd: int, what: str) -> None:
        if self.is_host_dev(dir_fd):
            raise DeviceError(f"{what}: its directory is the host's /dev (a bind of it or a devtmpfs): "
                              "the host's device nodes are never changed")


class DevicePlan:
    __slots__ = ("path", "kind", "major", "minor", "file_mode", "uid", "gid")

    def __init__(self, path: str, kind: str, major: int, minor: int, file_mode: int, uid: int, gid: int):
        self.path = path
        self.kind = kind  # "c", "u", "b" or "p", as in config.json
        self.major = major
        self.minor = minor
        self.file_mode = file_mode
        self.uid = uid
        self.gid = gid

    def __repr__(self) -> str:
        return (f"DevicePlan({self.path!r}, {self.kind!r}, {self.major}, {self.minor}, {self.file_mode:o}, "
                f"{self.uid}, {self.gid})")

    @property
    def type_bits(self) -> int:
        return {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[self.kind]


DEFAULT_DEVICES = tuple(
    DevicePlan(f"/dev/{name}", "c", major, minor, 0o666, 0, 0)
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                               ("urandom", 1, 9), ("tty", 5, 0))
)

DEV_SYMLINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"))


def plan_devices(config: dict) -> list[DevicePlan]:
    """The default devices plus ``linux.devices``; an entry of the config replaces a default at its path."""
    planned: dict[str, DevicePlan] = {dev.path: dev for dev in DEFAULT_DEVICES}
    for entry in (config.get("linux") or {}).get("devices") or []:
        try:
            kind = entry["type"]
            path = entry["path"]
        except KeyError as missing:
            raise ConfigError(f"linux.devices entry without {missing.args[0]!r}") from None
        if kind not in ("c", "u", "b", "p"):
            raise ConfigError(f"linux.devices {path}: unknown type {kind!r}")
        if not path.startswith("/"):
            raise ConfigError(f"linux.devices {path}: path must be absolute")
        if kind != "p" and ("major" not in entry or "minor" not in entry):
            raise ConfigError(f"linux.devices {path}: type {kind} needs major and minor")
        if paths.clean(path) in ("/dev/ptmx", "/dev/console"):
            continue  # these two are set up by the runtime, whatever the config says
        mode = entry.get("fileMode")
        major, minor = int(entry.get("major", 0)), int(entry.get("minor", 0))
        # mknod's dev_t holds 12 bits of major and 20 of minor: larger numbers would wrap to another device.
        if not (0 <= major <= 0xFFF and 0 <= minor <= 0xFFFFF):
            raise ConfigError(f"linux.devices {path}: {major}:{minor} is not a device number (major 0-4095, "
                              f"minor 0-1048575)")
        uid, gid = int(entry.get("uid", 0)), int(entry.get("gid", 0))
        if not (0 <= uid <= 0xFFFFFFFE and 0 <= gid <= 0xFFFFFFFE):
            raise ConfigError(f"linux.devices {path}: uid {uid} or gid {gid} is out of range")
        planned[paths.clean(path)] = DevicePlan(
            paths.clean(path), kind, major, minor, 0o666 if mode is None else int(mode) & 0o7777, uid, gid)
    return list(planned.values())


def create_devices(kernel: Kernel, root_fd: int, devices: list[DevicePlan], *, bind: bool,
                   host: HostDevices) -> None:
    old_umask = os.umask(0)
    try:
        for dev in devices:
            with annotated("mount" if bind else "mknod", dev.path):
                parent, name = paths.open_parent(root_fd, dev.path)
                try:
                    if bind:
                        _bind_host_node(kernel, parent, name, dev, host)
                    else:
                        _make_node(kernel, parent, name, dev, host)
                finally:
                    os.close(parent)
    finally:
        os.umask(old_umask)


def _make_node(kernel: Kernel, parent: int, name: str, dev: DevicePlan, host: HostDevices) -> None:
    what = f"create device {dev.path}"
    host.refuse(parent, what)
    rdev = os.makedev(dev.major, dev.minor)
    try:
        try:
            node = kernel.mknod(parent, name, dev.type_bits | dev.file_mode, rdev)
        except FileExistsError:
            # Something is already there (the image ships nodes, or a config mount put one there). A node
            # of the right kind is left as it is, owner included; anything else but a directory is
            # replaced. Nothing is followed.
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_IFMT(existing.st_mode) == dev.type_bits and dev.kind != "p" and existing.st_rdev == rdev:
                return
            if stat.S_ISDIR(existing.st_mode):
                raise DeviceError(f"{what}: a directory is in the way") from None
            os.unlink(name, dir_fd=parent)
            node = kernel.mknod(parent, name, dev.type_bits | dev.file_mode, rdev)
        try:
            kernel.chown(node, dev.uid, dev.gid)
        finally:
            os.close(node)
    except OSError as err:
        raise DeviceError(f"{what}: {why(err)}") from None


def _bind_host_node(kernel: Kernel, parent: int, name: str, dev: DevicePlan, host: HostDevices) -> None:
    what = f"bind device {dev.path} from the host"
    host.refuse(parent, what)
    try:
        host_fd = os.open(dev.path, syscalls.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise DeviceError(f"{what}: {why(err)}") from None
    try:
        node = os.fstat(host_fd)
        if stat.S_IFMT(node.st_mode) != dev.type_bits or (
                dev.kind != "p" and node.st_rdev != os.makedev(dev.major, dev.minor)):
            raise DeviceError(f"bind device {dev.path}: the host's node is not {dev.kind} "
                              f"{dev.major}:{dev.minor}")
        _bind_and_close(kernel, host_fd, _mount_target(parent, name, 0o000, f"bind device {dev.path}"), what)
    finally:
        os.close(host_fd)


def _bind_and_close(kernel: Kernel, source: int, target: int, what: str) -> None:
    """Bind ``source`` (a node, a pty slave) onto ``target``, which is closed whatever happens."""
    try:
        bind(kernel, source, target)
    except OSError as err:
        raise DeviceError(f"{what}: {why(err)}") from None
    finally:
        os.close(target)


def _mount_target(dir_fd: int, name: str, mode: int, what: str) -> int:
    """An ``O_PATH`` fd of the file ``name`` in ``dir_fd`` to mount a node on, made empty when missing.

    A symlink there (an image's ``/dev/null -> elsewhere``) is removed, not followed: the mount would
    land on its target and leave the name a link.
    """
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    except OSError as err:
        raise DeviceError(f"{what}: {why(err)}") from None
    try:
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise DeviceError(f"{what}: a directory is in the way")
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            existing = None
        if existing is None:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd)
            os.close(fd)
        return paths.open_beneath(dir_fd, name)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DeviceError(f"{what}: it became a symlink") from None
        raise DeviceError(f"{what}: {why(err)}") from None


def create_dev_symlinks(root_fd: int, *, kcore: bool, host: HostDevices) -> None:
    """/dev/fd, stdin, stdout, stderr (and /dev/core when the kernel has /proc/kcore), then /dev/ptmx."""
    dev_fd = paths.mkdir_all(root_fd, "/dev")
    try:
        host.refuse(dev_fd, "symlink /dev/ptmx")
        links = list(DEV_SYMLINKS) + ([("core", "/proc/kcore")] if kcore else [])
        for name, target in links:
            try:
                os.symlink(target, name, dir_fd=dev_fd)
            except FileExistsError:
                pass
            except OSError as err:
                raise DeviceError(f"symlink /dev/{name}: {why(err)}") from None
        # /dev/ptmx must lead to this container's devpts instance, whatever was there.
        try:
            existing = os.stat("ptmx", dir_fd=dev_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        try:
            if existing is not None:
                if stat.S_ISLNK(existing.st_mode) and os.readlink("ptmx", dir_fd=dev_fd) == "pts/ptmx":
                    return
                if stat.S_ISDIR(existing.st_mode):
                    raise DeviceError("symlink /dev/ptmx: a directory is in the way")
                os.unlink("ptmx", dir_fd=dev_fd)
            os.symlink("pts/ptmx", "ptmx", dir_fd=dev_fd)
        except OSError as err:
            raise DeviceError(f"symlink /dev/ptmx: {why(err)}") from None
    finally:
        os.close(dev_fd)


def bind_console(kernel: Kernel, root_fd: int, console: str | int, host: HostDevices) -> None:
    """Bind the pty slave ``console`` onto /dev/console inside the rootfs.

    ``console`` is an open fd of the slave (best: nothing can swap it), ``/proc/self/fd/<n>``, or a host
    path of the runtime's choosing. With the host's /dev bound on /dev, the host's /dev/console is covered
    in the container's mount namespace, and nothing there is made or removed.
    """
    if isinstance(console, str) and console.startswith("/proc/self/fd/") and console[14:].isdigit():
        console = int(console[14:])
    console_path = f"fd {console}" if isinstance(console, int) else console
    try:
        if isinstance(console, int):
            source = os.dup(console)
        else:
            source = os.open(console, syscalls.O_PATH | os.O_CLOEXEC)
    except OSError as err:
        raise DeviceError(f"bind console {console_path}: {why(err)}") from None
    try:
        if not stat.S_ISCHR(os.fstat(source).st_mode):
            raise DeviceError(f"bind console {console_path}: not a character device")
        dev_fd = paths.mkdir_all(root_fd, "/dev")
        try:
            target = _console_target(dev_fd, host)
        finally:
            os.close(dev_fd)
        _bind_and_close(kernel, source, target, "bind console on /dev/console")
    finally:
        os.close(source)


def _console_target(dev_fd: int, host: HostDevices) -> int:
    if host.is_host_dev(dev_fd):
        try:
            existing = os.stat("console", dir_fd=dev_fd, follow_symlinks=False)
        except OSError:
            existing = None
        if existing is None or not (stat.S_ISCHR(existing.st_mode) or stat.S_ISREG(existing.st_mode)):
            host.refuse(dev_fd, "bind console on /dev/console")
        try:
            return paths.open_beneath(dev_fd, "console")
        except OSError as err:
            raise DeviceError(f"bind console: /dev/console: {why(err)}") from None
    return _mount_target(dev_fd, "console", 0o600, "bind console: /dev/console")

