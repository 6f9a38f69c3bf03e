"""config.json's mounts as plans: option strings turned into mount attributes, propagation, filesystem
data and id maps, in the parent before the fork, so the init does no parsing (``mounts`` applies them).
"""

from __future__ import annotations

import os

from ocirt import syscalls
from ocirt.errors import ConfigError, OcirtError
from ocirt.linux import paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirt.linux.cgroupmounts import CgroupHierarchy

A = syscalls  # short alias for the flag constants below


class RootfsError(OcirtError):
    pass


# option -> (attributes to set, attributes to clear) on the mount itself
_ATTR_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (A.MOUNT_ATTR_RDONLY, 0), "rw": (0, A.MOUNT_ATTR_RDONLY),
    "nosuid": (A.MOUNT_ATTR_NOSUID, 0), "suid": (0, A.MOUNT_ATTR_NOSUID),
    "nodev": (A.MOUNT_ATTR_NODEV, 0), "dev": (0, A.MOUNT_ATTR_NODEV),
    "noexec": (A.MOUNT_ATTR_NOEXEC, 0), "exec": (0, A.MOUNT_ATTR_NOEXEC),
    "nodiratime": (A.MOUNT_ATTR_NODIRATIME, 0), "diratime": (0, A.MOUNT_ATTR_NODIRATIME),
    "nosymfollow": (A.MOUNT_ATTR_NOSYMFOLLOW, 0), "symfollow": (0, A.MOUNT_ATTR_NOSYMFOLLOW),
}
# atime options choose one of the exclusive atime modes
_ATIME_OPTIONS: dict[str, int] = {
    "atime": A.MOUNT_ATTR_STRICTATIME, "strictatime": A.MOUNT_ATTR_STRICTATIME,
    "norelatime": A.MOUNT_ATTR_STRICTATIME, "noatime": A.MOUNT_ATTR_NOATIME,
    "relatime": A.MOUNT_ATTR_RELATIME, "nostrictatime": A.MOUNT_ATTR_RELATIME,
}
# superblock flags: the filesystem's own business, passed to a fresh filesystem as fsconfig flags
_SB_OPTIONS = {"sync", "async", "dirsync", "mand", "nomand", "lazytime", "nolazytime"}
PROPAGATION: dict[str, tuple[int, bool]] = {
    "private": (A.MS_PRIVATE, False), "rprivate": (A.MS_PRIVATE, True),
    "shared": (A.MS_SHARED, False), "rshared": (A.MS_SHARED, True),
    "slave": (A.MS_SLAVE, False), "rslave": (A.MS_SLAVE, True),
    "unbindable": (A.MS_UNBINDABLE, False), "runbindable": (A.MS_UNBINDABLE, True),
}
# options the runtime consumes or that other runtimes define and we accept without effect
_IGNORED_OPTIONS = {"copy-symlink", "notmpcopyup", "defaults", "silent", "loud", "iversion",
                    "noiversion"}

# Files inside /proc that may be the destination of a bind (lxcfs-style emulated files).
PROC_BIND_ALLOWED = {"/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
                      "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
                      "/proc/sys/kernel/ns_last_pid"}


class Plain:
    """Plain attribute records (dataclasses would cost ~17 ms of imports on the create path)."""

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class MountPlan(Plain):
    __slots__ = ("destination", "fstype", "source", "bind", "recursive", "remount", "attr_set", "attr_clr",
                 "atime", "rattr_set", "rattr_clr", "ratime", "propagation", "sb_flags", "data", "uid_map",
                 "gid_map", "idmap_recursive", "tolerate_enoent", "source_fd", "cgroups", "cgroup2_source",
                 "private_cgroupns", "copy_up")

    def __init__(self, destination: str, fstype: str, source: str, *, bind: bool = False,
                 recursive: bool = False, attr_set: int = 0, attr_clr: int = 0, atime: int | None = None,
                 rattr_set: int = 0, propagation: list[tuple[int, bool]] | None = None):
        self.destination = destination
        self.fstype = fstype
        self.source = source
        self.bind = bind
        self.recursive = recursive
        self.remount = False
        self.attr_set = attr_set
        self.attr_clr = attr_clr
        self.atime = atime
        self.rattr_set = rattr_set
        self.rattr_clr = 0
        self.ratime: int | None = None
        self.propagation = list(propagation or [])
        self.sb_flags: list[str] = []
        self.data: list[str] = []
        self.uid_map: list[tuple[int, int, int]] | None = None
        self.gid_map: list[tuple[int, int, int]] | None = None
        self.idmap_recursive = False
        self.tolerate_enoent = False
        self.source_fd = -1  # a detached tree the parent made (mounts.open_mount_sources)
        self.cgroups: list[CgroupHierarchy] | None = None
        self.cgroup2_source: str | None = None  # the container's cgroup2 dir on the host (bind fallback)
        self.private_cgroupns = False
        self.copy_up = False  # tmpcopyup: the tmpfs starts with a copy of what it covers

    @property
    def readonly(self) -> bool:
        return bool(self.attr_set & A.MOUNT_ATTR_RDONLY)

    @property
    def readonly_later(self) -> bool:
        """Read-only only once the whole rootfs is set up: mountpoints of later mounts, device nodes,
        /dev/console and createContainer hooks still write below a /dev or a tmpfs (runc's order too)."""
        return self.readonly and (self.destination == "/dev" or (self.fstype == "tmpfs" and not self.bind))

    def describe(self) -> str:
        return f"mount {self.source if self.bind else self.fstype} on {self.destination}"


