"""A ``cgroup`` or ``cgroup2`` mount of the config: the host's hierarchies as the container sees them.

On a cgroup v1 or hybrid host a ``cgroup`` mount is a tmpfs with one directory per host hierarchy: with a
private cgroup namespace each gets a fresh mount of its controllers; without one (or where the kernel
refuses a fresh one to a user namespace) a bind of the container's own cgroup directory. ``cgroup2`` is a
fresh cgroup2, or a bind of the container's cgroup2 directory where the kernel refuses it. The hierarchies
are read from the host's mountinfo in the parent (``cgroup_hierarchies``).
"""

from __future__ import annotations

import os

from ocirt import syscalls
from ocirt.errors import why
from ocirt.linux import mounts, paths
from ocirt.linux.kernel import Kernel
from ocirt.linux.mountplan import MountPlan, Plain, RootfsError, unescape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirt.linux.rootfs import RootfsPlan

A = syscalls


class CgroupHierarchy(Plain):
    __slots__ = ("name", "fstype", "controllers", "host_mountpoint", "host_root", "source")

    def __init__(self, name: str, fstype: str, controllers: tuple[str, ...], host_mountpoint: str,
                 host_root: str, source: str | None = None):
        self.name = name  # directory under /sys/fs/cgroup, e.g. "memory" or "cpu,cpuacct"
        self.fstype = fstype  # "cgroup" or "cgroup2"
        self.controllers = controllers  # super options, e.g. ("memory",) or ("name=systemd",)
        self.host_mountpoint = host_mountpoint
        self.host_root = host_root  # the hierarchy path that host_mountpoint shows (from mountinfo)
        self.source = source  # the container's cgroup dir on the host, when known in the parent


def cgroup_hierarchies(cgroup_paths: dict[str, str] | None) -> list[CgroupHierarchy]:
    """The host's hierarchies under /sys/fs/cgroup, each with the container's directory in it when known."""
    hierarchies = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            sep = fields.index("-")
            fstype, super_opts = fields[sep + 1], fields[sep + 3]
            mountpoint = unescape(fields[4])
            if fstype not in ("cgroup", "cgroup2") or os.path.dirname(mountpoint) != "/sys/fs/cgroup":
                continue
            controllers = tuple(opt for opt in super_opts.split(",")
                                if opt not in ("rw", "ro") and (fstype == "cgroup")
                                and not opt.startswith(("release_agent=", "xattr", "clone_children",
                                                        "noprefix", "cpuset_v2_mode")))
            hierarchy = CgroupHierarchy(os.path.basename(mountpoint), fstype, controllers, mountpoint,
                                        unescape(fields[3]))
            if cgroup_paths:
                for key in (hierarchy.name, *controllers, *(c.split("=", 1)[-1] for c in controllers)):
                    if key in cgroup_paths:
                        hierarchy.source = cgroup_paths[key]
                        break
                if hierarchy.source is None and fstype == "cgroup2" and "" in cgroup_paths:
                    hierarchy.source = cgroup_paths[""]
            hierarchies.append(hierarchy)
    return hierarchies


def mount_cgroup(kernel: Kernel, plan: RootfsPlan, mount: MountPlan) -> None:
    target = mounts.destination_fd(kernel, plan, mount)
    try:
        if mount.fstype == "cgroup2" or not mount.cgroups:
            _mount_cgroup2(kernel, plan, mount, target)
        else:
            _mount_cgroup1(kernel, plan, mount, mount.cgroups, target)
    finally:
        os.close(target)


