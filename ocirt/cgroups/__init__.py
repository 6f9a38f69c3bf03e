"""One cgroup manager for v1, v2 and hybrid hosts, rootful or rootless (delegated).

Paths are resolved the way runc's cgroupfs driver does it: an absolute cgroupsPath lives under each
controller's mount, a relative one beneath the caller's own cgroup of that controller, and an absent
one defaults to the relative path `<container id>`. Rootless, "the caller's own cgroup" is replaced by
a cgroup the user owns: its own one when it owns it, else the subtree `ocirt/<user>` that
`ocirt cgroup delegate` made for it.
"""

from __future__ import annotations

import os
import posixpath

from ocirt.cgroups import devices, fs, v1, v2
from ocirt.errors import CgroupError

# typing, signal and enum cost milliseconds at import; this module is on every command's path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SIGKILL = 9

__all__ = ["DEVICES_ROOTLESS_NOTICE", "STATE_VERSION", "UNIFIED", "CgroupError", "Manager", "Mount",
           "container_manager", "detect_mode", "load_manager", "mounts", "open_manager", "own_cgroups", "owner_of",
           "parse_mountinfo"]

V1_CONTROLLERS = ("cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "blkio", "pids", "hugetlb",
                  "net_cls", "net_prio", "perf_event", "rdma", "misc", "name=systemd")
UNIFIED = "unified"
STATE_VERSION = 1
DEVICES_ROOTLESS_NOTICE = ("devices cgroup rules are not applied in rootless mode; "
                           "the user namespace already forbids mknod")
# The directory listed by pids(): the first of these the manager has.
_PIDS_SOURCES = ("pids", "freezer", "memory", "cpu", "cpuacct", "blkio", "cpuset", "devices", "name=systemd", UNIFIED)


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


def warm_migrations(rootless: bool) -> v1.MigrationWarmer | None:
    """As root on a v1 or hybrid host, start paying the first migration's wait in the background
    (v1.MigrationWarmer); None where no write to a v1 cgroup.procs will follow (rootless, pure v2)."""
    if rootless or os.geteuid() != 0:
        return None
    try:
        table = mounts()
        own = own_cgroups()
    except (OSError, CgroupError):
        return None  # open_manager reports it
    for key, mount in table.v1.items():
        return v1.MigrationWarmer(os.path.join(_own_dir(mount, own.get(key)), "cgroup.procs"))
    return None


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

    uid = _outer_uid(os.geteuid())
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _outer_uid(uid: int) -> int:
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