def plan_mount(entry: dict, index: int, bundle: str,
                container_maps: tuple[list, list] | None) -> MountPlan:
    destination = entry.get("destination")
    if not destination:
        raise ConfigError(f"mounts[{index}]: destination is required")
    # The kernel sees C strings: a NUL byte would cut a path short, and Python refuses it mid-init.
    for field, text in (("destination", destination), ("source", entry.get("source") or ""),
                        *(("options", o) for o in entry.get("options") or [])):
        if "\0" in str(text):
            raise ConfigError(f"mounts[{index}].{field}: contains a NUL byte")
    dest = paths.clean(destination)
    fstype = entry.get("type") or ""
    source = entry.get("source") or ""
    plan = MountPlan(dest, fstype, source)
    where = f"mount {source or fstype or '(bind)'} on {dest}"
    idmap = None
    for option in entry.get("options") or []:
        if option in _ATTR_OPTIONS:
            add, remove = _ATTR_OPTIONS[option]
            plan.attr_set = (plan.attr_set | add) & ~remove
            plan.attr_clr = (plan.attr_clr | remove) & ~add
        elif option in _ATIME_OPTIONS:
            plan.atime = _ATIME_OPTIONS[option]
        elif option.startswith("r") and option[1:] in _ATTR_OPTIONS:
            add, remove = _ATTR_OPTIONS[option[1:]]
            plan.rattr_set = (plan.rattr_set | add) & ~remove
            plan.rattr_clr = (plan.rattr_clr | remove) & ~add
        elif option.startswith("r") and option[1:] in _ATIME_OPTIONS:
            plan.ratime = _ATIME_OPTIONS[option[1:]]
        elif option in PROPAGATION:
            plan.propagation.append(PROPAGATION[option])
        elif option in ("bind", "rbind"):
            plan.bind = True
            plan.recursive = plan.recursive or option == "rbind"
        elif option in ("idmap", "ridmap"):
            idmap = option
        elif option == "remount":
            plan.remount = True
        elif option == "tmpcopyup":
            plan.copy_up = True
        elif option in _SB_OPTIONS:
            plan.sb_flags.append(option)
        elif option in _IGNORED_OPTIONS or option.startswith("X-mount.") or option.startswith("x-"):
            continue
        elif not option:
            raise ConfigError(f"{where}: empty mount option")
        else:
            plan.data.append(option)
    if fstype == "bind":
        plan.bind = True
    if plan.bind:
        plan.fstype = "bind"
        if not source:
            raise ConfigError(f"{where}: a bind mount needs a source")
        if not os.path.isabs(source):
            plan.source = os.path.normpath(os.path.join(os.path.abspath(bundle), source))
    elif not fstype:
        raise ConfigError(f"{where}: type is required unless the mount is a bind")
    uid_map = id_maps(entry.get("uidMappings"), f"{where}: uidMappings")
    gid_map = id_maps(entry.get("gidMappings"), f"{where}: gidMappings")
    if idmap or uid_map or gid_map:
        if not plan.bind:
            raise ConfigError(f"{where}: idmapped mounts are only supported for bind mounts")
        if bool(uid_map) != bool(gid_map):
            raise ConfigError(f"{where}: uidMappings and gidMappings must be given together")
        if not uid_map:
            if container_maps is None:
                raise ConfigError(f"{where}: {idmap} needs uidMappings and gidMappings, or a user namespace "
                                  "with mappings")
            uid_map, gid_map = container_maps
        plan.uid_map, plan.gid_map = uid_map, gid_map
        plan.idmap_recursive = idmap == "ridmap" or (idmap is None and plan.recursive)
    if dest.startswith("/proc/") and not (plan.bind and dest in PROC_BIND_ALLOWED):
        raise ConfigError(f"{where}: {dest} cannot be mounted because it is inside /proc")
    if dest == "/proc" and fstype != "proc" and not plan.bind:
        raise ConfigError(f"{where}: only a proc filesystem may be mounted on /proc")
    if dest == "/":
        raise ConfigError(f"{where}: mounting over the rootfs itself is not supported")
    return plan


def id_maps(entries: list | None, where: str) -> list[tuple[int, int, int]]:
    maps = []
    for entry in entries or []:
        try:
            container_id, host_id, size = int(entry["containerID"]), int(entry["hostID"]), int(entry["size"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: each entry needs containerID, hostID and size") from None
        if size <= 0 or container_id < 0 or host_id < 0:
            raise ConfigError(f"{where}: invalid mapping {container_id} {host_id} {size}")
        maps.append((container_id, host_id, size))
    return maps


def maps_id(maps: list[tuple[int, int, int]], container_id: int) -> bool:
    return any(start <= container_id < start + size for start, _host, size in maps)


def int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def unescape(text: str) -> str:
    """A path field of /proc/self/mountinfo, its octal escapes undone."""
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
