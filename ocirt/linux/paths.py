"""Path operations confined to a container's rootfs.

A rootfs is untrusted: any component of it may be a symlink, including absolute links such as
``/proc -> /etc`` or ``dev -> ../../../host``. Every lookup here goes through ``openat2`` with
``RESOLVE_IN_ROOT`` relative to a directory fd of the rootfs, so symlinks are resolved as if that
directory were ``/`` and can never lead to the host. Missing components are created one level at a time
relative to an fd of their parent, never through a path string, and what was just created is reopened
with ``RESOLVE_NO_SYMLINKS`` so a concurrent swap for a symlink is refused rather than followed.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls
from ocirt.errors import OcirtError, why

_IN_ROOT = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
_BENEATH_NO_LINKS = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS


class PathError(OcirtError):
    """A path inside the rootfs can't be resolved or created safely."""


def clean(path: str) -> str:
    """``path`` as an absolute, normalised container path ("." and ".." folded lexically, as the spec does)."""
    cleaned = os.path.normpath("/" + path)
    # normpath keeps a leading "//" (POSIX allows it to be special); inside a rootfs it is just "/".
    return "/" + cleaned.lstrip("/")


def _components(path: str) -> list[str]:
    return [part for part in clean(path).split("/") if part]


def open_in_root(root_fd: int, path: str, flags: int = syscalls.O_PATH, mode: int = 0) -> int:
    """Open ``path`` with every symlink resolved inside the tree rooted at ``root_fd``."""
    return syscalls.openat2(root_fd, clean(path), flags | os.O_CLOEXEC, mode, _IN_ROOT)


def open_beneath(dir_fd: int, name: str, flags: int = syscalls.O_PATH, mode: int = 0) -> int:
    """Open ``name`` below ``dir_fd`` refusing any symlink on the way: for things we just created."""
    return syscalls.openat2(dir_fd, name, flags | os.O_CLOEXEC, mode, _BENEATH_NO_LINKS)


_MAX_LINK_HOPS = 40


def mkdir_all(root_fd: int, path: str, mode: int = 0o755) -> int:
    """An ``O_PATH`` fd of directory ``path`` inside the root, creating what is missing.

    Existing components may be symlinks, resolved inside the root; a dangling one is followed to its
    target inside the root, which is then created (never on the host). Components we create are real
    directories. Fails when a component exists and is not a directory.
    """
    target = clean(path)
    for _hop in range(_MAX_LINK_HOPS):
        try:
            return open_in_root(root_fd, target, syscalls.O_PATH | os.O_DIRECTORY)
        except OSError as err:
            if err.errno == errno.ENOTDIR:
                raise PathError(f"{target} inside the rootfs is not a directory") from None
            if err.errno != errno.ENOENT:
                raise PathError(f"cannot open {target} inside the rootfs: {why(err)}") from None
        made, redirected = _walk_creating(root_fd, target, mode, final_file=False)
        if made is not None:
            return made
        target = redirected
    raise PathError(f"cannot create {clean(path)} inside the rootfs: too many levels of symbolic links")


def _walk_creating(root_fd: int, target: str, mode: int, *, final_file: bool) -> tuple[int | None, str]:
    """Create the missing components of ``target`` one level at a time.

    Returns (fd, "") on success, or (None, new_target) when a dangling symlink was met: the walk is then
    restarted on the path the link names (relative to where it sits), still inside the root.
    """
    names = _components(target)
    parent = os.dup(root_fd)
    walked = ""
    try:
        for index, name in enumerate(names):
            walked += "/" + name
            last = index == len(names) - 1
            try:
                flags = syscalls.O_PATH if (last and final_file) else syscalls.O_PATH | os.O_DIRECTORY
                child = open_in_root(root_fd, walked, flags)
            except OSError as err:
                if err.errno == errno.ENOTDIR:
                    raise PathError(f"{walked} inside the rootfs is not a directory") from None
                if err.errno != errno.ENOENT:
                    raise PathError(f"cannot open {walked} inside the rootfs: {why(err)}") from None
                link = _dangling_link(parent, name)
                if link is not None:
                    base = os.path.dirname(walked) if not link.startswith("/") else ""
                    rest = "/".join(names[index + 1:])
                    return None, clean(os.path.join(base, link, rest) if rest else os.path.join(base, link))
                if last and final_file:
                    child = _make_file(parent, name, mode, walked)
                else:
                    # ``mode`` is the final file's when creating a file: its parents still need search bits.
                    child = _make_dir(parent, name, 0o755 if final_file else mode, walked)
            os.close(parent)
            parent = child
        return parent, ""
    except BaseException:
        os.close(parent)
        raise


