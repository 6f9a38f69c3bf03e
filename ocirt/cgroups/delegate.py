"""Root-only helper behind `ocirt cgroup delegate`: give a user a cgroup subtree it may manage.

On cgroup v1 the kernel lets an unprivileged user create child cgroups, move its own processes in
and set their limits once it owns the directory and its `cgroup.procs`/`tasks`. The limit files of
the delegated level itself are chowned too, so the user can also cap that level; an administrator
who wants a cap the user cannot lift sets it one level up (on `ocirt/`).
On cgroup v2 the kernel's delegation contract is the directory plus `cgroup.procs`,
`cgroup.threads` and `cgroup.subtree_control`, with the controllers enabled in every ancestor.
"""

from __future__ import annotations

import os
import posixpath
import stat

from ocirt.cgroups import detect_mode, fs, mounts, v1, v2
from ocirt.errors import CgroupError, why

DEFAULT_CONTROLLERS = ("memory", "blkio", "cpu", "pids")
_V1_OWNED_FILES = ("cgroup.procs", "tasks")
_V2_OWNED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


def default_path(user: str) -> str:
    return f"ocirt/{user}"


def _lookup(user: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise CgroupError(f"cannot delegate cgroups: no user named {user!r}") from None
    return entry.pw_uid, entry.pw_gid


def _clean_relative(path: str) -> str:
    cleaned = posixpath.normpath("/" + path).lstrip("/")
    if not cleaned:
        raise CgroupError(f"cannot delegate the root cgroup (path {path!r})")
    return cleaned


class _Target:
    """One hierarchy to delegate in: where it is mounted and which controllers' files to hand over."""

    def __init__(self, mountpoint: str, prefixes: set[str], unified: bool):
        self.mountpoint = mountpoint
        self.prefixes = prefixes
        self.unified = unified


def _targets(controllers: list[str]) -> list[_Target]:
    table = mounts()
    mode = detect_mode()
    targets: dict[str, _Target] = {}

    def add(mountpoint: str, controller: str, unified: bool) -> None:
        target = targets.setdefault(mountpoint, _Target(mountpoint, set(), unified))
        target.prefixes.add(controller)

    v2_available: set[str] = set()
    if table.v2 is not None:
        v2_available = set((fs.read_or_none(table.v2.mountpoint, "cgroup.controllers") or "").split())
    for controller in controllers:
        if mode == "v2" and controller == "blkio":
            controller = "io"
        mount = table.v1.get(controller) if mode != "v2" else None
        if mount is not None:
            # Co-mounted controllers (cpu,cpuacct) share the directory and each brings its files.
            for name, other in table.v1.items():
                if other == mount and not name.startswith("name="):
                    add(mount.mountpoint, name, False)
            if controller == "cpu" and "cpuacct" in table.v1:
                add(table.v1["cpuacct"].mountpoint, "cpuacct", False)
        elif table.v2 is not None and controller in v2_available:
            add(table.v2.mountpoint, controller, True)
        else:
            raise CgroupError(f"cannot delegate the {controller} controller: it is not mounted on this host")
    return list(targets.values())


def _chown_level(directory: str, target: _Target, uid: int, gid: int) -> None:
    os.chown(directory, uid, gid)
    owned = _V2_OWNED_FILES if target.unified else _V1_OWNED_FILES
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if not os.path.isfile(full):
            continue
        is_limit_file = name.split(".", 1)[0] in target.prefixes and os.stat(full).st_mode & stat.S_IWUSR
        if name in owned or is_limit_file:
            os.chown(full, uid, gid)


def delegate(user: str, controllers: list[str] | None = None, path: str | None = None) -> list[str]:
    """Create `<mount>/<path>` in each controller's hierarchy, owned by `user`; return the directories."""
    if os.geteuid() != 0:
        raise CgroupError("delegating cgroups needs root")
    uid, gid = _lookup(user)
    relative = _clean_relative(path or default_path(user))
    targets = _targets(list(controllers or DEFAULT_CONTROLLERS))
    created: list[str] = []
    directories: list[str] = []
    try:
        for target in targets:
            directory = posixpath.join(target.mountpoint, relative)
            if target.unified:
                fs.make_dirs(directory, created)
                v2.enable_controllers(target.mountpoint, directory, target.prefixes)
            else:
                fs.make_dirs(directory, created)
                if "cpuset" in target.prefixes:
                    v1.ensure_cpuset(target.mountpoint, directory)
            _chown_level(directory, target, uid, gid)
            directories.append(directory)
    except OSError as err:
        _rollback(created)
        raise CgroupError(f"cannot delegate {relative} to {user}: {why(err)}") from None
    except BaseException:
        _rollback(created)
        raise
    return directories


def _rollback(created: list[str]) -> None:
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def undelegate(user: str, controllers: list[str] | None = None, path: str | None = None) -> list[str]:
    """Remove what delegate() made, refusing while the user still has cgroups or processes there."""
    if os.geteuid() != 0:
        raise CgroupError("removing a cgroup delegation needs root")
    uid, _gid = _lookup(user)
    relative = _clean_relative(path or default_path(user))
    targets = _targets(list(controllers or DEFAULT_CONTROLLERS))
    present: list[tuple[str, str]] = []
    for target in targets:
        directory = posixpath.join(target.mountpoint, relative)
        if not os.path.isdir(directory):
            continue
        owner = os.stat(directory).st_uid
        if owner != uid:
            raise CgroupError(f"cannot remove {directory}: it is owned by uid {owner}, not delegated to {user}")
        children = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        if children:
            raise CgroupError(f"cannot remove {directory}: it still holds child cgroups ({', '.join(children)}); "
                              "delete the containers that use them first")
        pids = fs.procs_in(directory)
        if pids:
            raise CgroupError(f"cannot remove {directory}: processes {' '.join(map(str, pids[:10]))} still run in it")
        present.append((target.mountpoint, directory))
    removed: list[str] = []
    for mountpoint, directory in present:
        fs.remove_tree(directory, timeout=1.0)
        removed.append(directory)
        # Tidy the shared `ocirt/` parent once the last delegation under it is gone; rmdir fails
        # harmlessly while other users' subtrees remain.
        parent = posixpath.dirname(directory)
        if parent == posixpath.join(mountpoint, "ocirt"):
            try:
                os.rmdir(parent)
            except OSError:
                pass
    return removed


__all__ = ["DEFAULT_CONTROLLERS", "default_path", "delegate", "undelegate"]