class _Resolver:
    """Turns (cgroupsPath, rootless) into one directory per hierarchy.

    Rootful, the path is runc's. Rootless, a hierarchy is used where the caller may create (or already
    owns) the directory, decided from the target path as runc decides: its nearest existing ancestor must
    be writable by the caller. A relative path is tried beneath the caller's own cgroup first (which covers
    a subtree root delegated there, such as `<own cgroup>/sandbox`), then beneath `ocirt/<user>`, the
    default subtree of `ocirt cgroup delegate`.
    """

    def __init__(self, container_id: str, cgroups_path: str | None, rootless: bool, pure_v2: bool = False):
        self.pure_v2 = pure_v2
        self.inner = _clean(cgroups_path) if cgroups_path else container_id
        if self.inner in ("", "/"):
            raise CgroupError(f"cgroupsPath {cgroups_path!r} names the root cgroup; a container needs its own")
        self.explicit = bool(cgroups_path)
        self.rootless = rootless
        self.own = own_cgroups()
        self.user = _user_name() if rootless else ""
        # The first directory the caller could not use, for the message when none is usable.
        self.refused: str | None = None

    def own_dir(self, mount: Mount, key: str) -> str:
        """The caller's own cgroup in this hierarchy (what it migrates from, and what is never the container's)."""
        return _own_dir(mount, self.own.get(key))

    def base_dir(self, mount: Mount, key: str) -> str:
        own_dir = self.own_dir(mount, key)
        if key == UNIFIED and self.pure_v2 and own_dir != mount.mountpoint.rstrip("/"):
            # As runc: beside our own cgroup, not in it. On v2 a cgroup that holds processes (ours does)
            # can give no controller to its children.
            own_dir = posixpath.dirname(own_dir)
        return own_dir

    def candidates(self, mount: Mount, key: str) -> list[str]:
        if self.inner.startswith("/"):
            found = [posixpath.join(mount.mountpoint, self.inner.lstrip("/"))]
        else:
            found = [posixpath.join(self.base_dir(mount, key), self.inner)]
            if self.rootless:
                delegated = posixpath.join(mount.mountpoint, "ocirt", self.user)
                if os.path.isdir(delegated) and _owned(delegated):
                    found.append(posixpath.join(delegated, self.inner))
        own_dir = self.own_dir(mount, key)
        for path in found:
            if path.rstrip("/") == mount.mountpoint.rstrip("/") or _is_ancestor_or_same(path, own_dir):
                raise CgroupError(f"refusing cgroup {path} for the container: it holds the runtime's own cgroup")
        return found

    def directory(self, mount: Mount, key: str, *, unified: bool = False) -> str | None:
        """The directory to use in this hierarchy, or None (rootless) when the caller may use none."""
        found = self.candidates(mount, key)
        if not self.rootless:
            return found[0]
        for path in found:
            usable = fs.migratable(path, self.own_dir(mount, key)) if unified else \
                fs.writable(path, ancestor_procs=False)
            if usable:
                return path
        self.refused = self.refused or found[0]
        return None

    def no_usable_path(self) -> CgroupError:
        """Rootless, a cgroupsPath the config names and the caller can use nowhere is an error, as in runc."""
        where = f" (e.g. {self.refused}: permission denied)" if self.refused else ""
        return CgroupError(f"cannot use cgroupsPath {self.inner!r}: user {self.user} may not create or join it in "
                           f"any cgroup hierarchy{where}; run `ocirt cgroup delegate --user {self.user}` as root, "
                           "or leave linux.cgroupsPath out to run without cgroup limits")


