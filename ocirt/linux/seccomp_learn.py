"""Learning a seccomp profile from a run, as any user: a seccomp user-notification listener records every
syscall of the container's processes and lets each one go on.

The init loads, in place of the config's profile, a filter that returns SECCOMP_RET_USER_NOTIF for every
syscall of every architecture, with one exception: ``sendmsg`` on the socket that hands the listener fd
to the runtime (until the runtime holds the fd, a notified call would wait for an answer nobody can give).
The filter goes in before the user switch, with CAP_SYS_ADMIN in the container's user namespace (or
no_new_privs), so unprivileged runs learn too; the kernel passes it to every child, across forks and
execs. The runtime forks a recorder that owns the listener: it receives each notification, keeps the
syscall's number and audit architecture, and answers SECCOMP_USER_NOTIF_FLAG_CONTINUE, so the call runs
as if no filter were there. When no task uses the filter any more (poll reports POLLHUP) it turns the
numbers into names with libseccomp and merges them into the profile (``ocirt.seccomp_profile``).

What it cannot see: the runtime's own syscalls before the filter (the setup, which a profile need not
allow); calls answered in user space by the vDSO (clock_gettime, gettimeofday, time, getcpu); calls an
outer filter (the caller's own seccomp profile) fails before this one is asked; work done through io_uring
submissions; processes started with ``ocirt exec``; and the program's own ``sendmsg`` on the handoff
socket's fd number (moved high, above ``HANDOFF_FD_MIN``, to make that unlikely).

The recorder does no work per notification beyond two ioctls, a poll and a set insertion, so a container
waits for it only as long as a context switch takes. If the recorder dies, the kernel fails the
container's later syscalls with ENOSYS instead of blocking them, and no profile is written.
"""

from __future__ import annotations

import os

from ocirt import log
from ocirt.errors import OcirtError, why

SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)
_NOTIF_SIZE = 80  # id, pid, flags, then struct seccomp_data: nr, arch, instruction_pointer, args[6]
_RESP_SIZE = 24  # id, val, error, flags
_X32_SYSCALL_BIT = 0x40000000

# The handoff socket is moved to the lowest free fd at or above this number, out of the range programs use.
HANDOFF_FD_MIN = 900

# machine -> (AUDIT_ARCH of native syscalls, sendmsg's number, execve's, execveat's)
_NATIVE = {
    "x86_64": (0xC000003E, 46, 59, 322),
    "aarch64": (0xC00000B7, 211, 221, 281),
}
# AUDIT_ARCH value -> the spec's name (libseccomp's SCMP_ARCH_* tokens are these values).
AUDIT_ARCHES = {
    0xC000003E: "SCMP_ARCH_X86_64", 0x40000003: "SCMP_ARCH_X86", 0x4000003E: "SCMP_ARCH_X32",
    0xC00000B7: "SCMP_ARCH_AARCH64", 0x40000028: "SCMP_ARCH_ARM",
}
_X86_64 = 0xC000003E
_X32 = 0x4000003E

# What the init calls itself before it loads the learning filter: a name no program has, so the
# recorder can tell whether the init's execve replaced it (a failed execve leaves the name).
INIT_COMM = b"ocirt:learning"
RECORDER_COMM = b"ocirt-recorder"
_PR_SET_NAME = 15


class LearnOptions:
    """``--seccomp-learn PROFILE`` and ``--seccomp-learn-errno``: where the profile goes, and the errno
    of its default action (None: EPERM for a new profile, an existing one's own)."""

    def __init__(self, profile: str, errno_ret: int | None = None):
        # Resolved now: a link the user made is followed to its target, and replacing the file later
        # writes the target, not a file in place of the link.
        self.profile = os.path.realpath(profile)
        self.errno_ret = errno_ret
        # Filled in by a foreground run: the recorder's one-line summary.
        self.summary: str | None = None


