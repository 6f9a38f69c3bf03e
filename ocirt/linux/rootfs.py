"""The container's filesystem: config mounts, /dev, pivot_root, masked and read-only paths.

Split in two halves so the init does no parsing:

* ``plan_rootfs`` runs in the parent before the fork. It turns config.json's mounts into ``MountPlan``
  objects (option strings to mount attributes, propagation and fs data), applies the rootless
  adjustments, and reads what it needs from the host (cgroup hierarchies).
* ``prepare_rootfs``, ``enter_rootfs`` and ``finish_rootfs`` run in the init, in its new mount namespace.

Every mount is made with the new mount API (``fsopen``/``fsmount`` for a fresh filesystem,
``open_tree(OPEN_TREE_CLONE)`` for a bind) and attached with ``move_mount`` onto an ``O_PATH`` fd that
``openat2(RESOLVE_IN_ROOT)`` resolved inside the rootfs, so no path string that the image could redirect
with a symlink is ever handed to the kernel. Attributes are changed with ``mount_setattr``, which only
touches the bits it is asked to: flags the kernel locked on a mount inherited from a more privileged
namespace (nosuid, nodev, noexec, ...) stay as they are, which is what makes read-only binds work in a
user namespace.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls
from ocirt.errors import ConfigError, OcirtError, why
from ocirt.linux import devices, paths, procfs
from ocirt.linux.devices import HostDevices

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
_PROPAGATION: dict[str, tuple[int, bool]] = {
    "private": (A.MS_PRIVATE, False), "rprivate": (A.MS_PRIVATE, True),
    "shared": (A.MS_SHARED, False), "rshared": (A.MS_SHARED, True),
    "slave": (A.MS_SLAVE, False), "rslave": (A.MS_SLAVE, True),
    "unbindable": (A.MS_UNBINDABLE, False), "runbindable": (A.MS_UNBINDABLE, True),
}
# options the runtime consumes or that other runtimes define and we accept without effect
_IGNORED_OPTIONS = {"copy-symlink", "notmpcopyup", "defaults", "silent", "loud", "iversion",
                    "noiversion"}

# Files inside /proc that may be the destination of a bind (lxcfs-style emulated files).
_PROC_BIND_ALLOWED = {"/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
                      "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
                      "/proc/sys/kernel/ns_last_pid"}
_SYMLINK_REFUSED = {"/proc", "/sys", "/dev"}
_VERIFIED_MAGIC = {"proc": A.PROC_SUPER_MAGIC, "sysfs": A.SYSFS_MAGIC}
_DEVPTS_SUPER_MAGIC = 0x1CD1


class _Plain:
    """Plain attribute records (dataclasses would cost ~17 ms of imports on the create path)."""

    __slots__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class CgroupHierarchy(_Plain):
    __slots__ = ("name", "fstype", "controllers", "host_mountpoint", "host_root", "source")

    def __init__(self, name: str, fstype: str, controllers: tuple[str, ...], host_mountpoint: str,
                 host_root: str, source: str | None = None):
        self.name = name  # directory under /sys/fs/cgroup, e.g. "memory" or "cpu,cpuacct"
        self.fstype = fstype  # "cgroup" or "cgroup2"
        self.controllers = controllers  # super options, e.g. ("memory",) or ("name=systemd",)
        self.host_mountpoint = host_mountpoint
        self.host_root = host_root  # the hierarchy path that host_mountpoint shows (from mountinfo)
        self.source = source  # the container's cgroup dir on the host, when known in the parent


class MountPlan(_Plain):
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
        self.source_fd = -1  # a detached, already idmapped tree made by open_mount_sources
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


class RootfsPlan(_Plain):
    __slots__ = ("rootfs", "readonly", "mounts", "masked_paths", "readonly_paths", "devices", "setup_dev",
                 "userns", "rootless", "no_pivot", "root_propagation", "rootfs_propagation", "kcore",
                 "new_userns_maps", "root_fd", "null_fd", "readonly_later", "host_devices")

    def __init__(self, *, rootfs: str, readonly: bool, mounts: list[MountPlan], masked_paths: list[str],
                 readonly_paths: list[str], devices: list[devices.DevicePlan], setup_dev: bool, userns: bool,
                 rootless: bool, no_pivot: bool, root_propagation: int,
                 rootfs_propagation: tuple[int, bool] | None, kcore: bool):
        self.rootfs = rootfs
        self.readonly = readonly
        self.mounts = mounts
        self.masked_paths = masked_paths
        self.readonly_paths = readonly_paths
        self.devices = devices
        self.setup_dev = setup_dev
        self.userns = userns
        self.rootless = rootless
        self.no_pivot = no_pivot
        # applied to the host's / in the new mount namespace before anything else
        self.root_propagation = root_propagation
        # linux.rootfsPropagation, applied at the end
        self.rootfs_propagation = rootfs_propagation
        self.kcore = kcore
        # (uidMappings, gidMappings) of the user namespace this container creates, when it creates one
        self.new_userns_maps: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] | None = None
        # filled in by prepare_rootfs, in the init
        self.root_fd = -1
        self.null_fd = -1
        self.readonly_later: list[tuple[int, str]] = []  # (mount fd, destination) finish_rootfs makes ro
        self.host_devices: HostDevices | None = None

    @property
    def root(self) -> str:
        """The rootfs' host path (for messages and hooks; never open things through it)."""
        return self.rootfs


