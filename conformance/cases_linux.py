"""linux: namespaces, id mappings, devices, cgroups, sysctl, seccomp, masked and read-only paths,
hostname and domainname, personality."""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import time
from pathlib import Path

from conformance.harness import CaseContext, CaseFailed, CaseSkipped, case, check

NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt", "cgroup": "cgroup",
            "user": "user", "time": "time"}


def ns_inode(pid: int | str, ns_type: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{NS_FILES[ns_type]}").st_ino


def namespace_types(ctx: CaseContext) -> list[str]:
    return [ns["type"] for ns in ctx.config["linux"]["namespaces"]]


def declares_namespace(ns_type: str):
    return lambda features: ns_type in features.get("linux", {}).get("namespaces", [ns_type])


# ---- namespaces ------------------------------------------------------------------------------------------
@case("namespaces_created", "config-linux.md#namespaces",
      "each namespace listed without a path is a new namespace, distinct from the runtime's")
def namespaces_created(ctx: CaseContext) -> None:
    _, pid = ctx.start_process()
    for ns_type in namespace_types(ctx):
        check(ns_inode(pid, ns_type) != ns_inode("self", ns_type), f"the container shares the host's {ns_type} namespace")


@case("namespaces_absent_inherited", "config-linux.md#namespaces",
      "a namespace type that is not listed is inherited from the runtime")
def namespaces_absent_inherited(ctx: CaseContext) -> None:
    ctx.config["linux"]["namespaces"] = [ns for ns in ctx.config["linux"]["namespaces"] if ns["type"] != "ipc"]
    # mqueue belongs to an ipc namespace: without a new one a user namespace may not mount it.
    ctx.config["mounts"] = [m for m in ctx.config["mounts"] if m.get("type") != "mqueue"]
    _, pid = ctx.start_process()
    check(ns_inode(pid, "ipc") == ns_inode("self", "ipc"), "the container got a new ipc namespace it did not ask for")


def _namespace_holder(ctx: CaseContext, flags: list[str]) -> int:
    holder = subprocess.Popen(["unshare", *flags, "sleep", "30"])

    def stop() -> None:
        holder.kill()
        holder.wait()

    ctx.add_cleanup(stop)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{holder.pid}/comm").read_text().strip() != "sleep":
        if time.monotonic() > deadline:
            raise CaseFailed("the namespace holder did not start")
        time.sleep(0.005)
    return holder.pid


@case("namespaces_join_path", "config-linux.md#namespaces",
      "a namespace with a path makes the container join that namespace",
      rootful_only="joining a root-owned namespace needs root")
def namespaces_join_path(ctx: CaseContext) -> None:
    holder = _namespace_holder(ctx, ["--ipc", "--uts", "--net"])
    joined = {"ipc", "uts", "network"}
    ctx.config.pop("hostname", None)
    ctx.config["linux"]["namespaces"] = [
        {"type": ns["type"], "path": f"/proc/{holder}/ns/{NS_FILES[ns['type']]}"} if ns["type"] in joined else ns
        for ns in ctx.config["linux"]["namespaces"]]
    _, pid = ctx.start_process()
    for ns_type in sorted(joined):
        check(ns_inode(pid, ns_type) == ns_inode(holder, ns_type), f"the container did not join the {ns_type} path")


@case("namespaces_path_wrong_type", "config-linux.md#namespaces",
      "a namespace path that is not a namespace of the stated type is an error",
      rootful_only="joining a root-owned namespace needs root")
def namespaces_path_wrong_type(ctx: CaseContext) -> None:
    holder = _namespace_holder(ctx, ["--uts"])
    ctx.config["linux"]["namespaces"] = [
        {"type": "ipc", "path": f"/proc/{holder}/ns/uts"} if ns["type"] == "ipc" else ns
        for ns in ctx.config["linux"]["namespaces"]]
    ctx.config["process"]["args"] = ["true"]
    _, result = ctx.create()
    check(result.returncode != 0, "create joined a uts namespace file as an ipc namespace")
    check("internal error" not in result.output and "Traceback" not in result.output,
          f"the error is not a message: {result.describe()}")


@case("namespaces_user_path_wrong_type", "config-linux.md#namespaces",
      "a user namespace path that is another type of namespace is an error, and nothing is left",
      rootful_only="joining a root-owned namespace needs root")
def namespaces_user_path_wrong_type(ctx: CaseContext) -> None:
    holder = _namespace_holder(ctx, ["--net"])
    ctx.config["linux"]["namespaces"].append({"type": "user", "path": f"/proc/{holder}/ns/net"})
    ctx.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
    ctx.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 0, "size": 65536}]
    container_id, result = ctx.create()
    check(result.returncode != 0, "create joined a network namespace file as the user namespace")
    check("internal error" not in result.output and "Traceback" not in result.output,
          f"the error is not a message: {result.describe()}")
    check(ctx.call(["state", container_id]).returncode != 0, "the failed create left a container behind")


