"""The privileged kernel calls that build a container's filesystem, behind one object.

``rootfs``, ``mounts``, ``cgroupmounts``, ``masks`` and ``devices`` make every mount, attribute change,
device node, owner change and root switch through a ``Kernel`` handed to them; path lookups and the
creation of plain files and directories inside the rootfs stay ordinary fd-relative calls (``paths``),
which need no privilege. ``KERNEL`` is the real one. A test can hand in another object with these
methods, a recording fake that runs without root (``tests/unit/fake_kernel.py``).

Detached mounts are fds throughout: a fresh filesystem from ``fsopen``/``fsmount``, a clone from
``open_tree``, attached with ``move_mount`` onto an ``O_PATH`` fd that was resolved inside the rootfs.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls as sc
from ocirt.linux import paths, procfs


class Kernel:
    # --- detached mounts -------------------------------------------------------------------------

    def fsopen(self, fstype: str) -> int:
        return sc.fsopen(fstype)

    def fsconfig(self, fs_fd: int, key: str, value: str | None = None) -> None:
        """One option of a filesystem being made: ``key=value`` as a string, a bare ``key`` as a flag."""
        if value is None:
            sc.fsconfig(fs_fd, sc.FSCONFIG_SET_FLAG, key)
        else:
            sc.fsconfig(fs_fd, sc.FSCONFIG_SET_STRING, key, value)

    def fscreate(self, fs_fd: int) -> None:
        sc.fsconfig(fs_fd, sc.FSCONFIG_CMD_CREATE)

    def fsmount(self, fs_fd: int, attrs: int) -> int:
        return sc.fsmount(fs_fd, sc.FSMOUNT_CLOEXEC, attrs)

    def clone(self, fd: int, *, recursive: bool) -> int:
        """A detached copy of the mount (tree) at ``fd``."""
        flags = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH
        return sc.open_tree(fd, "", flags | (sc.AT_RECURSIVE if recursive else 0))

    def clone_path(self, path: str, *, recursive: bool) -> int:
        """``clone`` of a host path (trusted: the config's or the runtime's, never the rootfs')."""
        flags = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC
        return sc.open_tree(sc.AT_FDCWD, path, flags | (sc.AT_RECURSIVE if recursive else 0))

    def attach(self, tree: int, target: int) -> None:
        """Mount the detached ``tree`` on what ``target`` is."""
        sc.move_mount(tree, "", target, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)

    def set_attrs(self, fd: int, *, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0,
                  recursive: bool = False, userns_fd: int = 0) -> None:
        flags = sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if recursive else 0)
        sc.mount_setattr(fd, "", flags, attr_set, attr_clr, propagation, userns_fd)

    def fs_type(self, fd: int) -> int:
        """The filesystem magic of what ``fd`` is (``fstatfs``)."""
        return sc.fstatfs_type(fd)

    def userns_with_maps(self, uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]]) -> int:
        """An fd of a new user namespace carrying the given maps (for an idmapped mount): a short-lived child
        holds it while its maps are written."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                os.close(hold_w)
                sc.unshare(sc.CLONE_NEWUSER)
                os.write(ready_w, b"1")
                os.read(hold_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(hold_r)
        try:
            if os.read(ready_r, 1) != b"1":
                raise OSError(errno.EPERM, "unshare(CLONE_NEWUSER) failed")
            procfs.write_proc_file(f"{pid}/uid_map", "".join(f"{c} {h} {s}\n" for c, h, s in uid_map))
            procfs.write_proc_file(f"{pid}/gid_map", "".join(f"{c} {h} {s}\n" for c, h, s in gid_map))
            return procfs.open_ns_file(pid, "user")
        finally:
            os.close(ready_r)
            os.close(hold_w)
            os.waitpid(pid, 0)

    def private_proc(self) -> int:
        """The init's own procfs instance (made while the kernel still allows a fresh one)."""
        return procfs.private_proc_fd()

    # --- the old mount API: propagation of the namespace's mounts, and the switch of root ----------

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int) -> None:
        sc.mount(source, target, fstype, flags)

    def pivot_root(self, root_fd: int) -> None:
        """Make the mount at ``root_fd`` the root: ``pivot_root(".", ".")`` from inside it, then detach the old
        root (which then sits on top, where we stand) without letting the unmount reach the host."""
        old_root = os.open("/", sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(root_fd)
            sc.pivot_root(".", ".")
            os.fchdir(old_root)
            sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
            sc.umount2(".", sc.MNT_DETACH)
            os.chdir("/")
        finally:
            os.close(old_root)

    def move_root(self, root_fd: int) -> None:
        """Without pivot_root: move the mount at ``root_fd`` onto / and chroot into it."""
        os.fchdir(root_fd)
        sc.mount(".", "/", None, sc.MS_MOVE)
        os.chroot(".")
        os.chdir("/")

    def open_root(self) -> int:
        """An ``O_PATH`` fd of the (new) root."""
        return os.open("/", sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    # --- device nodes and owners --------------------------------------------------------------------

    def mknod(self, dir_fd: int, name: str, mode: int, rdev: int) -> int:
        """Make the node ``name`` in ``dir_fd``; an ``O_PATH`` fd of it, checked to be the node just made."""
        os.mknod(name, mode, rdev, dir_fd=dir_fd)
        node = paths.open_beneath(dir_fd, name)
        made = os.fstat(node)
        if stat.S_IFMT(made.st_mode) != stat.S_IFMT(mode) or (not stat.S_ISFIFO(mode) and made.st_rdev != rdev):
            os.close(node)
            raise OSError(errno.ESTALE, "the node was replaced while it was made")
        return node

    def chown(self, fd: int, uid: int, gid: int) -> None:
        """The owner of what ``fd`` (``O_PATH`` too) is: never through a name that could be swapped."""
        sc.chown_fd(fd, uid, gid)


KERNEL = Kernel()


def attach_and_close(kernel: Kernel, tree: int, target: int) -> None:
    """Attach the detached ``tree`` on ``target``; the tree's fd is closed whatever happens."""
    try:
        kernel.attach(tree, target)
    finally:
        os.close(tree)


def bind(kernel: Kernel, source: int, target: int, *, recursive: bool = False, attr_set: int = 0) -> None:
    """Bind what ``source`` is onto ``target`` (a clone, its attributes, attach, close)."""
    tree = kernel.clone(source, recursive=recursive)
    try:
        if attr_set:
            kernel.set_attrs(tree, attr_set=attr_set, recursive=recursive)
    except BaseException:
        os.close(tree)
        raise
    attach_and_close(kernel, tree, target)
