"""Namespaces: which the config creates, which it joins by path, and in what order."""

from __future__ import annotations

import errno
import os

from ocirt import syscalls as sc
from ocirt.errors import ConfigError, OcirtError, why

FLAGS = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
}
PROC_NAMES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts", "user": "user",
              "cgroup": "cgroup", "time": "time"}

# setns order: the user namespace first (it grants the capabilities for the rest), the mount namespace last
# among those joined by path so earlier joins can still open /proc paths of the host.
JOIN_ORDER = ("user", "ipc", "uts", "network", "cgroup", "pid", "time", "mount")


class NamespacePlan:
    def __init__(self, new: dict[str, bool], join: dict[str, str]):
        self.new = new        # type -> True for each namespace to create
        self.join = join      # type -> path for each namespace to join

    def has(self, ns_type: str) -> bool:
        return ns_type in self.new or ns_type in self.join

    @property
    def unshare_flags(self) -> int:
        flags = 0
        for ns_type in self.new:
            if ns_type != "user":
                flags |= FLAGS[ns_type]
        return flags


# config-linux.md: "If a namespace type is not specified in the namespaces array, the container MUST inherit
# the runtime namespace of that type." For the mount namespace that can't be done safely: the container's
# rootfs, /proc, /sys, /dev and every configured mount would be mounted in the host's mount namespace (left
# there if the runtime dies), and entered with chroot, which a process holding CAP_SYS_CHROOT escapes,
# since pivot_root would move the host's own root. runc and crun do it, and leave those mounts on the host.
NO_MOUNT_NAMESPACE = (
    "$.linux.namespaces: no mount namespace: the spec would have the container share the runtime's, so "
    "its rootfs, /proc, /sys, /dev and mounts would be mounted in the host's mount namespace and entered "
    "with chroot; ocirt refuses that (add {\"type\": \"mount\"})")


def plan_namespaces(config: dict) -> NamespacePlan:
    new: dict[str, bool] = {}
    join: dict[str, str] = {}
    for i, ns in enumerate(config.get("linux", {}).get("namespaces", []) or []):
        ns_type = ns.get("type")
        if ns_type not in FLAGS:
            raise ConfigError(f"$.linux.namespaces[{i}].type: unknown namespace type {ns_type!r}")
        if ns_type in new or ns_type in join:
            raise ConfigError(f"$.linux.namespaces[{i}]: namespace {ns_type!r} is listed twice")
        path = ns.get("path")
        if path:
            if not os.path.exists(path):
                raise ConfigError(f"$.linux.namespaces[{i}].path: {path}: no such file or directory")
            join[ns_type] = path
        else:
            new[ns_type] = True
    if "mount" not in new and "mount" not in join:
        raise ConfigError(NO_MOUNT_NAMESPACE)
    if not os.path.exists("/proc/self/ns/time") and "time" in new:
        raise ConfigError("time namespaces are not supported by this kernel")
    return NamespacePlan(new, join)


_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: its CLONE_NEW* type (Linux 4.11)
TYPE_OF_FLAG = {flag: ns_type for ns_type, flag in FLAGS.items()}


def open_join_fds(plan: NamespacePlan) -> list[tuple[str, int]]:
    """Open every namespace to join before anything changes, so a path relative to the host stays valid,
    and check that each is of the type the config says (setns would refuse it later, in a forked child)."""
    fds: list[tuple[str, int]] = []
    try:
        for ns_type in JOIN_ORDER:
            path = plan.join.get(ns_type)
            if path:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as err:
                    raise OcirtError(f"cannot open {ns_type} namespace {path}: {why(err)}", op="open",
                                      path=path) from None
                fds.append((ns_type, fd))
                _check_type(fd, ns_type, path)
    except BaseException:
        for _, fd in fds:
            os.close(fd)
        raise
    return fds


def _check_type(fd: int, ns_type: str, path: str) -> None:
    import fcntl

    try:
        actual = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as err:
        if err.errno == errno.ENOTTY:
            raise ConfigError(f"$.linux.namespaces: {ns_type} namespace path {path} is not a namespace "
                              "file") from None
        return  # a kernel without NS_GET_NSTYPE: setns still checks the type
    if actual != FLAGS[ns_type]:
        kind = TYPE_OF_FLAG.get(actual, f"type {actual:#x}")
        raise ConfigError(f"$.linux.namespaces: {ns_type} namespace path {path} is a {kind} namespace, "
                          f"not a {ns_type} namespace")


def join(ns_type: str, fd: int) -> None:
    try:
        sc.setns(fd, FLAGS[ns_type])
    except OSError as err:
        raise OcirtError(f"cannot join {ns_type} namespace: {why(err)}", op="setns") from None


def unshare(flags: int) -> None:
    if not flags:
        return
    try:
        sc.unshare(flags)
    except OSError as err:
        names = [n for n, f in FLAGS.items() if f & flags]
        raise OcirtError(
            f"cannot create namespaces ({', '.join(names)}): {why(err)}", op="unshare"
        ) from None