def open_manager(container_id: str, cgroups_path: str | None, *, rootless: bool,
                 resources: dict | None, owner: str | None = None, systemd: bool = False,
                 annotations: dict | None = None) -> Manager:
    """The manager of a new container. ``owner`` (its state directory) tags the cgroups create() makes.

    Device access is always set where a devices controller exists: deny all, then the config's rules, then
    the default devices (see `devices`); on a pure cgroup v2 host only when the config names rules.
    """
    mode = detect_mode()
    table = mounts()
    if (mode != "v2" and "devices" in table.v1) or (resources or {}).get("devices"):
        resources = devices.with_rules(resources)
    if systemd:
        from ocirt.cgroups.systemd import open_systemd_manager

        return open_systemd_manager(container_id, cgroups_path, rootless=rootless, resources=resources,
                                    annotations=annotations)
    resolver = _Resolver(container_id, cgroups_path, rootless, pure_v2=mode == "v2")
    notices: list[str] = []
    paths: dict[str, str] = {}
    skipped: list[str] = []

    v1_resources, unified_resources = _split_resources(mode, table, resources)
    if mode == "v2":
        steps_v2 = v2.plan(resources, notices, rootless=rootless)
        assert table.v2 is not None
        directory = resolver.directory(table.v2, UNIFIED, unified=True)
        if directory is None:
            needed = sorted(v2.controllers_needed(steps_v2))
            if needed:
                raise CgroupError(f"cannot apply {', '.join(needed)} limits: no cgroup v2 subtree is delegated "
                                  f"to user {resolver.user}; {_fix_hint(resolver.user, needed)}")
            if resolver.explicit:
                raise resolver.no_usable_path()
            notices.append(f"no cgroup is delegated to user {resolver.user}: cgroup limits are not applied")
        else:
            paths[UNIFIED] = directory
            if rootless:
                _report_undelegated(directory, v2.controllers_needed(steps_v2), resolver.user, notices)
        return Manager(container_id, mode, rootless, paths, table.v2.mountpoint, resources, notices, owner=owner)

    steps_v1 = v1.plan(v1_resources, notices)
    needed_v1 = {controller for controller, _name, _value in steps_v1}
    for controller in V1_CONTROLLERS:
        mount = table.v1.get(controller)
        if mount is None:
            continue
        if rootless and controller == "devices":
            notices.append(DEVICES_ROOTLESS_NOTICE)
            continue
        directory = resolver.directory(mount, controller)
        if directory is not None:
            paths[controller] = directory
        elif controller in needed_v1:
            raise CgroupError(f"cannot apply {controller} limits: the {controller} cgroup is not delegated to "
                              f"user {resolver.user}; {_fix_hint(resolver.user, [controller])}")
        elif not controller.startswith("name="):
            skipped.append(controller)
    for controller in sorted(needed_v1 - set(paths)):
        if not (rootless and controller == "devices"):
            raise CgroupError(f"cannot apply {controller} limits: the {controller} cgroup controller is not "
                              "mounted on this host")

    v2_mountpoint = None
    if mode == "hybrid" and table.v2 is not None:
        v2_mountpoint = table.v2.mountpoint
        steps_v2 = v2.plan(unified_resources, notices)
        # Rootless, the cgroup2 tree is joined where the kernel lets the caller move itself there (the
        # common ancestor's cgroup.procs is writable): a limit there then works, and an exec'd process
        # lands in the container's cgroup2 directory like the init. Where it may not, only a limit that
        # lives in cgroup2 makes that an error.
        directory = resolver.directory(table.v2, UNIFIED, unified=True)
        if directory is not None:
            paths[UNIFIED] = directory
        elif steps_v2:
            needed = sorted(v2.controllers_needed(steps_v2)) or ["unified"]
            raise CgroupError(f"cannot apply {', '.join(needed)} limits: no cgroup v2 subtree is delegated "
                              f"to user {resolver.user}; {_fix_hint(resolver.user, needed)}")
    if rootless and resolver.explicit and not paths:
        raise resolver.no_usable_path()
    if skipped:
        notices.append(f"cgroup controllers not delegated to user {resolver.user}, so not used: "
                       f"{', '.join(skipped)}")
    return Manager(container_id, mode, rootless, paths, v2_mountpoint, resources, notices, owner=owner)


def _report_undelegated(directory: str, needed: set[str], user: str, notices: list[str]) -> None:
    """Rootless v2: refuse limits on controllers the user was not given, and say which ones it lacks."""
    base = directory
    while not os.path.isdir(base) and posixpath.dirname(base) != base:
        base = posixpath.dirname(base)
    missing = v2.missing_for_user(base)
    if not missing:
        return
    hint = v2._delegation_hint(base)
    refused = sorted(needed & set(missing))
    if refused:
        # Not systemd's delegation (user@UID.service): then `ocirt cgroup delegate` is the fix.
        fix = hint or f"; {_fix_hint(user, refused)}"
        raise CgroupError(f"cannot apply {', '.join(refused)} limits: user {user} was not given the "
                          f"{', '.join(refused)} controller{'s' if len(refused) > 1 else ''} in {base}{fix}")
    notices.append(f"cgroup controllers not delegated to user {user}, so not used: {' '.join(missing)}{hint}")


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


def container_manager(container: Any) -> Manager | None:
    """The cgroups of a `state.Container`, verified against what its create made; None when it has none."""
    saved = container.runtime.get("cgroup")
    if not saved:
        return None
    return load_manager(saved, owner=owner_of(container.dir),
                        init_pid=container.pid if container.init_alive() else None)


def owner_of(state_dir: str) -> str:
    """What a container's cgroups are tagged with: its state directory, as one canonical path."""
    return os.path.realpath(state_dir)