@case("namespaces_mount_inherited_or_refused", "config-linux.md#namespaces",
      "without a mount namespace the container shares the runtime's, or the runtime refuses with a reason")
def namespaces_mount_inherited_or_refused(ctx: CaseContext) -> None:
    # ocirt refuses (docs/conformance.md says why); runc and crun share, and leave the container's mounts in
    # the host's mount namespace, below the bundle: take them away after the case.
    bundle = str(ctx.bundle)

    def unmount_below_bundle() -> None:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in sorted((p for p in points if p.startswith(bundle + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)

    ctx.add_cleanup(unmount_below_bundle)
    ctx.config["linux"]["namespaces"] = [ns for ns in ctx.config["linux"]["namespaces"] if ns["type"] != "mount"]
    container_id, result = ctx.create()
    if result.returncode != 0:
        said = result.output.lower()
        check(("mount namespace" in said or "mnt namespace" in said) and "internal error" not in said,
              f"refused without saying it is about the mount namespace: {result.describe()}")
        return
    pid = ctx.state(container_id)["pid"]
    check(ns_inode(pid, "mount") == ns_inode("self", "mount"), "the container got a mount namespace of its own")


@case("namespaces_time_offsets", "config-linux.md#offset-for-time-namespace",
      "a time namespace gets the configured boottime and monotonic offsets")
def namespaces_time_offsets(ctx: CaseContext) -> None:
    ctx.skip_if_undeclared("the time namespace", declares_namespace("time"))
    offset = 10 * 86400
    ctx.config["linux"]["namespaces"].append({"type": "time"})
    ctx.config["linux"]["timeOffsets"] = {"boottime": {"secs": offset, "nanosecs": 0},
                                          "monotonic": {"secs": offset, "nanosecs": 0}}
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    out = ctx.run_ok(["cat", "/proc/uptime"])
    uptime = float(out.split()[0])
    check(uptime >= host_uptime + offset - 1, f"uptime in the container is {uptime:.0f}s, host {host_uptime:.0f}s: "
          f"the boottime offset of {offset}s is missing")


# ---- user namespace and id mappings -----------------------------------------------------------------------
def _read_map(pid: int, name: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in line.split()) for line in Path(f"/proc/{pid}/{name}").read_text().splitlines()]


@case("user_namespace_mappings", "config-linux.md#user-namespace-mappings",
      "uidMappings and gidMappings become the user namespace's uid_map and gid_map")
def user_namespace_mappings(ctx: CaseContext) -> None:
    if ctx.rootless:
        expected_uid: list[tuple[int, ...]] = [(0, ctx.uid, 1)]
        expected_gid: list[tuple[int, ...]] = [(0, ctx.gid, 1)]
    else:
        ctx.skip_if_undeclared("the user namespace", declares_namespace("user"))
        base = 200000
        ctx.config["linux"]["namespaces"].append({"type": "user"})
        ctx.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
        ctx.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": base, "size": 65536}]
        expected_uid = expected_gid = [(0, base, 65536)]
    _, pid = ctx.start_process()
    check(ns_inode(pid, "user") != ns_inode("self", "user"), "the container has no user namespace of its own")
    check(_read_map(pid, "uid_map") == expected_uid, f"uid_map is {_read_map(pid, 'uid_map')}, expected {expected_uid}")
    check(_read_map(pid, "gid_map") == expected_gid, f"gid_map is {_read_map(pid, 'gid_map')}, expected {expected_gid}")


# ---- devices ----------------------------------------------------------------------------------------------
DEFAULT_DEVICES = {"/dev/null": (1, 3), "/dev/zero": (1, 5), "/dev/full": (1, 7), "/dev/random": (1, 8),
                   "/dev/urandom": (1, 9), "/dev/tty": (5, 0)}


@case("devices_default", "config-linux.md#default-devices",
      "the default devices (null, zero, full, random, urandom, tty) exist as character devices with the right numbers")
def devices_default(ctx: CaseContext) -> None:
    out = ctx.run_ok(["stat", "-c", "%n|%F|%t|%T", *DEFAULT_DEVICES])
    seen: dict[str, tuple[str, int, int]] = {}
    for line in out.splitlines():
        name, kind, major_hex, minor_hex = line.split("|")
        seen[name] = (kind, int(major_hex, 16), int(minor_hex, 16))
    for path, numbers in DEFAULT_DEVICES.items():
        check(path in seen, f"{path} is missing")
        kind, major, minor = seen[path]
        check(kind == "character special file" and (major, minor) == numbers,
              f"{path} is {kind} {major}:{minor}, expected a character device {numbers[0]}:{numbers[1]}")


@case("devices_ptmx", "config-linux.md#default-devices", "/dev/ptmx exists and leads to the container's devpts ptmx")
def devices_ptmx(ctx: CaseContext) -> None:
    result = ctx.run(["sh", "-c", "readlink /dev/ptmx || stat -c '%t:%T' /dev/ptmx"])
    out = result.stdout.strip()
    check(out in ("pts/ptmx", "/dev/pts/ptmx", "5:2"), f"/dev/ptmx is {out!r} ({result.describe()})")


@case("devices_dev_symlinks", "runtime-linux.md#dev-symbolic-links",
      "/dev/fd, /dev/stdin, /dev/stdout and /dev/stderr are symlinks into /proc/self/fd")
def devices_dev_symlinks(ctx: CaseContext) -> None:
    expected = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1",
                "/dev/stderr": "/proc/self/fd/2"}
    out = ctx.run(["sh", "-c", "for l in /dev/fd /dev/stdin /dev/stdout /dev/stderr; do "
                               "echo \"$l=$(readlink $l)\"; done"]).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    for link, target in expected.items():
        check(seen.get(link) == target, f"{link} points to {seen.get(link)!r}, expected {target}")