def in_user_namespace() -> bool:
    from ocirt.state import in_user_namespace as check

    return check()


def plan_rootfs(config: dict, bundle: str, *, rootless: bool, no_pivot: bool = False,
                cgroup_paths: dict[str, str] | None = None) -> RootfsPlan:
    root = config.get("root") or {}
    root_path = root.get("path")
    if not root_path:
        raise ConfigError("root.path is not set")
    rootfs = os.path.realpath(os.path.join(bundle, root_path))
    if not os.path.isdir(rootfs):
        raise ConfigError(f"rootfs {rootfs} does not exist")
    linux = config.get("linux") or {}
    namespaces = {ns.get("type") for ns in linux.get("namespaces") or [] if not ns.get("path")}
    joined = {ns.get("type") for ns in linux.get("namespaces") or [] if ns.get("path")}
    if "mount" not in namespaces and "mount" not in joined:
        # Everything below (rslave "/", the mounts, pivot_root, masking) would act on the runtime's own
        # mount namespace: the host's.
        raise ConfigError("$.linux.namespaces: a container needs a mount namespace: without one its rootfs "
                          "would be set up in the host's")
    # Already inside a user namespace (rootless podman runs its runtime as uid 0 in one): the limits of a
    # user namespace apply even when the config asks for none.
    userns = "user" in namespaces or "user" in joined or in_user_namespace()
    private_netns = "network" in namespaces or "network" in joined
    private_cgroupns = "cgroup" in namespaces or "cgroup" in joined
    uid_maps = _id_maps(linux.get("uidMappings"), "linux.uidMappings")
    gid_maps = _id_maps(linux.get("gidMappings"), "linux.gidMappings")
    container_maps = (uid_maps, gid_maps) if userns and uid_maps and gid_maps else None

    mounts: list[MountPlan] = []
    for index, entry in enumerate(config.get("mounts") or []):
        plan = _plan_mount(entry, index, bundle, container_maps)
        if userns and plan.fstype == "sysfs" and not private_netns:
            # The kernel refuses a fresh sysfs to a user namespace that doesn't own the network
            # namespace: show the host's /sys instead, read-only, as runc and crun do.
            # Recursively so: the host's /sys carries submounts (cgroup hierarchies among them).
            locked_down = A.MOUNT_ATTR_RDONLY | A.MOUNT_ATTR_NOSUID | A.MOUNT_ATTR_NODEV | A.MOUNT_ATTR_NOEXEC
            plan = MountPlan(plan.destination, "bind", "/sys", bind=True, recursive=True,
                             attr_set=plan.attr_set | locked_down, rattr_set=locked_down,
                             propagation=plan.propagation)
        # (a joined user namespace brings its own maps, which the config does not describe: left alone)
        if "user" in namespaces and plan.fstype == "devpts" and not _maps_id(gid_maps, 5):
            plan.data = [opt for opt in plan.data if not opt.startswith("gid=")
                         or _maps_id(gid_maps, _int_or(opt[4:], -1))]
        if plan.fstype in ("cgroup", "cgroup2") and not plan.bind:
            plan.cgroups = _cgroup_hierarchies(cgroup_paths) if plan.fstype == "cgroup" else None
            plan.cgroup2_source = (cgroup_paths or {}).get("unified")
            plan.private_cgroupns = private_cgroupns
            plan.tolerate_enoent = rootless or userns
        mounts.append(plan)

    # A /dev of the host's nodes (a bind, or the kernel's one devtmpfs) is used as it is, as runc does for
    # a bind: nothing is made in it.
    setup_dev = not any(m.destination == "/dev" and (m.bind or m.fstype == "devtmpfs") for m in mounts)
    propagation = linux.get("rootfsPropagation")
    rootfs_propagation = None
    if propagation:
        if propagation not in _PROPAGATION:
            raise ConfigError(f"linux.rootfsPropagation: unknown value {propagation!r}")
        rootfs_propagation = _PROPAGATION[propagation]
    root_propagation = A.MS_SLAVE | A.MS_REC
    if rootfs_propagation is not None and rootfs_propagation[0] in (A.MS_SHARED, A.MS_PRIVATE):
        root_propagation = rootfs_propagation[0] | A.MS_REC

    rootfs_plan = RootfsPlan(
        rootfs=rootfs,
        readonly=bool(root.get("readonly")),
        mounts=mounts,
        masked_paths=[paths.clean(p) for p in linux.get("maskedPaths") or []],
        readonly_paths=[paths.clean(p) for p in linux.get("readonlyPaths") or []],
        devices=devices.plan_devices(config),
        setup_dev=setup_dev,
        userns=userns,
        rootless=rootless,
        no_pivot=no_pivot,
        root_propagation=root_propagation,
        rootfs_propagation=rootfs_propagation,
        kcore=os.path.exists("/proc/kcore"),
    )
    if "user" in namespaces and uid_maps and gid_maps:
        rootfs_plan.new_userns_maps = (uid_maps, gid_maps)
    return rootfs_plan


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def _id_maps(entries: list | None, where: str) -> list[tuple[int, int, int]]:
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


