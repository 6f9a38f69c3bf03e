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
from ocirt.cgroups.hierarchy import (
    UNIFIED,
    V1_CONTROLLERS,
    Mount,
    _clean,
    _fix_hint,
    _is_ancestor_or_same,
    _own_dir,
    _owned,
    _split_resources,
    _user_name,
    detect_mode,
    mounts,
    own_cgroups,
    parse_mountinfo,
)
from ocirt.cgroups.manager import STATE_VERSION, Manager
from ocirt.errors import CgroupError

# typing, signal and enum cost milliseconds at import; this module is on every command's path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEVICES_ROOTLESS_NOTICE", "STATE_VERSION", "UNIFIED", "CgroupError", "Manager", "Mount",
           "container_manager", "detect_mode", "load_manager", "mounts", "open_manager", "own_cgroups", "owner_of",
           "parse_mountinfo"]

DEVICES_ROOTLESS_NOTICE = ("devices cgroup rules are not applied in rootless mode; "
                           "the user namespace already forbids mknod")


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

    Device access is always set where it can be: deny all, then the config's rules, then the default
    devices (see `devices`), through the v1 devices controller or, on a pure cgroup v2 host, a device
    program. Rootless, only rules the config names are seen (and refused with a notice): the user namespace
    already keeps the container from making nodes.
    """
    mode = detect_mode()
    table = mounts()
    if ((mode != "v2" and "devices" in table.v1) or (mode == "v2" and not rootless)
            or (resources or {}).get("devices")):
        resources = devices.with_rules(resources)
    if systemd:
        from ocirt.cgroups.systemd import open_systemd_manager

        return open_systemd_manager(container_id, cgroups_path, rootless=rootless, resources=resources,
                                    annotations=annotations, owner=owner)
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

        return load_systemd_manager(saved, owner=owner, init_pid=init_pid)
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
    preexisting = saved.get("preexisting")
    if saved.get("creating") and isinstance(preexisting, list):
        manager._fresh = set(manager._planned_chain()) - {str(item) for item in preexisting}
    if owner is not None:
        manager._verify(init_pid)
        if saved.get("creating"):
            # Saved before create() ran, by a create that then died: what it made is what carries its tag
            # (create() tags each directory as it makes it).
            manager._made = manager._tagged_made()
    return manager