def _mount_cgroup1(kernel: Kernel, plan: RootfsPlan, mount: MountPlan, hierarchies: list[CgroupHierarchy],
                   target: int) -> None:
    """A tmpfs with one directory per hierarchy, as the host lays it out."""
    base_attrs = A.MOUNT_ATTR_NOSUID | A.MOUNT_ATTR_NODEV | A.MOUNT_ATTR_NOEXEC
    try:
        tmpfs = mounts.new_filesystem(kernel, mount, "tmpfs", "tmpfs", ["mode=755"], [], attrs=base_attrs)
        try:
            mounts.attach_tree(kernel, MountPlan(mount.destination, "tmpfs", "tmpfs",
                                                 propagation=mount.propagation), tmpfs, target)
            own = None if mount.private_cgroupns else _own_cgroups()
            for hierarchy in hierarchies:
                _mount_hierarchy(kernel, plan, mount, hierarchy, own)
            for hierarchy in hierarchies:
                if "," in hierarchy.name:
                    _cgroup_symlinks(plan, mount, hierarchy.name)
            if mount.readonly:
                kernel.set_attrs(tmpfs, attr_set=A.MOUNT_ATTR_RDONLY)
        finally:
            os.close(tmpfs)
    except OSError as err:
        raise RootfsError(f"{mount.describe()}: {why(err)}") from None


def _mount_cgroup2(kernel: Kernel, plan: RootfsPlan, mount: MountPlan, target: int) -> None:
    try:
        tree: int | None = mounts.new_filesystem(kernel, mount, "cgroup2", mount.source or "cgroup2", mount.data,
                                                 mount.sb_flags)
    except RootfsError:
        if not plan.userns:
            raise
        # In a user namespace without its own cgroup namespace the kernel refuses cgroup2: show the
        # container's own cgroup (or the whole hierarchy) through a bind instead, as runc does.
        bind = _bind_instead(mount, mount.destination, mount.cgroup2_source or "/sys/fs/cgroup")
        tree = mounts.bind_or_skip(kernel, mount, bind, target)
        mount = bind
    if tree is not None:
        _attach_and_close(kernel, mount, tree, target)


def _own_cgroups() -> dict[str, str]:
    """controllers (as in /proc/self/cgroup) -> this process's cgroup path in that hierarchy."""
    own = {}
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    return own


def _mount_hierarchy(kernel: Kernel, plan: RootfsPlan, mount: MountPlan, hierarchy: CgroupHierarchy,
                     own: dict[str, str] | None) -> None:
    sub = MountPlan(f"{mount.destination}/{hierarchy.name}", hierarchy.fstype, "cgroup",
                    attr_set=mount.attr_set, attr_clr=mount.attr_clr, atime=mount.atime,
                    propagation=mount.propagation)
    target = mounts.destination_fd(kernel, plan, sub, directory=True)
    try:
        tree = None
        if own is None:
            options = [] if hierarchy.fstype == "cgroup2" else list(hierarchy.controllers)
            try:
                tree = mounts.new_filesystem(kernel, sub, hierarchy.fstype, "cgroup", options, [])
            except RootfsError:
                if not plan.userns:
                    raise
        if tree is None:
            sub = _bind_instead(mount, sub.destination, _container_cgroup(hierarchy, own))
            tree = mounts.bind_or_skip(kernel, mount, sub, target)
        if tree is not None:
            _attach_and_close(kernel, sub, tree, target)
    finally:
        os.close(target)


def _container_cgroup(hierarchy: CgroupHierarchy, own: dict[str, str] | None) -> str:
    """The host path of the container's directory in ``hierarchy`` (its whole mount when out of reach)."""
    if hierarchy.source is not None:
        return hierarchy.source
    key = ",".join(hierarchy.controllers) if hierarchy.fstype == "cgroup" else ""
    cgroup_path = (own or _own_cgroups()).get(key, "/")
    relative = os.path.relpath(cgroup_path, hierarchy.host_root)
    if relative.startswith(".."):
        return hierarchy.host_mountpoint
    return os.path.normpath(os.path.join(hierarchy.host_mountpoint, relative))


def _bind_instead(mount: MountPlan, destination: str, source: str) -> MountPlan:
    return MountPlan(destination, "bind", source, bind=True, recursive=True, attr_set=mount.attr_set,
                     attr_clr=mount.attr_clr, propagation=mount.propagation)


def _attach_and_close(kernel: Kernel, mount: MountPlan, tree: int, target: int) -> None:
    try:
        mounts.attach_tree(kernel, mount, tree, target)
    finally:
        os.close(tree)


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
