"""Starting a runtime's CLI the same way for every runtime, and timing it.

Every call is one posix_spawn(3) (vfork + execve: about 0.6 ms here, against 1.3 ms for a fork of the
benchmark's Python process), so the launch floor in every figure is as low and as equal as it can be:

- rootless: the benchmark keeps euid 0 but sets its *real* uid/gid to the bench user and drops its
  supplementary groups while it measures; POSIX_SPAWN_RESETIDS then gives the child euid = ruid, and the
  execve copies that into the saved id, so the runtime runs with every id set to the bench user and no
  capabilities, exactly as if a login shell of that user had started it;
- crun on a hybrid cgroup host: the benchmark setns(2)es itself into crun's private mount namespace around
  the spawn and back to the host's right after, so crun pays no extra exec either.

The benchmark measures this floor on its own (`launch_overhead`) and prints it beside the results.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    """Who the runtime runs as: root (uid 0, the benchmark's own identity) or the unprivileged bench user."""

    uid: int
    gid: int
    env: dict[str, str]

    @property
    def is_root(self) -> bool:
        return self.uid == 0


@dataclass
class Runtime:
    name: str
    binary: str
    state_root: str
    # crun 1.8.1 refuses a hybrid cgroup host while /sys/fs/cgroup/unified is visible; it runs in a mount
    # namespace where that mount is gone (see private_cgroup_v1_namespace).
    mntns_fd: int | None = None
    output_dir: str = ""
    # A command line put in front of the binary (an interpreter with flags, strace...), for profiling.
    wrapper: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        return [*self.wrapper, self.binary, "--root", self.state_root, *args]

    def output_path(self, tag: str = "last") -> str:
        return os.path.join(self.output_dir, f"{self.name}-{tag}.out")


@dataclass(frozen=True)
class Result:
    elapsed: float  # seconds, fork to reaped
    status: int  # exit code, or -signal
    output_path: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def output(self) -> str:
        try:
            with open(self.output_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


_host_mntns_fd: int | None = None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise BenchError(f"setns: {os.strerror(err)}")


@contextmanager
def in_mount_namespace(fd: int | None):
    """Run the body in the mount namespace ``fd`` (None: stay), then come back to the host's."""
    global _host_mntns_fd
    if fd is None:
        yield
        return
    if _host_mntns_fd is None:
        _host_mntns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    _setns(fd)
    try:
        yield
    finally:
        _setns(_host_mntns_fd)


@contextmanager
def acting_as(identity: Identity):
    """Make ``identity`` the real uid/gid (euid stays 0) so that spawned children, with RESETIDS, run as it."""
    if identity.is_root:
        yield
        return
    groups = os.getgroups()
    os.setgroups([])
    os.setresgid(identity.gid, 0, 0)
    os.setresuid(identity.uid, 0, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)
        os.setgroups(groups)


def spawn(runtime: Runtime, identity: Identity, argv: list[str], output_path: str) -> int:
    """Start ``argv`` as ``identity`` (in crun's namespace for crun), stdout and stderr into
    ``output_path``; return the pid. Call it inside ``acting_as(identity)``."""
    out_fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with in_mount_namespace(runtime.mntns_fd):
            return os.posix_spawn(argv[0], argv, identity.env, resetids=not identity.is_root, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_fd, 1),
                (os.POSIX_SPAWN_DUP2, out_fd, 2),
            ])
    finally:
        os.close(out_fd)


def reap(pid: int) -> tuple[int, int]:
    """Wait for ``pid``; return (status as an exit code, max RSS in KiB of it and every descendant it reaped).
    The RSS is only meaningful for a child started by a small process: a vforked child inherits the
    parent's high-water mark at exec (see scenarios.measure_memory)."""
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss


def call(runtime: Runtime, identity: Identity, *args: str, tag: str = "last") -> Result:
    """Run one CLI call of ``runtime`` and time it, spawn to reaped."""
    output_path = runtime.output_path(tag)
    argv = runtime.argv(*args)
    with acting_as(identity):
        start = time.perf_counter()
        pid = spawn(runtime, identity, argv, output_path)
        status, _ = reap(pid)
        elapsed = time.perf_counter() - start
    return Result(elapsed, status, output_path)


def launch_overhead(identity: Identity, samples: int = 20) -> float:
    """Median seconds of the same spawn path running the host's /bin/true: the floor of every figure."""
    probe = Runtime("probe", "/bin/true", "")
    times = []
    for _ in range(samples):
        with acting_as(identity):
            start = time.perf_counter()
            reap(spawn(probe, identity, ["/bin/true"], "/dev/null"))
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def hybrid_cgroup_host() -> bool:
    """True when cgroup v1 holds the controllers and a cgroup2 hierarchy is mounted at .../unified."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == "/sys/fs/cgroup/unified" and fields[sep + 1] == "cgroup2":
                return True
    return False


def private_cgroup_v1_namespace() -> int:
    """An fd of a mount namespace, private from the host's, in which /sys/fs/cgroup/unified is unmounted.

    A short-lived `unshare` process builds it; the open fd keeps the namespace alive after that process is
    gone, and the benchmark enters it around each spawn of crun.
    """
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "umount /sys/fs/cgroup/unified && echo ready && exec sleep 600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        if line.strip() != "ready":
            raise BenchError(f"cannot prepare crun's mount namespace: {holder.stderr.read().strip()}"
                             if holder.stderr else "cannot prepare crun's mount namespace")
        return os.open(f"/proc/{holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.kill()
        holder.wait()