def _maps_id(maps: list[tuple[int, int, int]], container_id: int) -> bool:
    return any(start <= container_id < start + size for start, _host, size in maps)


def _plan_mount(entry: dict, index: int, bundle: str,
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
        elif option in _PROPAGATION:
            plan.propagation.append(_PROPAGATION[option])
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
    uid_map = _id_maps(entry.get("uidMappings"), f"{where}: uidMappings")
    gid_map = _id_maps(entry.get("gidMappings"), f"{where}: gidMappings")
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
    if dest.startswith("/proc/") and not (plan.bind and dest in _PROC_BIND_ALLOWED):
        raise ConfigError(f"{where}: {dest} cannot be mounted because it is inside /proc")
    if dest == "/proc" and fstype != "proc" and not plan.bind:
        raise ConfigError(f"{where}: only a proc filesystem may be mounted on /proc")
    if dest == "/":
        raise ConfigError(f"{where}: mounting over the rootfs itself is not supported")
    return plan


def _cgroup_hierarchies(cgroup_paths: dict[str, str] | None) -> list[CgroupHierarchy]:
    hierarchies = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            sep = fields.index("-")
            fstype, super_opts = fields[sep + 1], fields[sep + 3]
            mountpoint = _unescape(fields[4])
            if fstype not in ("cgroup", "cgroup2") or os.path.dirname(mountpoint) != "/sys/fs/cgroup":
                continue
            controllers = tuple(opt for opt in super_opts.split(",")
                                if opt not in ("rw", "ro") and (fstype == "cgroup")
                                and not opt.startswith(("release_agent=", "xattr", "clone_children",
                                                        "noprefix", "cpuset_v2_mode")))
            hierarchy = CgroupHierarchy(os.path.basename(mountpoint), fstype, controllers, mountpoint,
                                        _unescape(fields[3]))
            if cgroup_paths:
                for key in (hierarchy.name, *controllers, *(c.split("=", 1)[-1] for c in controllers)):
                    if key in cgroup_paths:
                        hierarchy.source = cgroup_paths[key]
                        break
                if hierarchy.source is None and fstype == "cgroup2" and "" in cgroup_paths:
                    hierarchy.source = cgroup_paths[""]
            hierarchies.append(hierarchy)
    return hierarchies


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


# ---------------------------------------------------------------------------------------------------
# In the init, before pivot_root


def prepare_rootfs(plan: RootfsPlan, *, console_path: str | None = None) -> None:
    # Made first: later, in a user namespace, the kernel may refuse a fresh proc mount.
    procfs.private_proc_fd()
    host_devices = plan.host_devices = devices.HostDevices()
    # A detached copy of the host's /dev/null outlives pivot_root (the old root it came from does not):
    # masked files are bound from it, so nothing the image puts at /dev/null is ever used.
    host_null = _open_null_device("/dev/null", os.open)
    try:
        plan.null_fd = paths.clone_tree(host_null, recursive=False)
    except OSError as err:
        raise RootfsError(f"clone /dev/null: {why(err)}") from None
    finally:
        os.close(host_null)
    try:
        syscalls.mount(None, "/", None, plan.root_propagation)
    except OSError as err:
        raise RootfsError(f"make / {'shared' if plan.root_propagation & A.MS_SHARED else 'slave'}: "
                          f"{why(err)}") from None
    if plan.root_propagation & A.MS_SHARED:
        _unshare_rootfs_parents(plan.rootfs)
    plan.root_fd = _bind_rootfs(plan)
    for mount in plan.mounts:
        _mount_one(plan, mount)
    if plan.setup_dev:
        existing = paths.lstat_in_root(plan.root_fd, "/dev")
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise RootfsError("create devices: /dev is a symlink")
        devices.create_devices(plan.root_fd, plan.devices, bind=plan.userns, host=host_devices)
        devices.create_dev_symlinks(plan.root_fd, kcore=plan.kcore, host=host_devices)
    if console_path:
        devices.bind_console(plan.root_fd, console_path, host_devices)


def mount_console(plan: RootfsPlan, slave: str | int) -> None:
    """Bind the pty slave onto /dev/console, after prepare_rootfs and before enter_rootfs.

    ``slave`` is the slave's fd (e.g. from TIOCGPTPEER), ``/proc/self/fd/<n>`` or a host path.
    """
    devices.bind_console(plan.root_fd, slave, plan.host_devices or devices.HostDevices())


def open_ptmx(plan: RootfsPlan) -> int:
    """Open the container's /dev/pts/ptmx (read-write, no controlling tty) resolved inside the rootfs,
    checked to be the pty multiplexer (char 5:2) of a devpts instance."""
    try:
        fd = paths.open_in_root(plan.root_fd, "/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
    except OSError as err:
        raise RootfsError(f"open /dev/pts/ptmx in the rootfs: {why(err)}") from None
    st = os.fstat(fd)
    if (not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(5, 2)
            or syscalls.fstatfs_type(fd) != _DEVPTS_SUPER_MAGIC):
        os.close(fd)
        raise RootfsError("/dev/pts/ptmx in the rootfs is not the pty multiplexer of a devpts")
    return fd


def _unshare_rootfs_parents(rootfs: str) -> None:
    """pivot_root refuses when the mount holding the new root, or the current root, is shared: make those
    two private (in this mount namespace only) so a shared rootfs propagation can still pivot."""
    try:
        fd = os.open(rootfs, A.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
                mnt_id = next(line.split()[1] for line in fdinfo if line.startswith("mnt_id:"))
        finally:
            os.close(fd)
        with open("/proc/self/mountinfo") as mountinfo:
            point = next((_unescape(line.split()[4]) for line in mountinfo if line.split()[0] == mnt_id), "/")
        for target in dict.fromkeys((point, "/")):
            syscalls.mount(None, target, None, A.MS_PRIVATE)
    except (OSError, StopIteration) as err:
        raise RootfsError(f"make the mount holding {rootfs} private: {err}") from None


def _bind_rootfs(plan: RootfsPlan) -> int:
    try:
        target = os.open(plan.rootfs, A.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise RootfsError(f"rootfs {plan.rootfs}: {why(err)}") from None
    try:
        tree = paths.clone_tree(target, recursive=True)
        try:
            paths.attach(tree, target)
            if plan.root_propagation & A.MS_SHARED:
                # pivot_root refuses a shared new root: the rootfs' own mount becomes private
                paths.set_attrs(tree, propagation=A.MS_PRIVATE)
        except BaseException:
            os.close(tree)
            raise
    except OSError as err:
        raise RootfsError(f"bind rootfs {plan.rootfs} onto itself: {why(err)}") from None
    finally:
        os.close(target)
    return tree


def _mount_one(plan: RootfsPlan, mount: MountPlan) -> None:
    if mount.remount:
        _remount(plan, mount)
    elif mount.fstype in ("cgroup", "cgroup2") and not mount.bind:
        _mount_cgroup(plan, mount)
    else:
        existed = mount.fstype == "tmpfs" and paths.lstat_in_root(plan.root_fd, mount.destination) is not None
        target = _destination_fd(plan, mount)
        try:
            tree = _make_tree(mount, target, inherit_mode=existed)
            try:
                if mount.fstype == "devtmpfs" and plan.host_devices is not None:
                    plan.host_devices.add_filesystem(tree)
                if existed and mount.copy_up:
                    _copy_up(mount, target, tree)
                _attach_tree(mount, tree, target)
                if mount.readonly_later:
                    plan.readonly_later.append((tree, mount.destination))
                    tree = -1
            finally:
                if tree >= 0:
                    os.close(tree)
        finally:
            os.close(target)


def _destination_fd(plan: RootfsPlan, mount: MountPlan, *, directory: bool | None = None) -> int:
    dest = mount.destination
    if dest in _SYMLINK_REFUSED or mount.fstype in _VERIFIED_MAGIC:
        existing = paths.lstat_in_root(plan.root_fd, dest)
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise RootfsError(f"{mount.describe()}: {dest} is a symlink")
        if existing is not None and mount.fstype in _VERIFIED_MAGIC and not stat.S_ISDIR(existing.st_mode):
            raise RootfsError(f"{mount.describe()}: {dest} is not a directory")
    if directory is None:
        directory = True
        if mount.bind:
            try:
                source = os.fstat(mount.source_fd) if mount.source_fd >= 0 else os.stat(mount.source)
                directory = stat.S_ISDIR(source.st_mode)
            except OSError as err:
                raise RootfsError(f"{mount.describe()}: source {mount.source}: {why(err)}") from None
    try:
        target = paths.mkdir_all(plan.root_fd, dest) if directory else paths.create_file(plan.root_fd, dest)
    except paths.PathError as err:
        raise RootfsError(f"{mount.describe()}: {err}") from None
    # The lexical check on the destination happened at plan time; a symlink in the image can still lead a
    # destination into the container's procfs (the AppArmor /proc/self/attr class of attacks).
    if (syscalls.fstatfs_type(target) == A.PROC_SUPER_MAGIC
            and not (mount.bind and dest in _PROC_BIND_ALLOWED)):
        os.close(target)
        raise RootfsError(f"{mount.describe()}: the destination resolves to a path inside /proc")
    return target


def open_mount_sources(plan: RootfsPlan) -> None:
    """In the parent, right before the fork: build the detached trees the init could not build itself.

    Setting an idmapping needs privilege over the source filesystem's user namespace, which an init
    inside a container user namespace doesn't have; the real-root parent does. Likewise the container's
    root may not be allowed to search its way to a bind source (a 0700 directory of the host's root on
    the way): the parent clones those. Every other source is left to the init, which resolves it after
    the earlier mounts, as their order asks. The init inherits the fds and only attaches them. Harmless
    to skip without user namespace: the init then does it itself. Release with ``close_mount_sources``
    in the parent once the init has been forked.
    """
    for mount in plan.mounts:
        if not mount.bind or mount.source_fd >= 0:
            continue
        if mount.uid_map is not None:
            mount.source_fd = _bind_tree(mount)
        elif (plan.new_userns_maps is not None and os.geteuid() == 0
              and not _searchable_by_container_root(mount.source, *plan.new_userns_maps)):
            mount.source_fd = _bind_tree(mount)


def _searchable_by_container_root(source: str, uid_maps: list[tuple[int, int, int]],
                                  gid_maps: list[tuple[int, int, int]]) -> bool:
    """Whether the container's root, once in its user namespace, can look ``source`` up.

    A close estimate (no ACLs, no supplementary groups), erring towards "no", which only costs a clone
    here. A source that does not exist yet is the init's to resolve (an earlier mount may create it).
    """
    uid = _host_id(uid_maps, 0)
    gid = _host_id(gid_maps, 0)
    try:
        real = os.path.realpath(source)
        directories = {os.path.dirname(p) for p in (source, real)}
        for start in list(directories):
            while start not in ("/", ""):
                start = os.path.dirname(start)
                directories.add(start)
        for directory in directories:
            st = os.stat(directory)
            if _host_maps(uid_maps, st.st_uid) and _host_maps(gid_maps, st.st_gid):
                continue  # its capabilities cover an inode whose owner and group it maps
            bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
            if not st.st_mode & bit:
                return False
        os.lstat(source)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _host_id(maps: list[tuple[int, int, int]], container_id: int) -> int:
    for start, host, size in maps:
        if start <= container_id < start + size:
            return host + container_id - start
    return -1


def _host_maps(maps: list[tuple[int, int, int]], host_id: int) -> bool:
    return any(host <= host_id < host + size for _start, host, size in maps)


def close_mount_sources(plan: RootfsPlan) -> None:
    for mount in plan.mounts:
        if mount.source_fd >= 0:
            os.close(mount.source_fd)
            mount.source_fd = -1


def _bind_tree(mount: MountPlan) -> int:
    try:
        tree = paths.clone_path(mount.source, recursive=mount.recursive)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    try:
        if mount.uid_map is not None and mount.gid_map is not None:
            _idmap(mount, tree)
        _set_mount_attrs(mount, tree, fresh=False)
    except BaseException:
        os.close(tree)
        raise
    return tree


def _copy_up(mount: MountPlan, target: int, tree: int) -> None:
    """Fill the still-detached tmpfs with a copy of the directory it is about to cover."""
    try:
        src = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target)
        try:
            dst = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=tree)
            try:
                paths.copy_tree(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: tmpcopyup: {why(err)}") from None


def _make_tree(mount: MountPlan, target: int, *, inherit_mode: bool = False) -> int:
    """A detached mount for ``mount``: a clone of the bind source or a fresh filesystem."""
    if mount.bind and mount.source_fd >= 0:
        tree, mount.source_fd = mount.source_fd, -1
        return tree
    if mount.bind:
        return _bind_tree(mount)
    data = list(mount.data)
    if inherit_mode and mount.fstype == "tmpfs" and not any(opt.startswith("mode=") for opt in data):
        # a tmpfs over an existing directory keeps that directory's permissions, as runc does
        data.insert(0, f"mode={stat.S_IMODE(os.fstat(target).st_mode):o}")
    attrs = mount.attr_set | (mount.atime or 0)
    if mount.readonly_later:
        attrs &= ~A.MOUNT_ATTR_RDONLY
    return _new_filesystem(mount, mount.fstype, mount.source, data, mount.sb_flags, attrs=attrs)


def _new_filesystem(mount: MountPlan, fstype: str, source: str, data: list[str], sb_flags: list[str],
                    attrs: int | None = None) -> int:
    try:
        fs_fd = syscalls.fsopen(fstype)
    except OSError as err:
        if err.errno == errno.ENODEV:
            raise RootfsError(f"{mount.describe()}: unknown filesystem type {fstype!r}") from None
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    try:
        step = "source"
        try:
            if source:
                syscalls.fsconfig(fs_fd, A.FSCONFIG_SET_STRING, "source", source)
            for option in [*sb_flags, *data]:
                step = option
                key, sep, value = option.partition("=")
                if sep:
                    syscalls.fsconfig(fs_fd, A.FSCONFIG_SET_STRING, key, value)
                else:
                    syscalls.fsconfig(fs_fd, A.FSCONFIG_SET_FLAG, key)
            step = ""
            syscalls.fsconfig(fs_fd, A.FSCONFIG_CMD_CREATE)
            if attrs is None:
                attrs = mount.attr_set | (mount.atime or 0)
            return syscalls.fsmount(fs_fd, A.FSMOUNT_CLOEXEC, attrs)
        except OSError as err:
            detail = _fs_log(fs_fd)
            option = f" (option {step!r})" if step else ""
            raise RootfsError(f"{mount.describe()}: {why(err)}{option}{detail}") from None
    finally:
        os.close(fs_fd)


def _fs_log(fs_fd: int) -> str:
    """The kernel's own explanation of a failed fsconfig, when it left one."""
    messages = []
    for _ in range(8):
        try:
            line = os.read(fs_fd, 512).decode(errors="replace").strip()
        except OSError:
            break
        if not line:
            break
        messages.append(line[2:] if line[1:2] == " " else line)
    return f": {'; '.join(messages)}" if messages else ""


def _set_mount_attrs(mount: MountPlan, tree: int, *, fresh: bool) -> None:
    """Apply the config's attributes to a detached mount (non-recursive, then the r* ones)."""
    try:
        if not fresh and (mount.attr_set or mount.attr_clr or mount.atime is not None):
            attr_clr = mount.attr_clr
            attr_set = mount.attr_set & ~(A.MOUNT_ATTR_RDONLY if mount.readonly_later else 0)
            if mount.atime is not None:
                attr_clr |= A.MOUNT_ATTR__ATIME
                attr_set |= mount.atime
            paths.set_attrs(tree, attr_set=attr_set, attr_clr=attr_clr, recursive=False)
        if mount.rattr_set or mount.rattr_clr or mount.ratime is not None:
            attr_clr = mount.rattr_clr
            attr_set = mount.rattr_set
            if mount.ratime is not None:
                attr_clr |= A.MOUNT_ATTR__ATIME
                attr_set |= mount.ratime
            paths.set_attrs(tree, attr_set=attr_set, attr_clr=attr_clr, recursive=True)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: set mount attributes: {why(err)}") from None


def _attach_tree(mount: MountPlan, tree: int, target: int) -> None:
    if not mount.bind:
        _set_mount_attrs(mount, tree, fresh=True)
    try:
        paths.attach(tree, target)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    try:
        for propagation, recursive in mount.propagation:
            paths.set_attrs(tree, propagation=propagation, recursive=recursive)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: set propagation: {why(err)}") from None
    expected = _VERIFIED_MAGIC.get(mount.fstype)
    if mount.bind and mount.destination == "/proc":
        expected = A.PROC_SUPER_MAGIC  # only a procfs may stand in for /proc (runc's rule too)
    elif mount.bind and mount.source == "/sys" and mount.destination == "/sys":
        expected = A.SYSFS_MAGIC
    if expected is not None and syscalls.fstatfs_type(tree) != expected:
        wanted = "proc" if expected == A.PROC_SUPER_MAGIC else "sysfs"
        raise RootfsError(f"{mount.describe()}: the mounted filesystem is not {wanted}")


def _remount(plan: RootfsPlan, mount: MountPlan) -> None:
    try:
        target = paths.open_in_root(plan.root_fd, mount.destination)
    except OSError as err:
        raise RootfsError(f"remount {mount.destination}: {why(err)}") from None
    try:
        _set_mount_attrs(mount, target, fresh=False)
        for propagation, recursive in mount.propagation:
            paths.set_attrs(target, propagation=propagation, recursive=recursive)
    except OSError as err:
        raise RootfsError(f"remount {mount.destination}: {why(err)}") from None
    finally:
        os.close(target)


# --- idmapped mounts ---

def _idmap(mount: MountPlan, tree: int) -> None:
    assert mount.uid_map is not None and mount.gid_map is not None
    try:
        userns = _userns_with_maps(mount.uid_map, mount.gid_map)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: create the user namespace of the idmapped mount: "
                          f"{why(err)}") from None
    except procfs.ProcfsError as err:
        raise RootfsError(f"{mount.describe()}: create the user namespace of the idmapped mount: {err}") from None
    try:
        paths.set_attrs(tree, attr_set=A.MOUNT_ATTR_IDMAP, userns_fd=userns, recursive=mount.idmap_recursive)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: idmap: {why(err)}") from None
    finally:
        os.close(userns)


def _userns_with_maps(uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]]) -> int:
    """An fd of a new user namespace carrying the given maps (a short-lived child holds it while we write)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            syscalls.unshare(A.CLONE_NEWUSER)
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


# --- cgroup ---

def _mount_cgroup(plan: RootfsPlan, mount: MountPlan) -> None:
    if mount.fstype == "cgroup2" or not mount.cgroups:
        target = _destination_fd(plan, mount)
        try:
            _mount_cgroup2(plan, mount, target)
        finally:
            os.close(target)
        return
    # cgroup v1: a tmpfs with one directory per hierarchy, as the host lays it out
    base_attrs = A.MOUNT_ATTR_NOSUID | A.MOUNT_ATTR_NODEV | A.MOUNT_ATTR_NOEXEC
    target = _destination_fd(plan, mount)
    try:
        tmpfs = _new_filesystem(mount, "tmpfs", "tmpfs", ["mode=755"], [], attrs=base_attrs)
        try:
            _attach_tree(MountPlan(mount.destination, "tmpfs", "tmpfs", propagation=mount.propagation), tmpfs,
                         target)
            own = None if mount.private_cgroupns else _own_cgroups()
            for hierarchy in mount.cgroups:
                _mount_hierarchy(plan, mount, hierarchy, own)
            for hierarchy in mount.cgroups:
                if "," in hierarchy.name:
                    _cgroup_symlinks(plan, mount, hierarchy.name)
            if mount.readonly:
                paths.set_attrs(tmpfs, attr_set=A.MOUNT_ATTR_RDONLY)
        finally:
            os.close(tmpfs)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None
    finally:
        os.close(target)


def _mount_cgroup2(plan: RootfsPlan, mount: MountPlan, target: int) -> None:
    try:
        tree = _new_filesystem(mount, "cgroup2", mount.source or "cgroup2", mount.data, mount.sb_flags)
    except RootfsError:
        if not plan.userns:
            raise
        # In a user namespace without its own cgroup namespace the kernel refuses cgroup2: show the
        # container's own cgroup (or the whole hierarchy) through a bind instead, as runc does.
        source = mount.cgroup2_source or "/sys/fs/cgroup"
        bind = MountPlan(mount.destination, "bind", source, bind=True, recursive=True,
                         attr_set=mount.attr_set, attr_clr=mount.attr_clr, propagation=mount.propagation)
        try:
            tree = _make_tree(bind, target)
        except RootfsError:
            if mount.tolerate_enoent and not os.path.exists(source):
                return
            raise
        mount = bind
    try:
        _attach_tree(mount, tree, target)
    finally:
        os.close(tree)


def _own_cgroups() -> dict[str, str]:
    """controllers (as in /proc/self/cgroup) -> this process's cgroup path in that hierarchy."""
    own = {}
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    return own


