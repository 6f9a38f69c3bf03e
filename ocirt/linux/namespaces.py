"""Namespaces: which the config creates, which it joins by path, and in what order."""

from __future__ import annotations

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
    if not os.path.exists("/proc/self/ns/time") and "time" in new:
        raise ConfigError("time namespaces are not supported by this kernel")
    return NamespacePlan(new, join)


def open_join_fds(plan: NamespacePlan) -> list[tuple[str, int]]:
    """Open every namespace to join before anything changes, so a path relative to the host stays valid."""
    fds = []
    for ns_type in JOIN_ORDER:
        path = plan.join.get(ns_type)
        if path:
            try:
                fds.append((ns_type, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
            except OSError as err:
                raise OcirtError(f"cannot open {ns_type} namespace {path}: {why(err)}") from None
    return fds


def join(ns_type: str, fd: int) -> None:
    try:
        sc.setns(fd, FLAGS[ns_type])
    except OSError as err:
        raise OcirtError(f"cannot join {ns_type} namespace: {why(err)}") from None


def unshare(flags: int) -> None:
    if not flags:
        return
    try:
        sc.unshare(flags)
    except OSError as err:
        names = [n for n, f in FLAGS.items() if f & flags]
        raise OcirtError(
            f"cannot create namespaces ({', '.join(names)}): {why(err)}"
        ) from None
