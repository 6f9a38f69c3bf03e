"""The config's mounts, made in the init (``mountplan`` parsed them in the parent).

Every mount is made with the new mount API (``fsopen``/``fsmount`` for a fresh filesystem,
``open_tree(OPEN_TREE_CLONE)`` for a bind) and attached with ``move_mount`` onto an ``O_PATH`` fd that
``openat2(RESOLVE_IN_ROOT)`` resolved inside the rootfs, so no path string that the image could redirect
with a symlink is ever handed to the kernel. Attributes are changed with ``mount_setattr``, which only
touches the bits it is asked to: flags the kernel locked on a mount inherited from a more privileged
namespace (nosuid, nodev, noexec, ...) stay as they are, which is what makes read-only binds work in a
user namespace. Every kernel call goes through the ``Kernel`` the caller hands in.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls
from ocirt.errors import why
from ocirt.linux import paths, procfs
from ocirt.linux.kernel import KERNEL, Kernel
from ocirt.linux.mountplan import PROC_BIND_ALLOWED, MountPlan, RootfsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirt.linux.rootfs import RootfsPlan

A = syscalls

_SYMLINK_REFUSED = {"/proc", "/sys", "/dev"}
VERIFIED_MAGIC = {"proc": A.PROC_SUPER_MAGIC, "sysfs": A.SYSFS_MAGIC}


def mount_one(kernel: Kernel, plan: RootfsPlan, mount: MountPlan) -> None:
    """One config mount that is not a cgroup (``cgroupmounts``), on its destination inside the rootfs."""
    if mount.remount:
        _remount(kernel, plan, mount)
        return
    existed = mount.fstype == "tmpfs" and paths.lstat_in_root(plan.root_fd, mount.destination) is not None
    target = destination_fd(kernel, plan, mount)
    try:
        tree = make_tree(kernel, mount, target, inherit_mode=existed)
        try:
            if mount.fstype == "devtmpfs" and plan.host_devices is not None:
                plan.host_devices.add_filesystem(tree)
            if existed and mount.copy_up:
                _copy_up(mount, target, tree)
            attach_tree(kernel, mount, tree, target)
            if mount.readonly_later:
                plan.readonly_later.append((tree, mount.destination))
                tree = -1
        finally:
            if tree >= 0:
                os.close(tree)
    finally:
        os.close(target)


def destination_fd(kernel: Kernel, plan: RootfsPlan, mount: MountPlan, *, directory: bool | None = None) -> int:
    """An ``O_PATH`` fd of the mount's destination inside the rootfs, created (a directory, or an empty file
    for the bind of a file) where it is missing."""
    dest = mount.destination
    if dest in _SYMLINK_REFUSED or mount.fstype in VERIFIED_MAGIC:
        existing = paths.lstat_in_root(plan.root_fd, dest)
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise RootfsError(f"{mount.describe()}: {dest} is a symlink")
        if existing is not None and mount.fstype in VERIFIED_MAGIC and not stat.S_ISDIR(existing.st_mode):
            raise RootfsError(f"{mount.describe()}: {dest} is not a directory")
    if directory is None:
        directory = True
        if mount.bind:
            try:
                source = os.fstat(mount.source_fd) if mount.source_fd >= 0 else os.stat(mount.source)
                directory = stat.S_ISDIR(source.st_mode)
            except OSError as err:
                raise RootfsError(f"{mount.describe()}: source {mount.source}: {why(err)}") from None
    try:
        target = paths.mkdir_all(plan.root_fd, dest) if directory else paths.create_file(plan.root_fd, dest)
    except paths.PathError as err:
        raise RootfsError(f"{mount.describe()}: {err}") from None
    # The lexical check on the destination happened at plan time; a symlink in the image can still lead a
    # destination into the container's procfs (the AppArmor /proc/self/attr class of attacks).
    if kernel.fs_type(target) == A.PROC_SUPER_MAGIC and not (mount.bind and dest in PROC_BIND_ALLOWED):
        os.close(target)
        raise RootfsError(f"{mount.describe()}: the destination resolves to a path inside /proc")
    return target


def make_tree(kernel: Kernel, mount: MountPlan, target: int, *, inherit_mode: bool = False) -> int:
    """A detached mount for ``mount``: a clone of the bind source or a fresh filesystem."""
    if mount.bind and mount.source_fd >= 0:
        tree, mount.source_fd = mount.source_fd, -1
        return tree
    if mount.bind:
        return _bind_tree(kernel, mount)
    data = list(mount.data)
    if inherit_mode and mount.fstype == "tmpfs" and not any(opt.startswith("mode=") for opt in data):
        # a tmpfs over an existing directory keeps that directory's permissions, as runc does
        data.insert(0, f"mode={stat.S_IMODE(os.fstat(target).st_mode):o}")
    attrs = mount.attr_set | (mount.atime or 0)
    if mount.readonly_later:
        attrs &= ~A.MOUNT_ATTR_RDONLY
    return new_filesystem(kernel, mount, mount.fstype, mount.source, data, mount.sb_flags, attrs=attrs)


def new_filesystem(kernel: Kernel, mount: MountPlan, fstype: str, source: str, data: list[str],
                   sb_flags: list[str], attrs: int | None = None) -> int:
    """A detached fresh filesystem: ``fsopen``, one ``fsconfig`` per option, create, ``fsmount``."""
    try:
        fs_fd = kernel.fsopen(fstype)
    except OSError as err:
        if err.errno == errno.ENODEV:
            raise RootfsError(f"{mount.describe()}: unknown filesystem type {fstype!r}") from None
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    try:
        step = "source"
        try:
            if source:
                kernel.fsconfig(fs_fd, "source", source)
            for option in [*sb_flags, *data]:
                step = option
                key, sep, value = option.partition("=")
                kernel.fsconfig(fs_fd, key, value if sep else None)
            step = ""
            kernel.fscreate(fs_fd)
            return kernel.fsmount(fs_fd, mount.attr_set | (mount.atime or 0) if attrs is None else attrs)
        except OSError as err:
            detail = _fs_log(fs_fd)
            option = f" (option {step!r})" if step else ""
            raise RootfsError(f"{mount.describe()}: {why(err)}{option}{detail}") from None
    finally:
        os.close(fs_fd)


def _fs_log(fs_fd: int) -> str:
    """The kernel's own explanation of a failed fsconfig, when it left one."""
    messages = []
    for _ in range(8):
        try:
            line = os.read(fs_fd, 512).decode(errors="replace").strip()
        except OSError:
            break
        if not line:
            break
        messages.append(line[2:] if line[1:2] == " " else line)
    return f": {'; '.join(messages)}" if messages else ""


