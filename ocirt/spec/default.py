"""The config that `ocirt spec` writes: a runnable starting point, rootful or rootless."""

from __future__ import annotations

import os

from ocirt.version import OCI_VERSION

DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_config(*, rootless: bool = False, uid: int | None = None, gid: int | None = None,
                   args: list[str] | None = None, terminal: bool = True) -> dict:
    caps = list(DEFAULT_CAPABILITIES)
    config: dict = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "ocirt",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if rootless:
        make_rootless(config, os.getuid() if uid is None else uid, os.getgid() if gid is None else gid)
    return config


def make_rootless(config: dict, uid: int, gid: int) -> None:
    """Turn a rootful config into one an unprivileged user can run with no setup at all."""
    linux = config.setdefault("linux", {})
    namespaces = [ns for ns in linux.get("namespaces", []) if ns["type"] not in ("network", "user")]
    namespaces.append({"type": "user"})
    linux["namespaces"] = namespaces
    linux["uidMappings"] = [{"containerID": 0, "hostID": uid, "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": gid, "size": 1}]
    linux.pop("resources", None)
    mounts = []
    for mount in config.get("mounts", []):
        if mount["destination"] == "/sys/fs/cgroup":
            continue
        if mount["destination"] == "/sys":
            # Without a private network namespace the kernel refuses a fresh sysfs to a user namespace.
            mount = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "rro"]}
        elif mount.get("type") == "devpts":
            # gid 5 (tty) is not mapped by a single-id mapping, and devpts refuses an unmapped gid.
            mount = dict(mount, options=[o for o in mount.get("options", []) if o != "gid=5"])
        mounts.append(mount)
    config["mounts"] = mounts