class LearningFilter:
    """The filter the init loads in a learning run; it answers the same questions as a CompiledFilter."""

    uses_notify = True
    listener_path = None
    listener_metadata = None
    skipped: tuple[str, ...] = ()
    from_cache = False
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER
    learning = True

    def __init__(self, options: LearnOptions):
        self.options = options
        self.bpf = b""

    def denies(self, name: str, err_no: int | None = None) -> bool:
        return False

    def prepare_handoff(self, fd_pair):
        """In the runtime, before the fork: move the handoff end of ``fd_pair`` high (HANDOFF_FD_MIN) and
        build the program for its fd number. Returns the new pair."""
        import _socket
        import fcntl

        try:
            high = fcntl.fcntl(fd_pair[1].fileno(), fcntl.F_DUPFD_CLOEXEC, HANDOFF_FD_MIN)
        except OSError:
            pass  # a low fd limit: the socket keeps its number
        else:
            moved = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, high)
            fd_pair[1].close()
            fd_pair = (fd_pair[0], moved)
        self.bpf = learning_program(fd_pair[1].fileno())
        return fd_pair

    def install(self, fd_pair, channel) -> None:
        """In the init: load the filter and send the listener to the runtime with the one call the filter
        lets through. Everything that call needs is built before the filter goes in."""
        import _socket
        import ctypes
        import gc
        import struct

        from ocirt import syscalls as sc
        from ocirt.linux.seccomp import install_filter

        name = ctypes.create_string_buffer(INIT_COMM)
        sc.prctl(_PR_SET_NAME, ctypes.addressof(name))
        channel.send("seccomp")
        sock = fd_pair[1]
        payload = [b"seccomp"]
        level, kind = _socket.SOL_SOCKET, _socket.SCM_RIGHTS
        gc.disable()  # a collection between the filter and the handoff could call into the kernel
        listener_fd = install_filter(self)  # type: ignore[arg-type]  # reads bpf, flags, uses_notify
        assert listener_fd is not None
        sock.sendmsg(payload, [(level, kind, struct.pack("i", listener_fd))])
        gc.enable()
        os.close(listener_fd)

    def start_recording(self, parent, fd_pair, init_pid: int, *, detached: bool) -> Recorder:
        """In the runtime: take the listener the init sent and hand it to a new recorder at once."""
        from ocirt import console

        parent.expect("seccomp")
        listener_fd = console.recv_fd(fd_pair[0])
        try:
            recorder = start_recorder(listener_fd, init_pid, self.options, detached=detached)
        finally:
            os.close(listener_fd)
        log.trace("seccomp", "learning: recorder pid %d answers the init's syscalls", recorder.pid)
        return recorder


def learning(compiled) -> bool:
    return getattr(compiled, "learning", False)


def learning_program(handoff_fd: int) -> bytes:
    """Classic BPF over struct seccomp_data: ALLOW sendmsg(handoff_fd, ...) of the native architecture,
    USER_NOTIF for everything else."""
    import struct
    import sys

    arch, sendmsg, _, _ = _native()
    low, high = (16, 20) if sys.byteorder == "little" else (20, 16)  # args[0]'s two 32-bit halves
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    program = [
        (ld, 0, 0, 4),               # 0: A = arch
        (jeq, 0, 7, arch),           # 1: not native -> 9
        (ld, 0, 0, 0),               # 2: A = nr
        (jeq, 0, 5, sendmsg),        # 3: not sendmsg -> 9
        (ld, 0, 0, low),             # 4: A = low half of args[0]
        (jeq, 0, 3, handoff_fd),     # 5: another fd -> 9
        (ld, 0, 0, high),            # 6: A = high half of args[0]
        (jeq, 0, 1, 0),              # 7: not 0 -> 9
        (ret, 0, 0, SECCOMP_RET_ALLOW),       # 8
        (ret, 0, 0, SECCOMP_RET_USER_NOTIF),  # 9
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _native() -> tuple[int, int, int, int]:
    machine = os.uname().machine
    if machine not in _NATIVE:
        raise OcirtError(f"--seccomp-learn is not supported on {machine} yet")
    return _NATIVE[machine]


def check_host() -> None:
    """Refuse, before anything is made, a machine the learning filter is not written for."""
    _native()


# ---------------------------------------------------------------------------------------------- recording


class Recording:
    """What the listener saw: (audit arch, nr) pairs, split at the init's execve into the runtime's part
    and the program's. ``exec_seen`` tells whether the program ever ran."""

    __slots__ = ("runtime", "program", "exec_seen", "notifications")

    def __init__(self) -> None:
        self.runtime: set[int] = set()
        self.program: set[int] = set()
        self.exec_seen: bool | None = False  # None: the init's execve was notified, its outcome not yet known
        self.notifications = 0


def record(listener_fd: int, init_pid: int) -> Recording:
    """Answer every notification of the listener, CONTINUE, until no task uses the filter any more."""
    import fcntl
    import select
    import struct

    _, _, execve, execveat = _native()
    execs = (execve, execveat)
    recording = Recording()
    runtime, program = recording.runtime, recording.program
    seen = runtime
    notif = bytearray(_NOTIF_SIZE)
    zero = bytes(_NOTIF_SIZE)
    resp = bytearray(_RESP_SIZE)
    unpack = struct.Struct("=QIIiI").unpack_from
    pack_resp = struct.Struct("=QqiI").pack_into
    ioctl = fcntl.ioctl
    poller = select.poll()
    poller.register(listener_fd, select.POLLIN)
    poll = poller.poll
    count = 0
    pending_exec = False
    while True:
        try:
            events = poll()
        except InterruptedError:
            continue
        if not events:
            continue
        if not events[0][1] & select.POLLIN:
            break  # POLLHUP alone: no task left, nothing pending
        notif[:] = zero  # the kernel refuses a buffer that is not zeroed
        try:
            ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_RECV, notif)
        except OSError:
            continue  # ENOENT: the caller died between poll and recv; EINTR
        ident, pid, _, nr, arch = unpack(notif)
        count += 1
        if pending_exec and pid == init_pid:
            pending_exec = False
            recording.exec_seen = _comm(pid) != INIT_COMM
            if not recording.exec_seen:
                seen = runtime
        seen.add(arch << 32 | (nr & 0xFFFFFFFF))
        if pid == init_pid and nr in execs and seen is runtime and recording.exec_seen is False:
            # From now on the init is (very likely) the program: its calls, and its children's, are its.
            pending_exec = True
            recording.exec_seen = None
            seen = program
        pack_resp(resp, 0, ident, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        try:
            ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, resp)
        except OSError:
            pass  # ENOENT: the caller was killed meanwhile
    recording.notifications = count
    if recording.exec_seen is None:
        recording.exec_seen = True  # the init made no call after execve, but its program did run
    return recording