def _set_mount_attrs(kernel: Kernel, mount: MountPlan, tree: int, *, fresh: bool) -> None:
    """Apply the config's attributes to a mount (non-recursive, then the r* ones)."""
    try:
        if not fresh and (mount.attr_set or mount.attr_clr or mount.atime is not None):
            attr_clr = mount.attr_clr
            attr_set = mount.attr_set & ~(A.MOUNT_ATTR_RDONLY if mount.readonly_later else 0)
            if mount.atime is not None:
                attr_clr |= A.MOUNT_ATTR__ATIME
                attr_set |= mount.atime
            kernel.set_attrs(tree, attr_set=attr_set, attr_clr=attr_clr, recursive=False)
        if mount.rattr_set or mount.rattr_clr or mount.ratime is not None:
            attr_clr = mount.rattr_clr
            attr_set = mount.rattr_set
            if mount.ratime is not None:
                attr_clr |= A.MOUNT_ATTR__ATIME
                attr_set |= mount.ratime
            kernel.set_attrs(tree, attr_set=attr_set, attr_clr=attr_clr, recursive=True)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: set mount attributes: {why(err)}") from None


def attach_tree(kernel: Kernel, mount: MountPlan, tree: int, target: int) -> None:
    """Attach ``tree`` on ``target``, then its propagation; proc and sysfs are checked to be what they say."""
    if not mount.bind:
        _set_mount_attrs(kernel, mount, tree, fresh=True)
    try:
        kernel.attach(tree, target)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    try:
        for propagation, recursive in mount.propagation:
            kernel.set_attrs(tree, propagation=propagation, recursive=recursive)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: set propagation: {why(err)}") from None
    expected = VERIFIED_MAGIC.get(mount.fstype)
    if mount.bind and mount.destination == "/proc":
        expected = A.PROC_SUPER_MAGIC  # only a procfs may stand in for /proc (runc's rule too)
    elif mount.bind and mount.source == "/sys" and mount.destination == "/sys":
        expected = A.SYSFS_MAGIC
    if expected is not None and kernel.fs_type(tree) != expected:
        wanted = "proc" if expected == A.PROC_SUPER_MAGIC else "sysfs"
        raise RootfsError(f"{mount.describe()}: the mounted filesystem is not {wanted}")


