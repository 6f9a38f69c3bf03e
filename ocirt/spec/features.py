"""`ocirt features`: what this build of ocirt supports (features.md, features-linux.md)."""

from __future__ import annotations

from ocirt.version import OCI_VERSION

MOUNT_OPTIONS = [
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "idmap", "mand", "noatime",
    "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "nosymfollow",
    "private", "ratime", "rbind", "rdev", "rdiratime", "relatime", "remount", "rexec", "ridmap", "rnoatime",
    "rnodev", "rnodiratime", "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow", "ro",
    "rprivate", "rrelatime", "rro", "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow",
    "runbindable", "rw", "shared", "slave", "strictatime", "suid", "symfollow", "sync", "unbindable",
]
HOOKS = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
NAMESPACES = ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"]
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
SECCOMP_ACTIONS = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                   "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"]
SECCOMP_OPERATORS = ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                     "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"]
SECCOMP_FLAGS = ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC",
                 "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
SECCOMP_ARCHES = [
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_X32",
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64",
]


def _seccomp() -> dict:
    """Enabled only where a profile can really be compiled: libseccomp and a Python binding for it."""
    from ocirt.errors import OcirtError
    from ocirt.linux.seccomp import binding, libseccomp_version

    try:
        libseccomp_version()
        binding()
    except (OSError, OcirtError):
        return {"enabled": False}
    return {
        "enabled": True,
        "actions": list(SECCOMP_ACTIONS),
        "operators": list(SECCOMP_OPERATORS),
        "archs": list(SECCOMP_ARCHES),
        "knownFlags": list(SECCOMP_FLAGS),
        "supportedFlags": list(SECCOMP_FLAGS),
    }


def features() -> dict:
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOKS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": list(NAMESPACES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": True, "systemdUser": True, "rdma": True},
            "seccomp": _seccomp(),
            "apparmor": {"enabled": True},
            "selinux": {"enabled": True},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": True}},
            "netDevices": {"enabled": True},
            "memoryPolicy": {
                "modes": ["MPOL_DEFAULT", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_WEIGHTED_INTERLEAVE",
                          "MPOL_PREFERRED", "MPOL_PREFERRED_MANY", "MPOL_LOCAL"],
                "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"],
            },
        },
        # Annotations that change what the runtime does to the host: systemd unit properties.
        "potentiallyUnsafeConfigAnnotations": ["org.systemd.property."],
        "annotations": {
            "io.github.ocirt.version": __import__("ocirt").__version__,
            **_host_annotations(),
        },
    }


def _host_annotations() -> dict[str, str]:
    """What this host gives the cgroup drivers: the hierarchy, how device rules are enforced, systemd."""
    import os

    from ocirt import cgroups
    from ocirt.errors import CgroupError

    try:
        mode = cgroups.detect_mode()
    except CgroupError:
        return {"io.github.ocirt.cgroup.mode": "none"}
    devices = "ebpf" if mode == "v2" else "v1-devices-controller"
    return {"io.github.ocirt.cgroup.mode": mode, "io.github.ocirt.cgroup.devices": devices,
            "io.github.ocirt.systemd": "running" if os.path.isdir("/run/systemd/system") else "absent"}