def load_manager(saved: dict, *, owner: str | None = None, init_pid: int | None = None) -> Manager:
    """The manager of an existing container, from its saved state.

    With ``owner`` (the container's state directory) the saved paths are not taken on trust: a path is the
    container's only if it lies in its hierarchy and carries the tag create() set for this owner, or, where
    the kernel keeps tags off cgroups, if ``init_pid`` (the container's live init) is in it. Anything else is
    dropped with a warning, so no command signals, freezes, limits or removes a cgroup a state file merely
    names. Without ``owner`` (library use) the state is trusted as it is.
    """
    if saved.get("version") != STATE_VERSION:
        raise CgroupError(f"unsupported cgroup state version {saved.get('version')!r}")
    if saved.get("driver") == "systemd":
        from ocirt.cgroups.systemd import load_systemd_manager

        return load_systemd_manager(saved)
    try:
        container_id = str(saved["container_id"])
        mode = str(saved["mode"])
        rootless = bool(saved["rootless"])
        paths = {str(key): str(value) for key, value in dict(saved["paths"]).items()}
        made_list = saved.get("made")
        made = None if made_list is None else [str(item) for item in made_list]
        v2_mount = saved.get("v2_mount")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CgroupError("the saved cgroup state is malformed") from None
    manager = Manager(container_id, mode, rootless, paths, v2_mount if isinstance(v2_mount, str) else None,
                      None, [], owner=owner)
    manager._made = made
    if owner is not None:
        manager._verify(init_pid)
        if saved.get("creating"):
            # Saved before create() ran, by a create that then died: what it made is what carries its tag
            # (create() tags each directory as it makes it).
            manager._made = manager._tagged_made()
    return manager


