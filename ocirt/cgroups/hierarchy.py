"""The cgroup hierarchies of this host: what is mounted where (v1, hybrid or v2), which cgroups the caller
and a given process are in, and the path rules every driver shares. No cgroup is written here."""

from __future__ import annotations

import os
import posixpath

from ocirt.errors import CgroupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


V1_CONTROLLERS = ("cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "blkio", "pids", "hugetlb",
                  "net_cls", "net_prio", "perf_event", "rdma", "misc", "name=systemd")
UNIFIED = "unified"


class Mount:
    """Where a hierarchy is mounted, and which cgroup of it the mount shows as its root."""

    __slots__ = ("mountpoint", "root")

    def __init__(self, mountpoint: str, root: str):
        self.mountpoint = mountpoint
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and (self.mountpoint, self.root) == (other.mountpoint, other.root)

    def __hash__(self) -> int:
        return hash((self.mountpoint, self.root))

    def __repr__(self) -> str:
        return f"Mount({self.mountpoint!r}, {self.root!r})"


class _MountTable:
    __slots__ = ("v1", "v2")

    def __init__(self, v1_mounts: dict[str, Mount], v2_mount: Mount | None):
        self.v1 = v1_mounts
        self.v2 = v2_mount


_mount_cache: dict[str, Any] = {}


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal escapes."""
    if "\\" not in field:
        return field
    raw = field.encode()
    out = bytearray()
    index = 0
    while index < len(raw):
        chunk = raw[index + 1:index + 4]
        if raw[index] == 0x5C and len(chunk) == 3 and all(0x30 <= byte <= 0x37 for byte in chunk):
            out.append(int(chunk, 8))
            index += 4
        else:
            out.append(raw[index])
            index += 1
    return out.decode(errors="surrogateescape")


def parse_mountinfo(text: str) -> _MountTable:
    """cgroup mounts from mountinfo text; the first mount of each hierarchy wins."""
    v1_mounts: dict[str, Mount] = {}
    v2_mount: Mount | None = None
    for line in text.splitlines():
        if "cgroup" not in line:
            continue
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        fstype = fields[separator + 1]
        mount = Mount(_unescape(fields[4]), _unescape(fields[3]))
        if fstype == "cgroup2":
            if v2_mount is None:
                v2_mount = mount
        elif fstype == "cgroup":
            for option in fields[separator + 3].split(","):
                if (option in V1_CONTROLLERS or option.startswith("name=")) and option not in v1_mounts:
                    v1_mounts[option] = mount
    return _MountTable(v1_mounts, v2_mount)


def mounts() -> _MountTable:
    """The cgroup mounts of this process, cached."""
    table = _mount_cache.get("table")
    if table is None:
        with open("/proc/self/mountinfo") as handle:
            table = parse_mountinfo(handle.read())
        _mount_cache["table"] = table
    return table


def detect_mode() -> str:
    """"v1", "v2" or "hybrid" (v1 controllers plus a cgroup2 mount beside them)."""
    table = mounts()
    has_v1 = any(not name.startswith("name=") for name in table.v1)
    if has_v1 and table.v2 is not None:
        return "hybrid"
    if has_v1:
        return "v1"
    if table.v2 is not None:
        return "v2"
    raise CgroupError("no cgroup filesystem is mounted (see /proc/self/mountinfo)")


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """controller -> cgroup path from /proc/<pid>/cgroup; the v2 entry is under the key "unified"."""
    cached = _mount_cache.get("own") if pid == "self" else None
    if cached is not None:
        return cached
    result: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as handle:
        for line in handle:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            if parts[1] == "":
                result[UNIFIED] = parts[2]
            else:
                for controller in parts[1].split(","):
                    result[controller] = parts[2]
    if pid == "self":
        _mount_cache["own"] = result
    return result


def _clean(inner: str) -> str:
    """Normalise a cgroupsPath so that `..` can never climb out of the hierarchy."""
    cleaned = posixpath.normpath("/" + inner).lstrip("/")
    return "/" + cleaned if inner.startswith("/") else cleaned


def _own_dir(mount: Mount, own_path: str | None) -> str:
    own_path = own_path or "/"
    if mount.root != "/" and (own_path == mount.root or own_path.startswith(mount.root + "/")):
        own_path = own_path[len(mount.root):] or "/"
    return posixpath.join(mount.mountpoint, own_path.lstrip("/")).rstrip("/") or "/"


def _is_ancestor_or_same(candidate: str, path: str) -> bool:
    return path == candidate or path.startswith(candidate.rstrip("/") + "/")


def _inside(directory: str, mount: Mount) -> bool:
    """A real directory strictly below the mount point, named without `..`, `.` or symlinks."""
    return posixpath.isabs(directory) and posixpath.normpath(directory) == directory and \
        directory.startswith(mount.mountpoint.rstrip("/") + "/") and os.path.realpath(directory) == directory


def _owned(directory: str) -> bool:
    try:
        return os.stat(directory).st_uid == os.geteuid()
    except OSError:
        return False


def _user_name() -> str:
    """The caller as the host names it. In a user namespace someone else made (rootless podman runs the
    runtime so) euid 0 is the user who owns that namespace, not the host's root."""
    import pwd

    uid = outer_uid(os.geteuid())
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def outer_uid(uid: int) -> int:
    """``uid`` as the host sees it: in a user namespace (rootless podman runs us in one) the outer one."""
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(field) for field in line.split())
                if inside <= uid < inside + count:
                    return outside + uid - inside
    except (OSError, ValueError):
        pass
    return uid


def _fix_hint(user: str, controllers: list[str]) -> str:
    return f"run `ocirt cgroup delegate --user {user} --controllers {','.join(controllers)}` as root"


def _split_resources(mode: str, table: _MountTable, resources: dict | None) -> tuple[dict | None, dict | None]:
    """On a hybrid host, the limits of controllers that only cgroup2 offers go to the unified tree."""
    if mode != "hybrid" or not resources:
        return resources, None
    unified_part: dict[str, Any] = {}
    v1_part = dict(resources)
    if "hugetlb" not in table.v1 and resources.get("hugepageLimits"):
        unified_part["hugepageLimits"] = v1_part.pop("hugepageLimits")
    if resources.get("unified"):
        unified_part["unified"] = v1_part.pop("unified")
    return v1_part, unified_part
