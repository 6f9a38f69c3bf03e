"""``linux.maskedPaths`` and ``linux.readonlyPaths``, applied in the init after pivot_root.

A masked file is covered by a clone of the host's /dev/null (opened with ``O_NOFOLLOW``, checked to be
char 1:3 and kept as a detached mount across pivot_root), a masked directory by an empty read-only tmpfs.
A read-only path is cloned recursively, made read-only recursively and attached over itself. Missing
paths are skipped. Every path resolves inside the new root; every mount goes through the ``Kernel``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from ocirt import syscalls
from ocirt.errors import why
from ocirt.linux import paths
from ocirt.linux.kernel import Kernel, attach_and_close, bind
from ocirt.linux.mountplan import MountPlan, RootfsError
from ocirt.linux.mounts import new_filesystem

A = syscalls

_MASK_TMPFS_ATTRS = A.MOUNT_ATTR_RDONLY | A.MOUNT_ATTR_NOSUID | A.MOUNT_ATTR_NODEV | A.MOUNT_ATTR_NOEXEC


def open_null_device(path: str, opener: Callable[[str, int], int] = os.open) -> int:
    """An ``O_PATH`` fd of ``path``, which must be the null device itself (never reached through a link)."""
    try:
        fd = opener(path, A.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise RootfsError(f"open {path}: {why(err)}") from None
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise RootfsError(f"{path} is not the null device (char 1:3)")
    return fd


def mask(kernel: Kernel, root: int, path: str, null_fd: int) -> None:
    target = _existing(root, path, f"mask {path}")
    if target is None:
        return
    try:
        if stat.S_ISDIR(os.fstat(target).st_mode):
            tree = new_filesystem(kernel, MountPlan(path, "tmpfs", "tmpfs"), "tmpfs", "tmpfs", [], [],
                                  attrs=_MASK_TMPFS_ATTRS)
            attach_and_close(kernel, tree, target)
        else:
            _bind_null(kernel, root, null_fd, target)
    except OSError as err:
        raise RootfsError(f"mask {path}: {why(err)}") from None
    finally:
        os.close(target)


def _bind_null(kernel: Kernel, root: int, null_fd: int, target: int) -> None:
    if null_fd >= 0:
        try:
            bind(kernel, null_fd, target)
            return
        except OSError as err:
            if err.errno != errno.EINVAL:  # older kernels can't clone a detached mount
                raise
    # The container's own /dev/null, used only when it is really the null device, never via a symlink.
    fd = open_null_device("/dev/null", lambda path, flags: paths.open_in_root(root, path, flags))
    try:
        bind(kernel, fd, target)
    finally:
        os.close(fd)


def make_readonly(kernel: Kernel, root: int, path: str) -> None:
    target = _existing(root, path, f"make {path} read-only")
    if target is None:
        return
    try:
        bind(kernel, target, target, recursive=True, attr_set=A.MOUNT_ATTR_RDONLY)
    except OSError as err:
        raise RootfsError(f"make {path} read-only: {why(err)}") from None
    finally:
        os.close(target)


def _existing(root: int, path: str, what: str) -> int | None:
    """An ``O_PATH`` fd of ``path`` inside ``root``, or None when it isn't there."""
    try:
        return paths.open_in_root(root, path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise RootfsError(f"{what}: {why(err)}") from None
