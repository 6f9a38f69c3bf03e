"""The container's filesystem, in the order the init builds it.

Split in two halves so the init does no parsing:

* ``plan_rootfs`` runs in the parent before the fork. It turns config.json into a ``RootfsPlan``: the
  mounts (``mountplan``), the rootless adjustments, the devices (``devices``), what it needs from the host
  (cgroup hierarchies, ``cgroupmounts``).
* ``prepare_rootfs`` (the rootfs bound onto itself, the config's mounts by ``mounts`` and
  ``cgroupmounts``, /dev by ``devices``), ``enter_rootfs`` (pivot_root) and ``finish_rootfs`` (the
  read-only attributes held back, ``masks``, root.readonly, rootfsPropagation) run in the init, in its new
  mount namespace.

Each takes the ``Kernel`` that makes its mounts, nodes and owners (``kernel.KERNEL`` unless a test hands
in another). Every module the init needs after pivot_root is imported here, at the top.
"""

from __future__ import annotations

import errno
import os
import stat

from ocirt import syscalls
from ocirt.errors import ConfigError, annotated, why
from ocirt.linux import cgroupmounts, devices, masks, mounts, paths
from ocirt.linux.devices import HostDevices
from ocirt.linux.kernel import KERNEL, Kernel
from ocirt.linux.mountplan import (
    PROPAGATION,
    MountPlan,
    Plain,
    RootfsError,
    id_maps,
    int_or,
    maps_id,
    plan_mount,
    unescape,
)
from ocirt.linux.mounts import close_mount_sources, open_mount_sources

A = syscalls

__all__ = ["RootfsError", "RootfsPlan", "close_mount_sources", "enter_rootfs", "finish_rootfs",
           "mount_console", "open_mount_sources", "open_ptmx", "plan_rootfs", "prepare_rootfs"]

_DEVPTS_SUPER_MAGIC = 0x1CD1


class RootfsPlan(Plain):
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


