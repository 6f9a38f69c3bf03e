"""A ``Kernel`` that records instead of mounting, so the rootfs steps run as any user, without namespaces.

Path work stays real: the rootfs is a scratch directory, and ``paths`` resolves and creates inside it as it
would in a container. What needs privilege is recorded as ``Call``s, with fds shown as what they name:
a path inside the rootfs (``/dev/pts``), a detached mount (``tmpfs#2``), or a host path (``host:/dev/null``).

* a fresh filesystem (``fsmount``) is a new scratch directory: a tmpcopyup can fill it;
* the rootfs bound onto itself is a duplicate fd of it, so every later lookup works in the scratch rootfs;
  any other clone is a new scratch directory standing for the copy;
* a device node (``mknod``) is an empty regular file where the node would be;
* ``pivot_root`` remembers the new root for ``open_root``.
"""

from __future__ import annotations

import itertools
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ocirt import syscalls as sc
from ocirt.linux.kernel import Kernel

DEVPTS_MAGIC = 0x1CD1
_MAGIC = {"proc": sc.PROC_SUPER_MAGIC, "sysfs": sc.SYSFS_MAGIC, "devpts": DEVPTS_MAGIC}


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple

    def __repr__(self) -> str:
        return f"{self.name}{self.args!r}"


class RecordingKernel(Kernel):
    def __init__(self, rootfs: Path):
        self.rootfs = Path(os.path.realpath(rootfs))
        self.scratch = Path(tempfile.mkdtemp(prefix="ocirt-fake-kernel-"))
        self.calls: list[Call] = []
        # fd -> (the inode it was made for, its name, the filesystem type): fd numbers are reused, so a
        # name counts only while the fd still is that inode
        self._known: dict[int, tuple[tuple[int, int], str, str | None]] = {}
        self._counter = itertools.count(1)
        self._root = -1

    # --- what an fd is, for the record ------------------------------------------------------------

    def _remember(self, fd: int, label: str, fstype: str | None) -> None:
        st = os.fstat(fd)
        self._known[fd] = ((st.st_dev, st.st_ino), label, fstype)

    def _lookup(self, fd: int) -> tuple[str, str | None] | None:
        known = self._known.get(fd)
        if known is None:
            return None
        st = os.fstat(fd)
        if known[0] != (st.st_dev, st.st_ino):
            del self._known[fd]
            return None
        return known[1], known[2]

    def where(self, fd: int) -> str:
        known = self._lookup(fd)
        if known is not None:
            return known[0]
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path == self.rootfs or self.rootfs in path.parents:
            return "/" + str(path.relative_to(self.rootfs)).lstrip(".")
        if self.scratch in path.parents:
            return f"scratch:{path.name}"
        return f"host:{path}"

    def _record(self, name: str, *args) -> None:
        self.calls.append(Call(name, args))

    def named(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.name == name]

    def _new_dir(self, label: str, fstype: str | None) -> int:
        directory = self.scratch / f"{label.replace('#', '-').replace(':', '-').replace('/', '_')}-{next(self._counter)}"
        directory.mkdir()
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._remember(fd, label, fstype)
        return fd

    def _fstype(self, fd: int) -> str | None:
        known = self._lookup(fd)
        return known[1] if known else None

    # --- detached mounts ------------------------------------------------------------------------------

    def fsopen(self, fstype: str) -> int:
        self._record("fsopen", fstype)
        return self._new_dir(f"fsctx:{fstype}", fstype)

    def fsconfig(self, fs_fd: int, key: str, value: str | None = None) -> None:
        self._record("fsconfig", self._fstype(fs_fd), key, value)

    def fscreate(self, fs_fd: int) -> None:
        self._record("fscreate", self._fstype(fs_fd))

    def fsmount(self, fs_fd: int, attrs: int) -> int:
        fstype = self._fstype(fs_fd)
        fd = self._new_dir(f"{fstype}#{next(self._counter)}", fstype)
        self._record("fsmount", self.where(fd), attrs)
        return fd

    def clone(self, fd: int, *, recursive: bool) -> int:
        source = self.where(fd)
        self._record("clone", source, recursive)
        if source == "/":
            copy = os.dup(fd)
            os.set_inheritable(copy, False)
            return copy
        return self._new_dir(f"clone:{source}", self._fstype(fd))

    def clone_path(self, path: str, *, recursive: bool) -> int:
        self._record("clone_path", path, recursive)
        fd = self._new_dir(f"clone:host:{path}", None)
        if os.path.isdir(path):
            return fd
        os.close(fd)  # a file's clone: a file, so the mount point made for it is one too
        name = self.scratch / f"file-{next(self._counter)}"
        name.touch()
        fd = os.open(name, sc.O_PATH | os.O_CLOEXEC)
        self._remember(fd, f"clone:host:{path}", None)
        return fd

    def attach(self, tree: int, target: int) -> None:
        self._record("attach", self.where(tree), self.where(target))

    def set_attrs(self, fd: int, *, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0,
                  recursive: bool = False, userns_fd: int = 0) -> None:
        self._record("set_attrs", self.where(fd), attr_set, attr_clr, propagation, recursive)

    def fs_type(self, fd: int) -> int:
        fstype = self._fstype(fd)
        if fstype in _MAGIC:
            return _MAGIC[fstype]
        return sc.fstatfs_type(fd)

    def userns_with_maps(self, uid_map, gid_map) -> int:
        self._record("userns_with_maps", tuple(uid_map), tuple(gid_map))
        return self._new_dir("userns", None)

    def private_proc(self) -> int:
        self._record("private_proc")
        return -1

    # --- the old mount API and the root switch ----------------------------------------------------------

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int) -> None:
        self._record("mount", source, target, fstype, flags)

    def pivot_root(self, root_fd: int) -> None:
        self._record("pivot_root", self.where(root_fd))
        self._root = root_fd

    def move_root(self, root_fd: int) -> None:
        self._record("move_root", self.where(root_fd))
        self._root = root_fd

    def open_root(self) -> int:
        fd = os.dup(self._root)
        os.set_inheritable(fd, False)
        return fd

    # --- nodes and owners ----------------------------------------------------------------------------------

    def mknod(self, dir_fd: int, name: str, mode: int, rdev: int) -> int:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        os.close(fd)
        node = os.open(name, sc.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        kind = {stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}[stat.S_IFMT(mode)]
        self._record("mknod", self.where(node), kind, os.major(rdev), os.minor(rdev), stat.S_IMODE(mode))
        return node

    def chown(self, fd: int, uid: int, gid: int) -> None:
        self._record("chown", self.where(fd), uid, gid)
