"""The Manager of one container's cgroups, whichever driver placed them: create, tag and verify, apply,
limits, freeze, kill, stats and destroy over the directories it was given (see ocirt.cgroups for how the
cgroupfs driver picks them, ocirt.cgroups.systemd for the systemd one)."""

from __future__ import annotations

import os
import posixpath

from ocirt.cgroups import devices, fs, v1, v2
from ocirt.cgroups.hierarchy import (
    UNIFIED,
    Mount,
    _fix_hint,
    _inside,
    _is_ancestor_or_same,
    _own_dir,
    _split_resources,
    _user_name,
    mounts,
    own_cgroups,
)
from ocirt.errors import CgroupError
from ocirt.faults import crash_point

_SIGKILL = 9
STATE_VERSION = 1

# The directory listed by pids(): the first of these the manager has.
_PIDS_SOURCES = ("pids", "freezer", "memory", "cpu", "cpuacct", "blkio", "cpuset", "devices", "name=systemd", UNIFIED)


def parse_sub_cgroups(values: list[str]) -> dict[str, str]:
    """runc's ``exec --cgroup [CONTROLLER[,CONTROLLER...]:]PATH``, repeatable: PATH relative to the
    container's cgroup, per controller ("" for all of them); "/" is the container's cgroup itself."""
    subs: dict[str, str] = {}
    for value in values:
        controllers, colon, path = value.partition(":")
        if not colon:
            controllers, path = "", value
        relative = posixpath.normpath(path.strip("/")) if path.strip("/") else ""
        if relative in (".", ""):
            relative = ""
        elif relative == ".." or relative.startswith("../"):
            raise CgroupError(f"--cgroup {value}: {path} is not a sub-cgroup path")
        names = [name for name in controllers.split(",") if name] if colon else [""]
        if colon and not names:
            raise CgroupError(f"--cgroup {value}: no controller before the colon")
        for name in names:
            subs[name] = relative
    return subs


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
        # Set when loading the record of a create that died: the planned directories that did not exist
        # before it began. One of them without a tag is still that create's: a SIGKILL that lands while
        # mkdir waits for the kernel's cgroup lock lets the mkdir finish and the tag never be written.
        self._fresh: set[str] = set()

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
        tags: dict[str, str | None] = {}

        def tag_of(directory: str) -> str | None:
            # Read once each: the container's own directories come up again below as ones it made.
            if directory not in tags:
                tags[directory] = fs.get_tag(directory, name)
            return tags[directory]

        kept: dict[str, str] = {}
        for key, directory in self._paths.items():
            mount = self._hierarchy_of(key)
            if mount is None or not _inside(directory, mount):
                continue
            tag = tag_of(directory)
            if tag in ours or (tag is None and directory in self._fresh) or (
                    tag == fs.UNSUPPORTED and self._untagged_is_ours(directory)):
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
            tag = tag_of(directory)
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
                tag = tag_of(directory)
                if tag == fs.UNSUPPORTED:
                    # Without tags: a parent counts only as an ancestor of a verified cgroup of the container.
                    return any(_is_ancestor_or_same(directory, leaf) for leaf in kept.values())
                return tag == self._tag_value("made") or (tag is None and directory in self._fresh)

            self._made = [directory for directory in self._made if made_here(directory)]

    def _planned_chain(self) -> list[str]:
        """Every directory create() would make, top-down: each leaf and its parents below the mount."""
        chain: list[str] = []
        for key, leaf in self._paths.items():
            mount = self._hierarchy_of(key)
            if mount is None:
                continue
            directories = []
            directory = leaf
            while _inside(directory, mount):
                directories.append(directory)
                directory = posixpath.dirname(directory)
            chain += [d for d in reversed(directories) if d not in chain]
        return chain

    def existing(self) -> list[str]:
        """The planned directories already there, saved with the "creating" record before create()."""
        return [directory for directory in self._planned_chain() if os.path.isdir(directory)]

    def _tagged_made(self) -> list[str]:
        """The container's directories and their parents that carry its "made" tag, top-down."""
        name = fs.tag_name(self.rootless)
        made_tag = self._tag_value("made")

        def made_here(directory: str) -> bool:
            tag = fs.get_tag(directory, name)
            return tag == made_tag or (tag is None and directory in self._fresh)

        return [directory for directory in self._planned_chain() if made_here(directory)]

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
                if len(created) > made_before:
                    crash_point()  # made, not yet tagged: as a SIGKILL during a slow mkdir leaves it
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

    def join(self, pid: int, subs: dict[str, str]) -> None:
        """Move ``pid`` into sub-cgroups of the container's (``exec --cgroup``): each controller's own entry,
        else the entry for every controller (key ""), else the container's cgroup. Each must exist already,
        as runc requires; nothing is made."""
        unknown = sorted(key for key in subs if key and key not in self._paths)
        if unknown:
            raise CgroupError(f"--cgroup: the container has no {unknown[0]} cgroup (it has "
                              f"{', '.join(sorted(self._paths))})")
        if self.mode == "v2" and any(subs):
            raise CgroupError("--cgroup CONTROLLER:PATH is for cgroup v1 hierarchies: on cgroup v2 give only PATH")
        targets: list[str] = []
        for key in [k for k in self._paths if k != UNIFIED] + [UNIFIED] * (UNIFIED in self._paths):
            sub = subs.get(key, subs.get("", ""))
            target = posixpath.join(self._paths[key], sub) if sub else self._paths[key]
            if target not in targets:
                targets.append(target)
        for target in targets:
            if not os.path.isdir(target):
                raise CgroupError(f"cannot join sub-cgroup {target}: it does not exist")
        for target in targets:
            fs.write(target, "cgroup.procs", str(pid))

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

    def freezer_file(self) -> str | None:
        """The file that says whether the container is frozen, known before the cgroups exist: `state`
        reads it for "paused" without opening a manager."""
        if "freezer" in self._paths:
            return os.path.join(self._paths["freezer"], "freezer.state")
        if UNIFIED in self._paths:
            return os.path.join(self._paths[UNIFIED], "cgroup.freeze")
        return None

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