@case("devices_linux_devices", "config-linux.md#devices",
      "each linux.devices entry is created with its type, numbers, mode and owner",
      rootful_only="creating device nodes needs real root")
def devices_linux_devices(ctx: CaseContext) -> None:
    ctx.config["linux"]["devices"] = [{"path": "/dev/conformance-null", "type": "c", "major": 1, "minor": 3,
                                       "fileMode": 0o640, "uid": 0, "gid": 5}]
    out = ctx.run_ok(["stat", "-c", "%F|%t|%T|%a|%u|%g", "/dev/conformance-null"]).strip()
    check(out == "character special file|1|3|640|0|5", f"/dev/conformance-null is {out!r}, "
          "expected a character device 1:3, mode 640, owner 0:5")


# ---- cgroups ----------------------------------------------------------------------------------------------
CGROUP_PREFIX = "ocirt-conf-"


def cgroup_mounts() -> dict[str, str]:
    """controller -> mount point, for the cgroup v1 hierarchies, plus '' for cgroup2."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        fs_type, super_options = fields[dash + 1], fields[dash + 3].split(",")
        if fs_type == "cgroup2":
            mounts[""] = fields[4]
        elif fs_type == "cgroup":
            for option in super_options:
                if option not in ("rw", "ro") and not option.startswith("name="):
                    mounts.setdefault(option, fields[4])
    return mounts


def process_cgroup_dir(pid: int, controller: str) -> Path:
    mounts = cgroup_mounts()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") and controller in mounts:
            return Path(mounts[controller] + path)
        if controller == "" and controllers == "" and "" in mounts:
            return Path(mounts[""] + path)
    raise CaseFailed(f"the container process is in no {controller or 'cgroup2'} cgroup")


def own_cgroup(ctx: CaseContext) -> str:
    """A unique cgroupsPath for this case; every directory it leaves behind is removed afterwards."""
    name = CGROUP_PREFIX + secrets.token_hex(4)
    path = f"/{name}"
    ctx.config["linux"]["cgroupsPath"] = path

    def remove() -> None:
        for mount_point in set(cgroup_mounts().values()):
            directory = Path(mount_point) / name
            if directory.is_dir():
                for child in sorted(directory.rglob("*"), reverse=True):
                    if child.is_dir():
                        child.rmdir()
                directory.rmdir()

    ctx.add_cleanup(remove)
    return path


def _cgroup_value(pid: int, controller: str, filename: str) -> str:
    return (process_cgroup_dir(pid, controller) / filename).read_text().strip()


ROOTLESS_CGROUPS = "cgroup v1 limits need root or a delegated hierarchy"


@case("cgroups_path", "config-linux.md#cgroups-path",
      "an absolute cgroupsPath places the container process in that cgroup", rootful_only=ROOTLESS_CGROUPS)
def cgroups_path(ctx: CaseContext) -> None:
    path = own_cgroup(ctx)
    _, pid = ctx.start_process()
    for controller in ("memory", "pids"):
        directory = process_cgroup_dir(pid, controller)
        check(str(directory).endswith(path), f"the {controller} cgroup is {directory}, expected one ending in {path}")


@case("cgroups_memory_limit", "config-linux.md#memory", "resources.memory.limit sets the memory limit",
      rootful_only=ROOTLESS_CGROUPS)
def cgroups_memory_limit(ctx: CaseContext) -> None:
    own_cgroup(ctx)
    limit = 64 * 1024 * 1024
    ctx.config["linux"].setdefault("resources", {})["memory"] = {"limit": limit}
    _, pid = ctx.start_process()
    value = _cgroup_value(pid, "memory", "memory.limit_in_bytes")
    check(value == str(limit), f"memory.limit_in_bytes is {value}, expected {limit}")


@case("cgroups_pids_limit", "config-linux.md#pids", "resources.pids.limit sets the pids limit",
      rootful_only=ROOTLESS_CGROUPS)
def cgroups_pids_limit(ctx: CaseContext) -> None:
    own_cgroup(ctx)
    ctx.config["linux"].setdefault("resources", {})["pids"] = {"limit": 42}
    _, pid = ctx.start_process()
    value = _cgroup_value(pid, "pids", "pids.max")
    check(value == "42", f"pids.max is {value}, expected 42")


@case("cgroups_cpu_shares", "config-linux.md#cpu", "resources.cpu.shares sets the cpu shares",
      rootful_only=ROOTLESS_CGROUPS)
def cgroups_cpu_shares(ctx: CaseContext) -> None:
    own_cgroup(ctx)
    ctx.config["linux"].setdefault("resources", {})["cpu"] = {"shares": 512}
    _, pid = ctx.start_process()
    value = _cgroup_value(pid, "cpu", "cpu.shares")
    check(value == "512", f"cpu.shares is {value}, expected 512")


@case("cgroups_removed_on_delete", "runtime.md#delete",
      "delete removes the cgroup that create made", rootful_only=ROOTLESS_CGROUPS)
def cgroups_removed_on_delete(ctx: CaseContext) -> None:
    own_cgroup(ctx)
    container_id, pid = ctx.start_process()
    directory = process_cgroup_dir(pid, "memory")
    check(ctx.kill(container_id, "KILL").returncode == 0, "kill failed")
    ctx.wait_status(container_id, "stopped")
    result = ctx.delete(container_id)
    check(result.returncode == 0, f"delete failed: {result.describe()}")
    check(not directory.exists(), f"{directory} is still there after delete")


# ---- sysctl, seccomp ---------------------------------------------------------------------------------------
@case("sysctl_ipc", "config-linux.md#sysctl", "linux.sysctl values are written to the container's /proc/sys")
def sysctl_ipc(ctx: CaseContext) -> None:
    ctx.config["linux"]["sysctl"] = {"kernel.shm_rmid_forced": "1", "kernel.msgmax": "4242"}
    out = ctx.run_ok(["cat", "/proc/sys/kernel/shm_rmid_forced", "/proc/sys/kernel/msgmax"]).split()
    check(out == ["1", "4242"], f"the sysctls read {out}, expected ['1', '4242']")


@case("sysctl_net", "config-linux.md#sysctl", "a network sysctl applies inside the container's network namespace")
def sysctl_net(ctx: CaseContext) -> None:
    if "network" not in namespace_types(ctx):
        ctx.config["linux"]["namespaces"].append({"type": "network"})
    ctx.config["linux"]["sysctl"] = {"net.ipv4.ip_unprivileged_port_start": "555"}
    out = ctx.run_ok(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).strip()
    check(out == "555", f"net.ipv4.ip_unprivileged_port_start is {out}, expected 555")


def _seccomp_blocking_mkdir(errno_value: int) -> dict:
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno_value}]}


@case("seccomp_errno_eperm", "config-linux.md#seccomp",
      "a seccomp rule with SCMP_ACT_ERRNO makes the listed syscalls fail with EPERM, others still work")
def seccomp_errno_eperm(ctx: CaseContext) -> None:
    ctx.tmpfs("/tmp")
    ctx.config["linux"]["seccomp"] = _seccomp_blocking_mkdir(1)
    result = ctx.run(["sh", "-c", "touch /tmp/file && echo touched; mkdir /tmp/dir"])
    check("touched" in result.stdout, f"an allowed syscall failed under the filter: {result.describe()}")
    check(result.returncode != 0 and "Operation not permitted" in result.output,
          f"mkdir was not refused with EPERM: {result.describe()}")


@case("seccomp_errno_ret", "config-linux.md#seccomp", "errnoRet chooses the errno a blocked syscall returns")
def seccomp_errno_ret(ctx: CaseContext) -> None:
    ctx.tmpfs("/tmp")
    ctx.config["linux"]["seccomp"] = _seccomp_blocking_mkdir(13)
    result = ctx.run(["mkdir", "/tmp/dir"])
    check(result.returncode != 0 and "Permission denied" in result.output,
          f"mkdir was not refused with EACCES: {result.describe()}")


# Only what runc 1.1.5 calls between loading its filter and execve (strace -f, run and exec), and what
# busybox's `true` calls: a runtime that makes any other syscall there fails under such a profile.
_RUNC_AND_TRUE_SYSCALLS = [
    "capget", "capset", "chdir", "close", "epoll_ctl", "faccessat2", "fcntl", "fstat", "fstatfs", "futex",
    "getcwd", "getdents64", "getpid", "getppid", "newfstatat", "openat", "prctl", "read", "rt_sigreturn",
    "setgid", "setgroups", "setuid", "write", "execve", "arch_prctl", "brk", "exit", "exit_group", "getuid",
    "ioctl", "mprotect", "prlimit64", "readlink", "rseq", "rt_sigaction", "rt_sigprocmask", "set_robust_list",
    "set_tid_address", "uname", "getrandom",
]


@case("seccomp_default_deny_early_filter", "config-linux.md#seccomp",
      "a default-deny profile allowing only runc's own syscalls and the program's runs with noNewPrivileges false")
def seccomp_default_deny_early_filter(ctx: CaseContext) -> None:
    if platform.machine() != "x86_64":
        raise CaseSkipped("the syscall list was measured on x86_64")
    ctx.config["process"]["noNewPrivileges"] = False
    ctx.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                                      "syscalls": [{"names": _RUNC_AND_TRUE_SYSCALLS, "action": "SCMP_ACT_ALLOW"}]}
    result = ctx.run(["true"])
    check(result.returncode == 0, f"the container did not start under the profile: {result.describe()}")


@case("linux_mount_label_unsupported", "runtime.md#create",
      "linux.mountLabel on a host without SELinux is an error, not silently dropped")
def mount_label_unsupported(ctx: CaseContext) -> None:
    if Path("/sys/fs/selinux/enforce").exists():
        raise CaseSkipped("SELinux is enabled here: the label could be applied")
    ctx.config["linux"]["mountLabel"] = "system_u:object_r:container_file_t:s0:c1,c2"
    container_id, result = ctx.create()
    check(result.returncode != 0, "create accepted a mount label that cannot be applied")
    check(ctx.call(["state", container_id]).returncode != 0, "the refused create left a container behind")


# ---- masked and read-only paths ----------------------------------------------------------------------------
@case("masked_paths", "config-linux.md#masked-paths",
      "maskedPaths hide files (they read empty) and directories (they list empty)")
def masked_paths(ctx: CaseContext) -> None:
    ctx.config["linux"]["maskedPaths"] = ["/proc/timer_list", "/etc/hostname", "/home"]
    out = ctx.run_ok(["sh", "-c", "cat /proc/timer_list /etc/hostname | wc -c; ls -A /home | wc -l"]).split()
    check(out == ["0", "0"], f"masked files read {out[0]} bytes and the masked directory lists {out[1]} entries")


@case("readonly_paths", "config-linux.md#readonly-paths", "readonlyPaths become read-only in the container")
def readonly_paths(ctx: CaseContext) -> None:
    ctx.rootfs_dir("/mnt/rw")
    ctx.tmpfs("/mnt/rw")
    ctx.config["linux"]["readonlyPaths"] = ["/proc/sys", "/mnt/rw"]
    result = ctx.run(["sh", "-c", "touch /mnt/rw/file; echo 1 > /proc/sys/kernel/shm_rmid_forced"])
    check(result.output.count("Read-only file system") == 2,
          f"a write to a read-only path was not refused as read-only: {result.output.strip()!r}")


# ---- hostname, domainname, personality ---------------------------------------------------------------------
@case("hostname", "config.md#hostname", "hostname sets the container's hostname in its uts namespace")
def hostname(ctx: CaseContext) -> None:
    ctx.config["hostname"] = "conformance-host"
    out = ctx.run_ok(["hostname"]).strip()
    check(out == "conformance-host", f"hostname is {out!r}")
    check(os.uname().nodename != "conformance-host", "the host's hostname changed")


@case("domainname", "config.md#domainname", "domainname sets the container's NIS domain name")
def domainname(ctx: CaseContext) -> None:
    ctx.config["domainname"] = "conformance.example"
    out = ctx.run_ok(["cat", "/proc/sys/kernel/domainname"]).strip()
    check(out == "conformance.example", f"domainname is {out!r}")


@case("personality", "config-linux.md#personality", "personality LINUX32 makes the process see a 32-bit machine")
def personality(ctx: CaseContext) -> None:
    expected = {"x86_64": "i686", "aarch64": "armv8l"}.get(platform.machine())
    if expected is None:
        raise CaseSkipped(f"no known 32-bit personality name for {platform.machine()}")
    ctx.config["linux"]["personality"] = {"domain": "LINUX32"}
    out = ctx.run_ok(["uname", "-m"]).strip()
    check(out == expected, f"uname -m is {out!r}, expected {expected!r}")