def _comm(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n")
    except OSError:
        return b""


def names_of(numbers: set[int]) -> tuple[set[str], list[str], list[str]]:
    """(syscall names, the spec's architectures, the calls libseccomp has no name for) of recorded
    (arch << 32 | nr) values."""
    from ocirt.linux.seccomp import binding

    libseccomp = binding()
    names: set[str] = set()
    arches: list[str] = []
    unknown: list[str] = []
    for value in sorted(numbers):
        arch, nr = value >> 32, value & 0xFFFFFFFF
        if arch == _X86_64 and nr & _X32_SYSCALL_BIT:
            arch = _X32
        arch_name = AUDIT_ARCHES.get(arch)
        if arch_name is None:
            unknown.append(f"{nr} (audit arch {arch:#x})")
            continue
        if arch_name not in arches:
            arches.append(arch_name)
        try:
            name = libseccomp.resolve_syscall(_signed(arch), nr)
        except (ValueError, OverflowError):
            unknown.append(f"{nr} ({arch_name})")
            continue
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    native = AUDIT_ARCHES.get(_native()[0])
    arches.sort(key=lambda arch: arch != native)  # the native one first, as profiles list them
    return names, arches, unknown


def _signed(arch: int) -> int:
    # Debian's binding takes the token as a C int (SCMP_ARCH_X86_64 is negative there); pyseccomp takes
    # the same bits either way.
    return arch - (1 << 32) if arch & 0x80000000 else arch


class Result:
    """What the recorder reports: the merge's summary, or why nothing was written; ``runtime`` names
    what the init (and the startContainer hooks) called after loading the filter, up to its execve."""

    def __init__(self, ok: bool, message: str, runtime: tuple[str, ...] = (), notifications: int = 0):
        self.ok = ok
        self.message = message
        self.runtime = runtime
        self.notifications = notifications

    def encode(self) -> bytes:
        head = f"{'ok' if self.ok else 'error'} {self.notifications} {' '.join(self.runtime)}"
        return f"{head}\n{self.message}\n".encode()

    @classmethod
    def decode(cls, data: bytes) -> Result:
        head, _, message = data.decode(errors="replace").partition("\n")
        kind, _, rest = head.partition(" ")
        count, _, runtime = rest.partition(" ")
        if kind not in ("ok", "error") or not count.isdigit() or not message.strip():
            return cls(False, "the seccomp recorder exited without a result (it was killed?): the profile "
                              "was not written, and the container's syscalls failed with ENOSYS after that")
        return cls(kind == "ok", message.strip(), tuple(runtime.split()), int(count))


def finish(recording: Recording, options: LearnOptions) -> Result:
    """Merge a finished recording into the profile."""
    from ocirt import seccomp_profile

    if not recording.exec_seen:
        return Result(False, f"{options.profile} not written: the container's program never ran")
    names, arches, unknown = names_of(recording.runtime | recording.program)
    merge = seccomp_profile.write_merged(options.profile, names, arches, options.errno_ret)
    summary = merge.summary(options.profile)
    if unknown:
        summary += f"; left out, libseccomp has no name for: {' '.join(unknown)}"
    runtime_names, _, _ = names_of(recording.runtime)
    return Result(True, summary, tuple(sorted(runtime_names)), recording.notifications)


# ---------------------------------------------------------------------------------------------- the recorder


class Recorder:
    """The recorder process, seen from the runtime. ``result_fd`` (the process that started it only)
    gives its one-line result at EOF."""

    def __init__(self, pid: int, start_time: int, result_fd: int | None, profile: str):
        self.pid = pid
        self.start_time = start_time
        self.result_fd = result_fd
        self.profile = profile

    def to_state(self) -> dict:
        return {"recorder": self.pid, "start_time": self.start_time, "profile": self.profile}

    def wait(self, timeout: float) -> bool:
        return wait_for_recorder(self.to_state(), timeout)

    def result(self, timeout: float, *, reap=None) -> Result | None:
        """Wait (at most ``timeout`` s) for the recorder's result; ``reap`` is called meanwhile to reap
        the container's processes, whose zombies keep the filter in use. None on timeout."""
        import select
        import time

        assert self.result_fd is not None
        deadline = time.monotonic() + timeout
        chunks = []
        poller = select.poll()
        poller.register(self.result_fd, select.POLLIN)
        while True:
            if reap is not None:
                reap()
            if poller.poll(50):
                chunk = os.read(self.result_fd, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
                continue
            if time.monotonic() > deadline:
                return None
        os.close(self.result_fd)
        self.result_fd = None
        return Result.decode(b"".join(chunks))


def start_recorder(listener_fd: int, init_pid: int, options: LearnOptions, *, detached: bool) -> Recorder:
    """Fork the recorder, which takes over ``listener_fd``; the caller closes its own copy."""
    from ocirt.state import process_start_time

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            _become_recorder(listener_fd, write_end)
            code = _run_recorder(listener_fd, init_pid, options, write_end, detached)
        finally:
            os._exit(code)
    os.close(write_end)
    start_time = process_start_time(pid) or 0
    if detached:
        os.close(read_end)
        return Recorder(pid, start_time, None, options.profile)
    return Recorder(pid, start_time, read_end, options.profile)


def _become_recorder(listener_fd: int, result_fd: int) -> None:
    """Keep nothing of the runtime's: not the container's lock, not the caller's pipes or terminal."""
    import ctypes

    from ocirt import syscalls as sc

    name = ctypes.create_string_buffer(RECORDER_COMM)
    sc.prctl(_PR_SET_NAME, ctypes.addressof(name))  # for ps: not one more "ocirt" command
    os.setsid()
    os.chdir("/")
    null = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    keep = {0, 1, 2, listener_fd, result_fd}
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(3, 1024))
    for fd in open_fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    log.config.relay = None


def _run_recorder(listener_fd: int, init_pid: int, options: LearnOptions, result_fd: int,
                  detached: bool) -> int:
    try:
        recording = record(listener_fd, init_pid)
        os.close(listener_fd)
        result = finish(recording, options)
    except OcirtError as err:
        result = Result(False, str(err))
    except OSError as err:
        result = Result(False, f"seccomp learning: {why(err)}")
    except BaseException as err:  # noqa: BLE001 - the recorder must end with a result, never unwind
        result = Result(False, f"internal error in the seccomp recorder: {type(err).__name__}: {err}")
    if detached:
        # Nobody waits for the line: the --log file is where it can be read.
        if result.ok:
            log.info(f"seccomp-learn: {result.message}")
        else:
            log.error(f"seccomp-learn: {result.message}")
    try:
        os.write(result_fd, result.encode())
    except OSError:
        pass
    return 0 if result.ok else 1


def wait_for_recorder(state: dict, timeout: float) -> bool:
    """From any later command (delete): wait until the recorder a detached learning container left has
    written its profile. False if it is still running after ``timeout`` s."""
    import select

    from ocirt.state import process_start_time

    pid, start_time = int(state.get("recorder") or 0), state.get("start_time")
    if pid <= 0 or process_start_time(pid) != start_time:
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        if process_start_time(pid) != start_time:
            return True
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(pidfd)