def bind_or_skip(kernel: Kernel, mount: MountPlan, bind: MountPlan, target: int) -> int | None:
    """The detached tree of ``bind`` (a fallback for a mount the kernel refused), or None when its source is
    missing and the mount may be left out (rootless cgroup hierarchies, as runc skips them)."""
    try:
        return make_tree(kernel, bind, target)
    except RootfsError:
        if mount.tolerate_enoent and not os.path.exists(bind.source):
            return None
        raise


def _remount(kernel: Kernel, plan: RootfsPlan, mount: MountPlan) -> None:
    try:
        target = paths.open_in_root(plan.root_fd, mount.destination)
    except OSError as err:
        raise RootfsError(f"remount {mount.destination}: {why(err)}") from None
    try:
        _set_mount_attrs(kernel, mount, target, fresh=False)
        for propagation, recursive in mount.propagation:
            kernel.set_attrs(target, propagation=propagation, recursive=recursive)
    except OSError as err:
        raise RootfsError(f"remount {mount.destination}: {why(err)}") from None
    finally:
        os.close(target)


# --- bind sources ---------------------------------------------------------------------------------

def open_mount_sources(plan: RootfsPlan, kernel: Kernel = KERNEL) -> None:
    """In the parent, right before the fork: build the detached trees the init could not build itself.

    Setting an idmapping needs privilege over the source filesystem's user namespace, which an init
    inside a container user namespace doesn't have; the real-root parent does. Likewise the container's
    root may not be allowed to search its way to a bind source (a 0700 directory of the host's root on
    the way): the parent clones those. Every other source is left to the init, which resolves it after
    the earlier mounts, as their order asks. The init inherits the fds and only attaches them. Harmless
    to skip without user namespace: the init then does it itself. Release with ``close_mount_sources``
    in the parent once the init has been forked.
    """
    for mount in plan.mounts:
        if not mount.bind or mount.source_fd >= 0:
            continue
        if mount.uid_map is not None:
            mount.source_fd = _bind_tree(kernel, mount)
        elif (plan.new_userns_maps is not None and os.geteuid() == 0
              and not _searchable_by_container_root(mount.source, *plan.new_userns_maps)):
            mount.source_fd = _bind_tree(kernel, mount)


def close_mount_sources(plan: RootfsPlan) -> None:
    for mount in plan.mounts:
        if mount.source_fd >= 0:
            os.close(mount.source_fd)
            mount.source_fd = -1


def _searchable_by_container_root(source: str, uid_maps: list[tuple[int, int, int]],
                                  gid_maps: list[tuple[int, int, int]]) -> bool:
    """Whether the container's root, once in its user namespace, can look ``source`` up.

    A close estimate (no ACLs, no supplementary groups), erring towards "no", which only costs a clone
    here. A source that does not exist yet is the init's to resolve (an earlier mount may create it).
    """
    uid = _host_id(uid_maps, 0)
    gid = _host_id(gid_maps, 0)
    try:
        os.lstat(source)
        real = os.path.realpath(source)
        directories = {os.path.dirname(p) for p in (source, real)}
        for start in list(directories):
            while start not in ("/", ""):
                start = os.path.dirname(start)
                directories.add(start)
        for directory in directories:
            st = os.stat(directory)
            if _host_maps(uid_maps, st.st_uid) and _host_maps(gid_maps, st.st_gid):
                continue  # its capabilities cover an inode whose owner and group it maps
            bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
            if not st.st_mode & bit:
                return False
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _host_id(maps: list[tuple[int, int, int]], container_id: int) -> int:
    for start, host, size in maps:
        if start <= container_id < start + size:
            return host + container_id - start
    return -1