def _mount_hierarchy(plan: RootfsPlan, mount: MountPlan, hierarchy: CgroupHierarchy,
                     own: dict[str, str] | None) -> None:
    sub = MountPlan(f"{mount.destination}/{hierarchy.name}", hierarchy.fstype, "cgroup",
                    attr_set=mount.attr_set, attr_clr=mount.attr_clr, atime=mount.atime,
                    propagation=mount.propagation)
    target = _destination_fd(plan, sub, directory=True)
    try:
        tree = None
        if own is None:
            options = [] if hierarchy.fstype == "cgroup2" else list(hierarchy.controllers)
            try:
                tree = _new_filesystem(sub, hierarchy.fstype, "cgroup", options, [])
            except RootfsError:
                if not plan.userns:
                    raise
        if tree is None:
            source = hierarchy.source
            if source is None:
                key = ",".join(hierarchy.controllers) if hierarchy.fstype == "cgroup" else ""
                cgroup_path = (own or _own_cgroups()).get(key, "/")
                relative = os.path.relpath(cgroup_path, hierarchy.host_root)
                source = os.path.normpath(os.path.join(hierarchy.host_mountpoint, relative))
                if relative.startswith(".."):
                    source = hierarchy.host_mountpoint
            sub = MountPlan(sub.destination, "bind", source, bind=True, recursive=True,
                            attr_set=mount.attr_set, attr_clr=mount.attr_clr, propagation=mount.propagation)
            try:
                tree = _make_tree(sub, target)
            except RootfsError:
                if mount.tolerate_enoent and not os.path.exists(source):
                    return
                raise
        try:
            _attach_tree(sub, tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(target)


def _cgroup_symlinks(plan: RootfsPlan, mount: MountPlan, comounted: str) -> None:
    base = paths.mkdir_all(plan.root_fd, mount.destination)
    try:
        for name in comounted.split(","):
            try:
                os.symlink(comounted, name, dir_fd=base)
            except FileExistsError:
                pass
    finally:
        os.close(base)


# ---------------------------------------------------------------------------------------------------
# pivot_root and after


def enter_rootfs(plan: RootfsPlan) -> None:
    if plan.root_fd < 0:
        raise RootfsError("enter_rootfs called before prepare_rootfs")
    if plan.no_pivot:
        _move_root(plan)
    else:
        _pivot_root(plan)


def _pivot_root(plan: RootfsPlan) -> None:
    old_root = os.open("/", A.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(plan.root_fd)
        syscalls.pivot_root(".", ".")
        # The old root now sits on top of the new one, and we stand in it: detach it without letting the
        # unmount propagate to the host.
        os.fchdir(old_root)
        syscalls.mount(None, ".", None, A.MS_SLAVE | A.MS_REC)
        syscalls.umount2(".", A.MNT_DETACH)
        os.chdir("/")
    except OSError as err:
        raise RootfsError(f"pivot_root into {plan.rootfs}: {why(err)}") from None
    finally:
        os.close(old_root)


def _move_root(plan: RootfsPlan) -> None:
    try:
        os.fchdir(plan.root_fd)
        syscalls.mount(".", "/", None, A.MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    except OSError as err:
        raise RootfsError(f"move the rootfs {plan.rootfs} to /: {why(err)}") from None


def finish_rootfs(plan: RootfsPlan) -> None:
    root = os.open("/", A.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for tree, destination in plan.readonly_later:
            try:
                paths.set_attrs(tree, attr_set=A.MOUNT_ATTR_RDONLY)
            except OSError as err:
                raise RootfsError(f"make {destination} read-only: {why(err)}") from None
        for path in plan.masked_paths:
            _mask(root, path, plan.null_fd)
        for path in plan.readonly_paths:
            _make_readonly(root, path)
        if plan.readonly:
            try:
                paths.set_attrs(root, attr_set=A.MOUNT_ATTR_RDONLY)
            except OSError as err:
                raise RootfsError(f"make the rootfs read-only: {why(err)}") from None
        if plan.rootfs_propagation is not None:
            propagation, recursive = plan.rootfs_propagation
            try:
                paths.set_attrs(root, propagation=propagation, recursive=recursive)
            except OSError as err:
                raise RootfsError(f"set rootfs propagation: {why(err)}") from None
    finally:
        os.close(root)
        for fd in (plan.root_fd, plan.null_fd, *(tree for tree, _ in plan.readonly_later)):
            if fd >= 0:
                os.close(fd)
        plan.root_fd = plan.null_fd = -1
        plan.readonly_later = []
        os.umask(0o022)


def _open_null_device(path: str, opener) -> int:
    try:
        fd = opener(path, A.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise RootfsError(f"open {path}: {why(err)}") from None
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise RootfsError(f"{path} is not the null device (char 1:3)")
    return fd


def _mask(root: int, path: str, null_fd: int) -> None:
    try:
        target = paths.open_in_root(root, path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise RootfsError(f"mask {path}: {why(err)}") from None
    try:
        if stat.S_ISDIR(os.fstat(target).st_mode):
            mask_plan = MountPlan(path, "tmpfs", "tmpfs")
            tree = _new_filesystem(mask_plan, "tmpfs", "tmpfs", [], [],
                                   attrs=A.MOUNT_ATTR_RDONLY | A.MOUNT_ATTR_NOSUID | A.MOUNT_ATTR_NODEV
                                   | A.MOUNT_ATTR_NOEXEC)
        else:
            tree = _null_tree(root, null_fd)
        try:
            paths.attach(tree, target)
        finally:
            os.close(tree)
    except OSError as err:
        raise RootfsError(f"mask {path}: {why(err)}") from None
    finally:
        os.close(target)


def _null_tree(root: int, null_fd: int) -> int:
    if null_fd >= 0:
        try:
            return paths.clone_tree(null_fd, recursive=False)
        except OSError as err:
            if err.errno != errno.EINVAL:  # older kernels can't clone a detached mount
                raise
    # The container's own /dev/null, used only when it is really the null device, never via a symlink.
    fd = _open_null_device("/dev/null", lambda path, flags: paths.open_in_root(root, path, flags))
    try:
        return paths.clone_tree(fd, recursive=False)
    finally:
        os.close(fd)


def _make_readonly(root: int, path: str) -> None:
    try:
        target = paths.open_in_root(root, path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise RootfsError(f"make {path} read-only: {why(err)}") from None
    try:
        tree = paths.clone_tree(target, recursive=True)
        try:
            paths.set_attrs(tree, attr_set=A.MOUNT_ATTR_RDONLY, recursive=True)
            paths.attach(tree, target)
        finally:
            os.close(tree)
    except OSError as err:
        raise RootfsError(f"make {path} read-only: {why(err)}") from None
    finally:
        os.close(target)