def _dangling_link(parent_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=parent_fd)
    except OSError:
        return None


def _make_dir(parent_fd: int, name: str, mode: int, shown: str) -> int:
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass  # raced with someone else: the reopen below refuses it unless it is a real directory
    except OSError as err:
        raise PathError(f"cannot create {shown} inside the rootfs: {why(err)}") from None
    try:
        return open_beneath(parent_fd, name, syscalls.O_PATH | os.O_DIRECTORY)
    except OSError as err:
        raise PathError(f"cannot open {shown} inside the rootfs: {why(err)}") from None


def _make_file(parent_fd: int, name: str, mode: int, shown: str) -> int:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=parent_fd)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as err:
        raise PathError(f"cannot create {shown} inside the rootfs: {why(err)}") from None
    try:
        return open_beneath(parent_fd, name)
    except OSError as err:
        raise PathError(f"cannot open {shown} inside the rootfs: {why(err)}") from None


def create_file(root_fd: int, path: str, mode: int = 0o644) -> int:
    """An ``O_PATH`` fd of ``path`` inside the root; an empty regular file is created when it is missing.

    An existing entry of any kind is returned as is (resolved inside the root): a bind-mount target may
    be a device node or a directory the caller then rejects. Missing parents are created as by
    ``mkdir_all``.
    """
    target = clean(path)
    for _hop in range(_MAX_LINK_HOPS):
        try:
            return open_in_root(root_fd, target)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise PathError(f"cannot open {target} inside the rootfs: {why(err)}") from None
        made, redirected = _walk_creating(root_fd, target, mode, final_file=True)
        if made is not None:
            return made
        target = redirected
    raise PathError(f"cannot create {clean(path)} inside the rootfs: too many levels of symbolic links")


def open_parent(root_fd: int, path: str, *, create: bool = True) -> tuple[int, str]:
    """(fd of the parent directory, final name) for ``path`` inside the root, for *at() calls on the name."""
    target = clean(path)
    parent_path, name = os.path.split(target)
    if not name:
        raise PathError("the rootfs itself has no parent")
    if create:
        return mkdir_all(root_fd, parent_path), name
    try:
        return open_in_root(root_fd, parent_path, syscalls.O_PATH | os.O_DIRECTORY), name
    except OSError as err:
        raise PathError(f"cannot open {parent_path} inside the rootfs: {why(err)}") from None


def lstat_in_root(root_fd: int, path: str) -> os.stat_result | None:
    """``lstat`` of ``path`` inside the root (its parent resolved inside the root), or None when missing."""
    try:
        parent, name = open_parent(root_fd, path, create=False)
    except PathError:
        return None
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(parent)


def fd_path(fd: int) -> str:
    """The magic-link path through which mount(2) and friends reach the object ``fd`` refers to."""
    return f"/proc/self/fd/{fd}"



# fd-based mounting: nothing below ever passes a path string that a symlink could redirect.

def clone_tree(source_fd: int, *, recursive: bool) -> int:
    """A detached copy of the mount (tree) at ``source_fd``, ready for ``attach``."""
    flags = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_EMPTY_PATH
    if recursive:
        flags |= syscalls.AT_RECURSIVE
    return syscalls.open_tree(source_fd, "", flags)


def clone_path(source: str, *, recursive: bool) -> int:
    """``clone_tree`` of a host path (trusted: it comes from the config, not from the rootfs)."""
    flags = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC
    if recursive:
        flags |= syscalls.AT_RECURSIVE
    return syscalls.open_tree(syscalls.AT_FDCWD, source, flags)


def attach(tree_fd: int, target_fd: int) -> None:
    """Mount the detached tree ``tree_fd`` on the object ``target_fd`` refers to."""
    syscalls.move_mount(tree_fd, "", target_fd, "",
                        syscalls.MOVE_MOUNT_F_EMPTY_PATH | syscalls.MOVE_MOUNT_T_EMPTY_PATH)


def set_attrs(mount_fd: int, *, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0,
              recursive: bool = False, userns_fd: int = 0) -> None:
    flags = syscalls.AT_EMPTY_PATH | (syscalls.AT_RECURSIVE if recursive else 0)
    syscalls.mount_setattr(mount_fd, "", flags, attr_set, attr_clr, propagation, userns_fd)



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