def _host_maps(maps: list[tuple[int, int, int]], host_id: int) -> bool:
    return any(host <= host_id < host + size for _start, host, size in maps)


def _bind_tree(kernel: Kernel, mount: MountPlan) -> int:
    try:
        tree = kernel.clone_path(mount.source, recursive=mount.recursive)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    try:
        if mount.uid_map is not None and mount.gid_map is not None:
            _idmap(kernel, mount, tree)
        _set_mount_attrs(kernel, mount, tree, fresh=False)
    except BaseException:
        os.close(tree)
        raise
    return tree


def _idmap(kernel: Kernel, mount: MountPlan, tree: int) -> None:
    assert mount.uid_map is not None and mount.gid_map is not None
    try:
        userns = kernel.userns_with_maps(mount.uid_map, mount.gid_map)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: create the user namespace of the idmapped mount: "
                          f"{why(err)}") from None
    except procfs.ProcfsError as err:
        raise RootfsError(f"{mount.describe()}: create the user namespace of the idmapped mount: {err}") from None
    try:
        kernel.set_attrs(tree, attr_set=A.MOUNT_ATTR_IDMAP, userns_fd=userns, recursive=mount.idmap_recursive)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: idmap: {why(err)}") from None
    finally:
        os.close(userns)


# --- tmpcopyup ------------------------------------------------------------------------------------

def _copy_up(mount: MountPlan, target: int, tree: int) -> None:
    """Fill the still-detached tmpfs with a copy of the directory it is about to cover."""
    try:
        src = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target)
        try:
            dst = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=tree)
            try:
                copy_tree(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: tmpcopyup: {why(err)}") from None


def copy_tree(src_dir_fd: int, dst_dir_fd: int) -> None:
    """Copy the contents of one directory into another, both given as readable directory fds.

    Used for ``tmpcopyup``: the source is the image's directory, so nothing is ever followed (every open
    uses ``O_NOFOLLOW``; symlinks are copied as links). Ownership and modes are kept where the kernel lets
    us (in a user namespace unmapped owners can't be set, and device nodes can't be made: those are left
    out, as they would be unusable anyway).
    """
    for entry in os.scandir(src_dir_fd):
        name = entry.name
        st = entry.stat(follow_symlinks=False)
        mode = stat.S_IFMT(st.st_mode)
        if mode == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=dst_dir_fd)
            src = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir_fd)
            try:
                dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=dst_dir_fd)
                try:
                    copy_tree(src, dst)
                    _copy_owner_and_mode(dst, st)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif mode == stat.S_IFREG:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir_fd)
            try:
                dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dst_dir_fd)
                try:
                    remaining = st.st_size
                    while remaining > 0:
                        copied = os.sendfile(dst, src, None, min(remaining, 1 << 30))
                        if copied == 0:
                            break
                        remaining -= copied
                    _copy_owner_and_mode(dst, st)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        elif mode == stat.S_IFLNK:
            os.symlink(os.readlink(name, dir_fd=src_dir_fd), name, dir_fd=dst_dir_fd)
            try:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_dir_fd, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EINVAL):
                    raise
        elif mode in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
            try:
                os.mknod(name, mode | stat.S_IMODE(st.st_mode), st.st_rdev, dir_fd=dst_dir_fd)
            except PermissionError:
                continue
            try:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_dir_fd, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EINVAL):
                    raise
        # sockets are not copied: they are meaningless without their listener


def _copy_owner_and_mode(fd: int, st: os.stat_result) -> None:
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EINVAL):
            raise
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
