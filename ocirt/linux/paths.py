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
    return _open_creating(root_fd, path, mode, directory=True)


def _open_creating(root_fd: int, path: str, mode: int, *, directory: bool) -> int:
    target = clean(path)
    flags = syscalls.O_PATH | (os.O_DIRECTORY if directory else 0)
    for _hop in range(_MAX_LINK_HOPS):
        try:
            return open_in_root(root_fd, target, flags)
        except OSError as err:
            if directory and err.errno == errno.ENOTDIR:
                raise PathError(f"{target} inside the rootfs is not a directory") from None
            if err.errno != errno.ENOENT:
                raise PathError(f"cannot open {target} inside the rootfs: {why(err)}") from None
        made, redirected = _walk_creating(root_fd, target, mode, final_file=not directory)
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
    return _open_creating(root_fd, path, mode, directory=False)


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