class Manager:
    def __init__(self, container_id: str, mode: str, rootless: bool, paths: dict[str, str],
                 v2_mount: str | None, resources: dict | None, notices: list[str], *, owner: str | None = None):
        self.container_id = container_id
        self.mode = mode
        self.rootless = rootless
        self._paths = paths
        self._v2_mount = v2_mount
        self._resources = resources
        self.notices: list[str] = notices
        self._owner = owner
        # Every directory create() made, top-down: the container's own cgroups and the parents it had to
        # make for them. None for a state saved before ocirt kept this list.
        self._made: list[str] | None = []

    # -- layout ---------------------------------------------------------------------------------

    def paths(self) -> dict[str, str]:
        return dict(self._paths)

    def _directories(self) -> list[str]:
        """Each distinct directory once (co-mounted controllers share one), unified last."""
        seen: list[str] = []
        for key, directory in self._paths.items():
            if key != UNIFIED and directory not in seen:
                seen.append(directory)
        if UNIFIED in self._paths:
            seen.append(self._paths[UNIFIED])
        return seen

    def _check_safe(self, directory: str) -> None:
        """Never touch a mount root or the cgroup the runtime itself runs in (or its parents)."""
        table = mounts()
        all_mounts = list(table.v1.items()) + ([(UNIFIED, table.v2)] if table.v2 else [])
        own = own_cgroups()
        for key, mount in all_mounts:
            if not _is_ancestor_or_same(mount.mountpoint, directory):
                continue
            if directory.rstrip("/") == mount.mountpoint.rstrip("/") or \
                    _is_ancestor_or_same(directory, _own_dir(mount, own.get(key))):
                raise CgroupError(f"refusing to modify {directory}: it holds the runtime's own cgroup")

    # -- ownership ------------------------------------------------------------------------------

    def _tag_value(self, kind: str) -> str:
        return f"{kind} {self._owner}"

    def _hierarchy_of(self, key: str) -> Mount | None:
        table = mounts()
        return table.v2 if key == UNIFIED else table.v1.get(key)

    def _verify(self, init_pid: int | None) -> None:
        name = fs.tag_name(self.rootless)
        ours = (self._tag_value("made"), self._tag_value("joined"))
        kept: dict[str, str] = {}
        for key, directory in self._paths.items():
            mount = self._hierarchy_of(key)
            if mount is None or not _inside(directory, mount):
                continue
            tag = fs.get_tag(directory, name)
            if tag in ours or (tag == fs.UNSUPPORTED and self._untagged_is_ours(directory)):
                kept[key] = directory
        # The live init's own cgroups are the container's where they carry its tag, whatever the state says;
        # where the kernel keeps tags off cgroups, the init being in the saved directory is the proof.
        init_cgroups: dict[str, str] = {}
        if init_pid:
            try:
                init_cgroups = own_cgroups(init_pid)
            except OSError:
                init_cgroups = {}
        table = mounts()
        hierarchies = list(table.v1.items()) + ([(UNIFIED, table.v2)] if table.v2 is not None else [])
        for key, mount in hierarchies:
            if key in kept or key not in init_cgroups:
                continue
            directory = _own_dir(mount, init_cgroups[key])
            if not _inside(directory, mount):
                continue
            tag = fs.get_tag(directory, name)
            if tag in ours or (tag == fs.UNSUPPORTED and self._paths.get(key) == directory):
                kept[key] = directory
        for key, directory in self._paths.items():
            if kept.get(key) != directory:
                from ocirt import log

                log.warning(f"container {self.container_id!r}: its state names cgroup {directory}, which is not "
                            "verifiably the container's: left alone")
        self._paths = kept
        if self._made is not None:
            def made_here(directory: str) -> bool:
                if not any(_inside(directory, mount) for _key, mount in hierarchies):
                    return False
                tag = fs.get_tag(directory, name)
                if tag == fs.UNSUPPORTED:
                    # Without tags: a parent counts only as an ancestor of a verified cgroup of the container.
                    return any(_is_ancestor_or_same(directory, leaf) for leaf in kept.values())
                return tag == self._tag_value("made")

            self._made = [directory for directory in self._made if made_here(directory)]

    def _tagged_made(self) -> list[str]:
        """The container's directories and their parents that carry its "made" tag, top-down."""
        name = fs.tag_name(self.rootless)
        made: list[str] = []
        for key, leaf in self._paths.items():
            mount = self._hierarchy_of(key)
            if mount is None:
                continue
            chain = []
            directory = leaf
            while _inside(directory, mount):
                chain.append(directory)
                directory = posixpath.dirname(directory)
            for directory in reversed(chain):
                if directory not in made and fs.get_tag(directory, name) == self._tag_value("made"):
                    made.append(directory)
        return made

    def _untagged_is_ours(self, directory: str) -> bool:
        """Where the kernel keeps tags off cgroups: rootless, a cgroup of the state directory's owner (who could
        remove it anyway); as root, one named after the container, as the default path names it."""
        if self.rootless:
            try:
                return os.stat(directory).st_uid == os.stat(self._owner or "/").st_uid
            except OSError:
                return False
        return posixpath.basename(directory) == self.container_id

    def _tag_made(self, directory: str) -> None:
        if self._owner is not None:
            fs.set_tag(directory, fs.tag_name(self.rootless), self._tag_value("made"))

    def _tag_joined(self, created: list[str]) -> None:
        if self._owner is None:
            return
        name = fs.tag_name(self.rootless)
        for directory in self._directories():
            # A cgroup that was there before is the container's while it runs, but not ocirt's to remove;
            # one that another container already tagged stays that container's.
            if directory not in created and fs.get_tag(directory, name) is None:
                fs.set_tag(directory, name, self._tag_value("joined"))

    # -- lifecycle ------------------------------------------------------------------------------

    def create(self) -> None:
        created: list[str] = []
        try:
            for key, directory in self._paths.items():
                self._check_safe(directory)
                made_before = len(created)
                fs.make_dirs(directory, created)
                # Tagged as soon as they exist: a create killed from here on leaves directories that say
                # they are this container's.
                for new in created[made_before:]:
                    self._tag_made(new)
                if key == "cpuset":
                    mount = self._hierarchy_of(key)
                    if mount is not None:
                        v1.ensure_cpuset(mount.mountpoint, directory)
            self._refuse_frozen()
            # open_manager already reported this plan's notices; a second copy would only repeat them.
            self._write(self._resources, [])
            self._tag_joined(created)
            self._made = created
        except BaseException:
            # Only what this call made, deepest first: a parent it made may meanwhile hold another
            # container's cgroup, and then its rmdir fails and it stays.
            for directory in reversed(created):
                fs.remove_one(directory)
            raise

    def _refuse_frozen(self) -> None:
        """A container joined to a frozen cgroup would hang at its first instruction (spec: MUST be an error)."""
        try:
            kind, directory = self._freezer()
        except CgroupError:
            return
        if kind == "v1":
            state = fs.read_or_none(directory, "freezer.state")
            frozen = state in ("FROZEN", "FREEZING")
            how = "by an ancestor" if fs.read_or_none(directory, "freezer.parent_freezing") == "1" else state
        else:
            frozen = v2.is_frozen(directory)
            how = "frozen"
        if frozen:
            raise CgroupError(f"cannot create container {self.container_id!r}: its cgroup {directory} is frozen "
                              f"({how}); thaw it first")

    def apply(self, pid: int) -> None:
        """Move ``pid`` into every hierarchy of the container; one that refuses does not keep it out of the
        others (an exec'd process then still lands in the cgroup2 directory, which comes last)."""
        failures: list[str] = []
        for directory in self._directories():
            try:
                fs.write(directory, "cgroup.procs", str(pid))
            except CgroupError as err:
                failures.append(f"{directory}: {str(err).rsplit(': ', 1)[-1]}")
        if failures:
            raise CgroupError(f"cannot move process {pid} into cgroup {'; '.join(failures)}")

    def update(self, resources: dict) -> None:
        if resources.get("devices") is not None:
            # A new rule list replaces the old one the way create applied it: deny all, the rules, the defaults.
            resources = devices.with_rules(resources)
        self._write(resources, self.notices)

    def _write(self, resources: dict | None, notices: list[str]) -> None:
        if not resources:
            return
        table = mounts()
        if self.mode == "v2":
            steps = v2.plan(resources, notices, rootless=self.rootless)
            directory = self._paths.get(UNIFIED)
            if directory is None:
                if steps:
                    raise CgroupError("cannot apply cgroup limits: the container has no cgroup")
                return
            v2.enable_controllers(self._v2_mount or "", directory, v2.controllers_needed(steps),
                                  rootless=self.rootless)
            v2.write_steps(steps, directory)
            return
        v1_part, unified_part = _split_resources(self.mode, table, resources)
        steps_v1 = v1.plan(v1_part, notices)
        if self.rootless:
            steps_v1 = [step for step in steps_v1 if step[0] != "devices"]
            missing = sorted({step[0] for step in steps_v1} - set(self._paths))
            if missing:
                user = _user_name()
                raise CgroupError(f"cannot apply {', '.join(missing)} limits: not delegated to user {user}; "
                                  f"{_fix_hint(user, missing)}")
        v1.write_steps(steps_v1, self._paths)
        if unified_part:
            steps_v2 = v2.plan(unified_part, notices)
            directory = self._paths.get(UNIFIED)
            if steps_v2 and directory is None:
                raise CgroupError("cannot apply hugetlb or unified limits: the container has no cgroup v2 directory")
            if steps_v2:
                assert directory is not None
                v2.enable_controllers(self._v2_mount or "", directory, v2.controllers_needed(steps_v2))
                v2.write_steps(steps_v2, directory)

    # -- freezer --------------------------------------------------------------------------------

    def _freezer(self) -> tuple[str, str]:
        if "freezer" in self._paths:
            return "v1", self._paths["freezer"]
        if UNIFIED in self._paths and fs.exists(self._paths[UNIFIED], "cgroup.freeze"):
            return "v2", self._paths[UNIFIED]
        hint = f"; {_fix_hint(_user_name(), ['freezer'])}" if self.rootless else ""
        raise CgroupError(f"cannot freeze container {self.container_id}: no freezer cgroup{hint}")

    def freeze(self) -> None:
        kind, directory = self._freezer()
        (v1.freeze if kind == "v1" else v2.freeze)(directory)

    def thaw(self) -> None:
        kind, directory = self._freezer()
        (v1.thaw if kind == "v1" else v2.thaw)(directory)

    def is_frozen(self) -> bool:
        try:
            kind, directory = self._freezer()
        except CgroupError:
            return False
        return (v1.is_frozen if kind == "v1" else v2.is_frozen)(directory)

    # -- processes ------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        for key in _PIDS_SOURCES:
            directory = self._paths.get(key)
            if directory and os.path.isdir(directory):
                return fs.procs_recursive(directory)
        return []

    def kill_all(self, sig: int) -> None:
        if sig == _SIGKILL and UNIFIED in self._paths and os.path.isdir(self._paths[UNIFIED]):
            if fs.procs_recursive(self._paths[UNIFIED]) or self.mode == "v2":
                if v2.kill(self._paths[UNIFIED]):
                    # A task frozen by the v1 freezer only dies once thawed.
                    if "freezer" in self._paths and self.is_frozen():
                        self.thaw()
                    return
        # Freezing first stops the tasks from forking new ones between listing and signalling.
        frozen_here = False
        try:
            if not self.is_frozen():
                self.freeze()
                frozen_here = True
        except CgroupError:
            pass
        try:
            for pid in self.pids():
                if pid == os.getpid():
                    continue
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
        finally:
            if frozen_here or sig == _SIGKILL:
                try:
                    self.thaw()
                except CgroupError:
                    pass

    # -- reporting ------------------------------------------------------------------------------

    def stats(self) -> dict:
        if self.mode == "v2":
            directory = self._paths.get(UNIFIED)
            return v2.stats(directory) if directory else {"cpu": {}, "memory": {}, "pids": {}, "blkio": {},
                                                             "hugetlb": {}}
        data = v1.stats(self._paths)
        if not data["hugetlb"] and UNIFIED in self._paths and os.path.isdir(self._paths[UNIFIED]):
            data["hugetlb"] = v2.hugetlb_stats(self._paths[UNIFIED])
        return data

    def oom_eventfd(self) -> int | None:
        if self.mode == "v2" or "memory" not in self._paths:
            return None
        return v1.oom_eventfd(self._paths["memory"])

    def destroy(self, timeout: float = 2.0) -> None:
        """Remove the cgroups create() made, and the parents it made for them; `timeout` bounds the wait for
        a busy cgroup to empty. A cgroup that was there before keeps existing (only the tag goes)."""
        first_error: CgroupError | None = None
        made = None if self._made is None else set(self._made)
        leaves = self._directories()
        name = fs.tag_name(self.rootless)
        for directory in leaves:
            try:
                self._check_safe(directory)
                if made is None or directory in made:
                    fs.remove_tree(directory, timeout)
                elif self._owner is not None and fs.get_tag(directory, name) == self._tag_value("joined"):
                    fs.remove_tag(directory, name)
            except CgroupError as err:
                first_error = first_error or err
        # The parents, deepest first; one that now holds another container's cgroup stays.
        for directory in reversed(self._made or []):
            if directory in leaves or not os.path.isdir(directory) or fs.has_children(directory):
                continue
            try:
                self._check_safe(directory)
            except CgroupError:
                continue
            fs.remove_one(directory)
        if first_error is not None:
            raise first_error

    def to_state(self) -> dict:
        state = {"version": STATE_VERSION, "container_id": self.container_id, "mode": self.mode,
                 "rootless": self.rootless, "paths": dict(self._paths), "v2_mount": self._v2_mount}
        if self._made is not None:
            state["made"] = list(self._made)
        return state
