"""Writes to procfs that mounts inside the container can't redirect.

A container that controls mounts (a bind over ``/proc/sys/kernel/...`` or over all of ``/proc``, or a
symlink where ``/proc`` should be) could otherwise turn a runtime write such as ``oom_score_adj`` or a
sysctl into a write to a file of its choosing (CVE-2019-19921, CVE-2025-52881). So writes go through a
private procfs instance: a fresh ``proc`` superblock made with ``fsopen``/``fsmount`` that is attached
nowhere, so it has no submounts and nothing in the container can stack anything on it. Files are opened
beneath it with ``RESOLVE_NO_XDEV`` and checked to be procfs on that very mount before a byte is written.

The instance must be created while a fresh proc mount is still allowed (in a user namespace the kernel
refuses one once only masked proc mounts are visible), so ``prepare_rootfs`` calls ``private_proc_fd``
before anything else. It reflects the pid namespace of the process that makes it: ``self`` means the
calling process.
"""

from __future__ import annotations

import errno
import os

from ocirt import syscalls
from ocirt.errors import OcirtError

_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_XDEV | syscalls.RESOLVE_NO_MAGICLINKS

_private_proc: int | None = None
_private_proc_owner: int | None = None
_private_proc_identity: tuple[int, int] = (0, 0)


class ProcfsError(OcirtError):
    pass


def _new_proc_instance() -> int:
    fs_fd = syscalls.fsopen("proc")
    try:
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_CMD_CREATE)
        return syscalls.fsmount(fs_fd, syscalls.FSMOUNT_CLOEXEC,
                                syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
                                | syscalls.MOUNT_ATTR_NOEXEC)
    finally:
        os.close(fs_fd)


def _clone_of_proc() -> int:
    # A non-recursive clone of the existing /proc: the copy carries none of the mounts stacked on it.
    return syscalls.open_tree(syscalls.AT_FDCWD, "/proc",
                              syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC)


def _recursive_clone_of_proc() -> int:
    # Last resort (a user namespace where /proc has locked submounts): the copy keeps the stacked mounts,
    # but every lookup below refuses to cross into one (RESOLVE_NO_XDEV), so they can't redirect anything.
    return syscalls.open_tree(syscalls.AT_FDCWD, "/proc",
                              syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_RECURSIVE)


def private_proc_fd() -> int:
    """An fd of the root of a procfs instance that belongs to this process alone (made once, then cached).

    After ``fork`` the child makes its own: the instance must reflect the caller's pid namespace.
    """
    global _private_proc, _private_proc_owner, _private_proc_identity
    pid = os.getpid()
    if _private_proc is not None and _private_proc_owner == pid:
        # The fd number may have been closed and reused (fd sealing before execve): trust it only while it
        # still names the same procfs root.
        try:
            st = os.fstat(_private_proc)
            if (st.st_dev, st.st_ino) == _private_proc_identity:
                return _private_proc
        except OSError:
            pass
        _private_proc = None
    errors = []
    for make in (_new_proc_instance, _clone_of_proc, _recursive_clone_of_proc):
        try:
            fd = make()
        except OSError as err:
            errors.append(os.strerror(err.errno or errno.EIO).lower())
            continue
        if syscalls.fstatfs_type(fd) != syscalls.PROC_SUPER_MAGIC:
            os.close(fd)
            errors.append("not procfs")
            continue
        st = os.fstat(fd)
        _private_proc, _private_proc_owner, _private_proc_identity = fd, pid, (st.st_dev, st.st_ino)
        return fd
    raise ProcfsError(f"cannot get a private procfs instance: {'; '.join(errors)}")


def set_private_proc_fd(fd: int) -> None:
    """Use ``fd`` (the root of a procfs mount the caller verified) instead of making an instance."""
    global _private_proc, _private_proc_owner, _private_proc_identity
    if syscalls.fstatfs_type(fd) != syscalls.PROC_SUPER_MAGIC:
        raise ProcfsError("the given fd is not on a procfs")
    st = os.fstat(fd)
    _private_proc, _private_proc_owner, _private_proc_identity = fd, os.getpid(), (st.st_dev, st.st_ino)


def open_proc_file(relpath: str, flags: int) -> int:
    """Open ``/proc/<relpath>`` through the private instance; the fd is checked to be on it."""
    root = private_proc_fd()
    rel = relpath.lstrip("/")
    if rel.startswith("proc/"):
        rel = rel[len("proc/"):]
    try:
        fd = syscalls.openat2(root, rel, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0, _RESOLVE)
    except OSError as err:
        raise ProcfsError(f"open /proc/{rel}: {os.strerror(err.errno or errno.EIO).lower()}", op="open",
                          path=f"/proc/{rel}", errno=err.errno) from None
    try:
        if syscalls.fstatfs_type(fd) != syscalls.PROC_SUPER_MAGIC:
            raise ProcfsError(f"open /proc/{rel}: not on procfs")
        if os.fstat(fd).st_dev != os.fstat(root).st_dev:
            raise ProcfsError(f"open /proc/{rel}: not on the private procfs mount")
    except BaseException:
        os.close(fd)
        raise
    return fd


NSFS_MAGIC = 0x6E736673


def open_ns_file(pid: int | str, kind: str) -> int:
    """An fd of the namespace ``kind`` (e.g. "user") of process ``pid``, via the private procfs.

    The ns entries are magic links, so only the final step follows one, from a directory opened safely.
    """
    ns_dir = open_proc_file(f"{pid}/ns", os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(kind, os.O_RDONLY | os.O_CLOEXEC, dir_fd=ns_dir)
        except OSError as err:
            raise ProcfsError(f"open /proc/{pid}/ns/{kind}: {os.strerror(err.errno or errno.EIO).lower()}") from None
    finally:
        os.close(ns_dir)
    if syscalls.fstatfs_type(fd) != NSFS_MAGIC:
        os.close(fd)
        raise ProcfsError(f"open /proc/{pid}/ns/{kind}: not a namespace file")
    return fd


def write_proc_file(relpath: str, data: str) -> None:
    """Write ``data`` to ``/proc/<relpath>`` (e.g. ``sys/net/ipv4/ip_forward``, ``self/oom_score_adj``)."""
    fd = open_proc_file(relpath, os.O_WRONLY)
    try:
        payload = data.encode()
        try:
            written = os.write(fd, payload)
        except OSError as err:
            raise ProcfsError(
                f"write /proc/{relpath.lstrip('/')}: {os.strerror(err.errno or errno.EIO).lower()}",
                op="write", path=f"/proc/{relpath.lstrip('/')}", errno=err.errno,
            ) from None
        if written != len(payload):
            raise ProcfsError(f"write /proc/{relpath.lstrip('/')}: short write ({written} of {len(payload)})")
    finally:
        os.close(fd)


def read_proc_file(relpath: str) -> str:
    fd = open_proc_file(relpath, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(fd)