# ---------------------------------------------------------------------------------------------------
# In the parent


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
    uid_maps = id_maps(linux.get("uidMappings"), "linux.uidMappings")
    gid_maps = id_maps(linux.get("gidMappings"), "linux.gidMappings")
    container_maps = (uid_maps, gid_maps) if userns and uid_maps and gid_maps else None

    planned: list[MountPlan] = []
    for index, entry in enumerate(config.get("mounts") or []):
        plan = plan_mount(entry, index, bundle, container_maps)
        if userns and plan.fstype == "sysfs" and not private_netns:
            # The kernel refuses a fresh sysfs to a user namespace that doesn't own the network
            # namespace: show the host's /sys instead, read-only, as runc and crun do.
            # Recursively so: the host's /sys carries submounts (cgroup hierarchies among them).
            locked_down = A.MOUNT_ATTR_RDONLY | A.MOUNT_ATTR_NOSUID | A.MOUNT_ATTR_NODEV | A.MOUNT_ATTR_NOEXEC
            plan = MountPlan(plan.destination, "bind", "/sys", bind=True, recursive=True,
                             attr_set=plan.attr_set | locked_down, rattr_set=locked_down,
                             propagation=plan.propagation)
        # (a joined user namespace brings its own maps, which the config does not describe: left alone)
        if "user" in namespaces and plan.fstype == "devpts" and not maps_id(gid_maps, 5):
            plan.data = [opt for opt in plan.data if not opt.startswith("gid=")
                         or maps_id(gid_maps, int_or(opt[4:], -1))]
        if plan.fstype in ("cgroup", "cgroup2") and not plan.bind:
            plan.cgroups = cgroupmounts.cgroup_hierarchies(cgroup_paths) if plan.fstype == "cgroup" else None
            plan.cgroup2_source = (cgroup_paths or {}).get("unified")
            plan.private_cgroupns = private_cgroupns
            plan.tolerate_enoent = rootless or userns
        planned.append(plan)

    # A /dev of the host's nodes (a bind, or the kernel's one devtmpfs) is used as it is, as runc does for
    # a bind: nothing is made in it.
    setup_dev = not any(m.destination == "/dev" and (m.bind or m.fstype == "devtmpfs") for m in planned)
    propagation = linux.get("rootfsPropagation")
    rootfs_propagation = None
    if propagation:
        if propagation not in PROPAGATION:
            raise ConfigError(f"linux.rootfsPropagation: unknown value {propagation!r}")
        rootfs_propagation = PROPAGATION[propagation]
    root_propagation = A.MS_SLAVE | A.MS_REC
    if rootfs_propagation is not None and rootfs_propagation[0] in (A.MS_SHARED, A.MS_PRIVATE):
        root_propagation = rootfs_propagation[0] | A.MS_REC

    rootfs_plan = RootfsPlan(
        rootfs=rootfs,
        readonly=bool(root.get("readonly")),
        mounts=planned,
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


# ---------------------------------------------------------------------------------------------------
# In the init, before pivot_root


def prepare_rootfs(plan: RootfsPlan, *, console_path: str | None = None, kernel: Kernel = KERNEL) -> None:
    # Made first: later, in a user namespace, the kernel may refuse a fresh proc mount.
    kernel.private_proc()
    host_devices = plan.host_devices = HostDevices()
    # A detached copy of the host's /dev/null outlives pivot_root (the old root it came from does not):
    # masked files are bound from it, so nothing the image puts at /dev/null is ever used.
    host_null = masks.open_null_device("/dev/null")
    try:
        plan.null_fd = kernel.clone(host_null, recursive=False)
    except OSError as err:
        raise RootfsError.from_os(err, "open_tree", "/dev/null", what="clone /dev/null") from None
    finally:
        os.close(host_null)
    try:
        kernel.mount(None, "/", None, plan.root_propagation)
    except OSError as err:
        raise RootfsError(f"make / {'shared' if plan.root_propagation & A.MS_SHARED else 'slave'}: "
                          f"{why(err)}") from None
    if plan.root_propagation & A.MS_SHARED:
        _unshare_rootfs_parents(kernel, plan.rootfs)
    plan.root_fd = _bind_rootfs(kernel, plan)
    for mount in plan.mounts:
        with annotated("remount" if mount.remount else "mount", mount.destination,
                       hint=_mount_hint(plan, mount)):
            if mount.fstype in ("cgroup", "cgroup2") and not mount.bind and not mount.remount:
                cgroupmounts.mount_cgroup(kernel, plan, mount)
            else:
                mounts.mount_one(kernel, plan, mount)
    if plan.setup_dev:
        existing = paths.lstat_in_root(plan.root_fd, "/dev")
        if existing is not None and stat.S_ISLNK(existing.st_mode):
            raise RootfsError("create devices: /dev is a symlink", op="mknod", path="/dev")
        with annotated("mknod", "/dev"):
            devices.create_devices(kernel, plan.root_fd, plan.devices, bind=plan.userns, host=host_devices)
        with annotated("symlink", "/dev"):
            devices.create_dev_symlinks(plan.root_fd, kcore=plan.kcore, host=host_devices)
    if console_path:
        with annotated("mount", "/dev/console"):
            devices.bind_console(kernel, plan.root_fd, console_path, host_devices)


def _mount_hint(plan: RootfsPlan, mount):
    """What to do when the kernel refuses a mount in a user namespace: bind a host directory instead."""
    if not plan.userns or mount.bind:
        return None

    def hint(err_no: int | None) -> str | None:
        if err_no != errno.EPERM:
            return None
        return (f"a user namespace may not mount a new {mount.fstype} (the kernel allows tmpfs, proc, sysfs, "
                "devpts, mqueue and a few others): bind a host directory there instead")
    return hint


def mount_console(plan: RootfsPlan, slave: str | int, kernel: Kernel = KERNEL) -> None:
    """Bind the pty slave onto /dev/console, after prepare_rootfs and before enter_rootfs.

    ``slave`` is the slave's fd (e.g. from TIOCGPTPEER), ``/proc/self/fd/<n>`` or a host path.
    """
    devices.bind_console(kernel, plan.root_fd, slave, plan.host_devices or HostDevices())


def open_ptmx(plan: RootfsPlan, kernel: Kernel = KERNEL) -> int:
    """Open the container's /dev/pts/ptmx (read-write, no controlling tty) resolved inside the rootfs,
    checked to be the pty multiplexer (char 5:2) of a devpts instance."""
    try:
        fd = paths.open_in_root(plan.root_fd, "/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
    except OSError as err:
        raise RootfsError(f"open /dev/pts/ptmx in the rootfs: {why(err)}") from None
    st = os.fstat(fd)
    if (not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(5, 2)
            or kernel.fs_type(fd) != _DEVPTS_SUPER_MAGIC):
        os.close(fd)
        raise RootfsError("/dev/pts/ptmx in the rootfs is not the pty multiplexer of a devpts")
    return fd


def _unshare_rootfs_parents(kernel: Kernel, rootfs: str) -> None:
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
            point = next((unescape(line.split()[4]) for line in mountinfo if line.split()[0] == mnt_id), "/")
        for target in dict.fromkeys((point, "/")):
            kernel.mount(None, target, None, A.MS_PRIVATE)
    except (OSError, StopIteration) as err:
        raise RootfsError(f"make the mount holding {rootfs} private: {err}") from None


def _bind_rootfs(kernel: Kernel, plan: RootfsPlan) -> int:
    try:
        target = os.open(plan.rootfs, A.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise RootfsError(f"rootfs {plan.rootfs}: {why(err)}") from None
    try:
        tree = kernel.clone(target, recursive=True)
        try:
            kernel.attach(tree, target)
            if plan.root_propagation & A.MS_SHARED:
                # pivot_root refuses a shared new root: the rootfs' own mount becomes private
                kernel.set_attrs(tree, propagation=A.MS_PRIVATE)
        except BaseException:
            os.close(tree)
            raise
    except OSError as err:
        raise RootfsError.from_os(err, "mount", plan.rootfs, what=f"bind rootfs {plan.rootfs} onto itself") from None
    finally:
        os.close(target)
    return tree


# ---------------------------------------------------------------------------------------------------
# pivot_root and after


def enter_rootfs(plan: RootfsPlan, kernel: Kernel = KERNEL) -> None:
    if plan.root_fd < 0:
        raise RootfsError("enter_rootfs called before prepare_rootfs")
    try:
        if plan.no_pivot:
            kernel.move_root(plan.root_fd)
        else:
            kernel.pivot_root(plan.root_fd)
    except OSError as err:
        action = f"move the rootfs {plan.rootfs} to /" if plan.no_pivot else f"pivot_root into {plan.rootfs}"
        raise RootfsError.from_os(err, "move_mount" if plan.no_pivot else "pivot_root", plan.rootfs,
                                  what=action) from None


def finish_rootfs(plan: RootfsPlan, kernel: Kernel = KERNEL) -> None:
    root = kernel.open_root()
    try:
        for tree, destination in plan.readonly_later:
            try:
                kernel.set_attrs(tree, attr_set=A.MOUNT_ATTR_RDONLY)
            except OSError as err:
                raise RootfsError.from_os(err, "mount_setattr", destination,
                                          what=f"make {destination} read-only") from None
        for path in plan.masked_paths:
            with annotated("mask", path):
                masks.mask(kernel, root, path, plan.null_fd)
        for path in plan.readonly_paths:
            with annotated("mount_setattr", path):
                masks.make_readonly(kernel, root, path)
        if plan.readonly:
            try:
                kernel.set_attrs(root, attr_set=A.MOUNT_ATTR_RDONLY)
            except OSError as err:
                raise RootfsError.from_os(err, "mount_setattr", "/", what="make the rootfs read-only") from None
        if plan.rootfs_propagation is not None:
            propagation, recursive = plan.rootfs_propagation
            try:
                kernel.set_attrs(root, propagation=propagation, recursive=recursive)
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
