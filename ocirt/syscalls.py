"""The system calls Python 3.11's ``os`` lacks, through one small ctypes layer.

Every wrapper checks the result and raises ``OSError`` with the kernel's errno, so callers handle
failures the same way they handle ``os`` functions.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_MACHINE = os.uname().machine
_NR = {
    "x86_64": {
        "pivot_root": 155, "capget": 125, "capset": 126, "seccomp": 317, "ioprio_set": 251,
        "sched_setattr": 314, "set_mempolicy": 238, "pidfd_send_signal": 424, "open_tree": 428,
        "move_mount": 429, "pidfd_open": 434, "close_range": 436, "openat2": 437, "pidfd_getfd": 438,
        "mount_setattr": 442,
    },
    "aarch64": {
        "pivot_root": 41, "capget": 90, "capset": 91, "seccomp": 277, "ioprio_set": 30,
        "sched_setattr": 274, "set_mempolicy": 237, "pidfd_send_signal": 424, "open_tree": 428,
        "move_mount": 429, "pidfd_open": 434, "close_range": 436, "openat2": 437, "pidfd_getfd": 438,
        "mount_setattr": 442,
    },
}[_MACHINE]

# clone(2) / unshare(2) flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# statfs f_flag bits that map to mount flags (used to keep locked flags on remount)
ST_RDONLY = 0x1
ST_NOSUID = 0x2
ST_NODEV = 0x4
ST_NOEXEC = 0x8
ST_NOATIME = 0x400
ST_NODIRATIME = 0x800
ST_RELATIME = 0x1000

# openat2 resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

O_PATH = 0o10000000

# open_tree / move_mount / mount_setattr
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_IDMAP = 0x100000
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

AT_FDCWD = -100


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        if path is not None:
            raise OSError(err, f"{what}: {os.strerror(err)}", path)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {source or fstype} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, ctypes.c_size_t(len(data))), "sethostname")


def setdomainname(name: str) -> None:
    data = name.encode()
    _check(_libc.setdomainname(data, ctypes.c_size_t(len(data))), "setdomainname")


def personality(persona: int) -> int:
    return _check(_libc.personality(ctypes.c_ulong(persona)), "personality")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _syscall(_NR["openat2"], ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                 ctypes.c_size_t(ctypes.sizeof(how))),
        "openat2",
        path,
    )


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _check(
        _syscall(_NR["open_tree"], ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags)), "open_tree", path
    )


def move_mount(from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int) -> None:
    _check(
        _syscall(_NR["move_mount"], ctypes.c_int(from_dirfd), _b(from_path), ctypes.c_int(to_dirfd),
                 _b(to_path), ctypes.c_uint(flags)),
        "move_mount",
        to_path,
    )


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0, userns_fd: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    _check(
        _syscall(_NR["mount_setattr"], ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags),
                 ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
        "mount_setattr",
        path,
    )


def chown_fd(fd: int, uid: int, gid: int) -> None:
    """``fchownat(fd, "", uid, gid, AT_EMPTY_PATH)``: the owner of what ``fd`` is, ``O_PATH`` fds included
    (``os.fchown`` refuses those, and a path could be swapped for a link to something else)."""
    _check(_libc.fchownat(ctypes.c_int(fd), b"", ctypes.c_uint(uid), ctypes.c_uint(gid),
                          ctypes.c_int(AT_EMPTY_PATH)), "fchownat")


def pidfd_open(pid: int, flags: int = 0) -> int:
    return _check(_syscall(_NR["pidfd_open"], ctypes.c_int(pid), ctypes.c_uint(flags)), "pidfd_open")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(
        _syscall(_NR["pidfd_send_signal"], ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0)),
        "pidfd_send_signal",
    )


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _syscall(_NR["close_range"], ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)),
        "close_range",
    )


CLOSE_RANGE_CLOEXEC = 4


def seccomp(operation: int, flags: int, args: ctypes.c_void_p | int | None) -> int:
    return _check(
        _syscall(_NR["seccomp"], ctypes.c_uint(operation), ctypes.c_uint(flags), args), "seccomp"
    )


def ioprio_set(which: int, who: int, ioprio: int) -> None:
    _check(_syscall(_NR["ioprio_set"], ctypes.c_int(which), ctypes.c_int(who), ctypes.c_int(ioprio)),
           "ioprio_set")


class SchedAttr(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def sched_setattr(pid: int, attr: SchedAttr) -> None:
    attr.size = ctypes.sizeof(SchedAttr)
    _check(_syscall(_NR["sched_setattr"], ctypes.c_int(pid), ctypes.byref(attr), ctypes.c_uint(0)),
           "sched_setattr")


def set_mempolicy(mode: int, nodemask: int, maxnode: int) -> None:
    mask = ctypes.c_ulong(nodemask)
    _check(_syscall(_NR["set_mempolicy"], ctypes.c_int(mode), ctypes.byref(mask) if nodemask else None,
                    ctypes.c_ulong(maxnode)), "set_mempolicy")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_syscall(_NR["capget"], ctypes.byref(hdr), data), "capget")
    return tuple(  # type: ignore[return-value]
        getattr(data[0], f) | (getattr(data[1], f) << 32) for f in ("effective", "permitted", "inheritable")
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall(_NR["capset"], ctypes.byref(hdr), data), "capset")


_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
               ctypes.c_ulong(arg5)),
        "prctl",
    )


# --- appended for the rootfs module: the new mount API and fstatfs ---
_NR_NEW_MOUNT_API = {"fsopen": 430, "fsconfig": 431, "fsmount": 432}  # same on x86_64 and aarch64
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR__ATIME = 0x70
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
TMPFS_MAGIC = 0x01021994
CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> int:
    return _check(_syscall(_NR_NEW_MOUNT_API["fsopen"], _b(fstype), ctypes.c_uint(flags)), f"fsopen {fstype}")


def fsconfig(fs_fd: int, cmd: int, key: str | None = None, value: str | None = None, aux: int = 0) -> None:
    _check(
        _syscall(_NR_NEW_MOUNT_API["fsconfig"], ctypes.c_int(fs_fd), ctypes.c_uint(cmd), _b(key), _b(value),
                 ctypes.c_int(aux)),
        f"fsconfig {key}" if key else "fsconfig",
    )


def fsmount(fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    return _check(
        _syscall(_NR_NEW_MOUNT_API["fsmount"], ctypes.c_int(fs_fd), ctypes.c_uint(flags),
                 ctypes.c_uint(attr_flags)),
        "fsmount",
    )


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


def fstatfs_type(fd: int) -> int:
    """The filesystem magic number (statfs f_type) of the file ``fd`` refers to."""
    buf = _StatFs()
    _check(_libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)), "fstatfs")
    return buf.f_type & 0xFFFFFFFF


_KEYCTL_JOIN_SESSION_KEYRING = 1
_NR_KEYCTL = {"x86_64": 250, "aarch64": 219}[_MACHINE]


def keyctl_join_session_keyring(name: str) -> int:
    return _check(
        _syscall(_NR_KEYCTL, ctypes.c_int(_KEYCTL_JOIN_SESSION_KEYRING), _b(name)), "keyctl"
    )
