"""Device nodes and the fixed entries of a container's /dev.

Without a user namespace the nodes are made with ``mknod``. In a user namespace the kernel refuses
``mknod`` (EPERM), so the host's node is bind-mounted onto an empty file instead, after checking that the
host node really is the device the config names. Every entry is created through a dirfd of its parent
inside the rootfs (see ``paths``), so a symlink planted in the image can't aim a node at the host.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls
from ocirt.errors import ConfigError, OcirtError, why
from ocirt.linux import paths


class DeviceError(OcirtError):
    pass


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


def create_devices(root_fd: int, devices: list[DevicePlan], *, bind: bool) -> None:
    old_umask = os.umask(0)
    try:
        for dev in devices:
            if bind:
                _bind_host_node(root_fd, dev)
            else:
                _make_node(root_fd, dev)
    finally:
        os.umask(old_umask)


def _make_node(root_fd: int, dev: DevicePlan) -> None:
    parent, name = paths.open_parent(root_fd, dev.path)
    try:
        try:
            os.mknod(name, dev.type_bits | dev.file_mode, os.makedev(dev.major, dev.minor), dir_fd=parent)
        except FileExistsError:
            # Something is already there (a bind-mounted /dev, or the image ships nodes). Replace it only
            # when it is not what we want; never follow it.
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if (stat.S_IFMT(existing.st_mode) == dev.type_bits and dev.kind != "p"
                    and existing.st_rdev == os.makedev(dev.major, dev.minor)):
                return
            if stat.S_ISDIR(existing.st_mode):
                raise DeviceError(f"create device {dev.path}: a directory is in the way") from None
            os.unlink(name, dir_fd=parent)
            os.mknod(name, dev.type_bits | dev.file_mode, os.makedev(dev.major, dev.minor), dir_fd=parent)
        os.chown(name, dev.uid, dev.gid, dir_fd=parent, follow_symlinks=False)
    except OSError as err:
        raise DeviceError(f"create device {dev.path}: {why(err)}") from None
    finally:
        os.close(parent)


def _bind_host_node(root_fd: int, dev: DevicePlan) -> None:
    try:
        host_fd = os.open(dev.path, syscalls.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise DeviceError(f"bind device {dev.path} from the host: {why(err)}") from None
    try:
        host = os.fstat(host_fd)
        if stat.S_IFMT(host.st_mode) != dev.type_bits or (
                dev.kind != "p" and host.st_rdev != os.makedev(dev.major, dev.minor)):
            raise DeviceError(f"bind device {dev.path}: the host's node is not {dev.kind} "
                              f"{dev.major}:{dev.minor}")
        _unlink_symlink(root_fd, dev.path)
        target = paths.create_file(root_fd, dev.path, 0o000)
        try:
            target_st = os.fstat(target)
            if stat.S_ISDIR(target_st.st_mode):
                raise DeviceError(f"bind device {dev.path}: a directory is in the way")
            tree = paths.clone_tree(host_fd, recursive=False)
            try:
                paths.attach(tree, target)
            finally:
                os.close(tree)
        finally:
            os.close(target)
    except OSError as err:
        raise DeviceError(f"bind device {dev.path} from the host: {why(err)}") from None
    finally:
        os.close(host_fd)


def _unlink_symlink(root_fd: int, path: str) -> None:
    """An image's ``/dev/null -> elsewhere`` would make the bind land on the link's target (and leave
    /dev/null a link), as mknod's path never does: the node's own name is never followed."""
    parent, name = paths.open_parent(root_fd, path)
    try:
        if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def create_dev_symlinks(root_fd: int, *, kcore: bool) -> None:
    """/dev/fd, stdin, stdout, stderr (and /dev/core when the kernel has /proc/kcore), then /dev/ptmx."""
    dev_fd = paths.mkdir_all(root_fd, "/dev")
    try:
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


def bind_console(root_fd: int, console: str | int) -> None:
    """Bind the pty slave ``console`` onto /dev/console inside the rootfs.

    ``console`` is an open fd of the slave (best: nothing can swap it), ``/proc/self/fd/<n>``, or a host
    path of the runtime's choosing.
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
            target = _console_target(dev_fd)
        finally:
            os.close(dev_fd)
        try:
            tree = paths.clone_tree(source, recursive=False)
            try:
                paths.attach(tree, target)
            finally:
                os.close(tree)
        except OSError as err:
            raise DeviceError(f"bind console on /dev/console: {why(err)}") from None
        finally:
            os.close(target)
    finally:
        os.close(source)


def _console_target(dev_fd: int) -> int:
    try:
        existing = os.stat("console", dir_fd=dev_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    try:
        if existing is not None and (stat.S_ISLNK(existing.st_mode) or stat.S_ISDIR(existing.st_mode)):
            if stat.S_ISDIR(existing.st_mode):
                raise DeviceError("bind console: /dev/console is a directory")
            os.unlink("console", dir_fd=dev_fd)
            existing = None
        if existing is None:
            fd = os.open("console", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dev_fd)
            os.close(fd)
        return paths.open_beneath(dev_fd, "console")
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DeviceError("bind console: /dev/console is a symlink") from None
        raise DeviceError(f"bind console: /dev/console: {why(err)}") from None

