"""The container's init, from fork to execve.

Three processes take part:

  runtime (the ocirt command) -- forks --> intermediate -- forks --> init (pid 1 of a new pid namespace)

The intermediate exists because a new pid namespace only applies to the children of the process that
unshares it. It enters the user namespace first (the runtime writes its id maps, from outside, and moves it
into its cgroups), then joins or creates the other namespaces, forks the init and exits, so the init is
reparented to the caller's subreaper (conmon, containerd's shim) as the engines expect.

The init then runs the steps below in the order the kernel needs them, and reports each failure to the
runtime before the `ready` handshake, so `create` can fail with the init's own message.
"""

from __future__ import annotations

import os

from ocirt import log
from ocirt import syscalls as sc
from ocirt.errors import CgroupError, ConfigError, HookError, InitError, OcirtError

# The forked processes' side; imported here, before any fork, as everything they run must be.
from ocirt.linux.initproc import notify_listener, run_child, run_intermediate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirt.linux.initplan import InitPlan


class Channel:
    """Line messages ("kind payload\\n") over a pair of pipes; each write is atomic (< PIPE_BUF)."""

    def __init__(self, read_fd: int, write_fd: int, *, runtime_side: bool = False):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buf = b""
        self.runtime_side = runtime_side

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """(the runtime's end, the child's end)."""
        p_r, c_w = os.pipe2(os.O_CLOEXEC)
        c_r, p_w = os.pipe2(os.O_CLOEXEC)
        return cls(p_r, p_w, runtime_side=True), cls(c_r, c_w)

    def send(self, kind: str, payload: str = "") -> None:
        line = f"{kind} {payload.replace(chr(10), ' ')}\n".encode()
        if len(line) > 4000:
            line = line[:3999] + b"\n"
        try:
            os.write(self.write_fd, line)
        except BrokenPipeError:
            if not self.runtime_side:
                raise
            # The child is gone, most likely after reporting why: raise its message.
            self.expect("")
            raise

    def recv(self) -> tuple[str, str]:
        while b"\n" not in self._buf:
            chunk = os.read(self.read_fd, 4096)
            if not chunk:
                return "eof", ""
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        kind, _, payload = line.decode(errors="replace").partition(" ")
        return kind, payload

    def expect(self, kind: str) -> str:
        got, payload = self.recv()
        while got in ("warning", "trace", "log"):
            # The init can't write to --log (its path is outside the root): the runtime logs for it.
            from ocirt import log

            log.warning(payload) if got == "warning" else log.relayed(got, payload)
            got, payload = self.recv()
        if got == kind:
            return payload
        if got == "error":
            raise init_error(payload)
        if got == "eof":
            raise InitError("the container's init exited before it was ready")
        raise InitError(f"unexpected message {got!r} from the container's init")

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        # A later send (a trace line) must fail, not write into whatever reuses the numbers.
        self.read_fd = self.write_fd = -1


def init_error(payload: str) -> OcirtError:
    """The error a child's report (initproc.report) describes: a ConfigError, HookError or CgroupError in
    the init is one in the runtime too (a caller may tell a bad bundle from a failed hook by its class);
    any other is an InitError whose ``kind`` names the init's class. A payload that is not a report is
    the message."""
    from ocirt.fastjson import JSONError, loads

    try:
        record = loads(payload)
    except JSONError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return InitError(payload or "the container's init failed without saying why")
    code = record.get("code")
    fields = {name: record[name] for name in ("op", "path", "hint") if isinstance(record.get(name), str)}
    if isinstance(record.get("errno"), int):
        fields["errno"] = record["errno"]
    kind = record.get("kind") if isinstance(record.get("kind"), str) else None
    cls = _REBUILT.get(kind or "", InitError)
    err = cls.rebuilt(record["message"], code if isinstance(code, int) and 0 < code < 256 else 1, fields)
    if isinstance(err, InitError):
        err.kind = kind
    return err


_REBUILT: dict[str, type[OcirtError]] = {cls.__name__: cls for cls in (ConfigError, HookError, CgroupError)}


class Spawned:
    def __init__(self, pid: int, start_time: int, console_master: int | None, recorder=None):
        self.pid = pid
        self.start_time = start_time
        self.console_master = console_master
        # A learning run's seccomp recorder (ocirt.linux.seccomp_learn.Recorder).
        self.recorder = recorder


def spawn(plan: InitPlan, run_runtime_hooks) -> Spawned:
    """Fork the container's init and drive it to the point where it waits for `start`.

    ``run_runtime_hooks(init_pid)`` runs in the runtime once the namespaces and mounts exist and before
    pivot_root (prestart and createRuntime hooks, netDevices).
    """
    from ocirt.linux import namespaces
    from ocirt.state import process_start_time

    parent, child = Channel.pair()
    fd_pair = None
    learn = getattr(plan.seccomp, "learning", False)
    if plan.relay_console or notify_listener(plan.seccomp) or learn:
        import _socket

        fd_pair = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    if learn:
        fd_pair = plan.seccomp.prepare_handoff(fd_pair)
    join_fds = namespaces.open_join_fds(plan.namespaces)
    from ocirt.linux import rootfs

    rootfs.open_mount_sources(plan.rootfs)
    # Opened here: a mapped root in a user namespace may not be able to search the state directory.
    plan.fifo_fd = os.open(plan.fifo_path, sc.O_PATH | os.O_CLOEXEC)
    log.trace("init", "mount sources and namespaces to join opened; forking")
    intermediate = os.fork()
    if intermediate == 0:
        parent.close()
        for fd in plan.close_in_child:
            os.close(fd)
        run_child(lambda: run_intermediate(plan, child, join_fds, fd_pair), child)
    rootfs.close_mount_sources(plan.rootfs)
    os.close(plan.fifo_fd)
    child.close()
    for _, fd in join_fds:
        os.close(fd)
    init_pid = 0
    recorder = None
    try:
        if "user" in plan.namespaces.new:
            parent.expect("userns")
            from ocirt.linux import idmap

            idmap.write_maps(intermediate, plan.uid_mappings, plan.gid_mappings)
            log.trace("namespaces", "user namespace of pid %d made, id maps written", intermediate)
        if plan.cgroup is not None:
            plan.cgroup.apply(intermediate)
            log.trace("cgroups", "pid %d moved into the container's cgroups", intermediate)
        parent.send("go")
        init_pid = int(parent.expect("pid"))
        log.trace("init", "forked: pid %d", init_pid)
        os.waitpid(intermediate, 0)
        intermediate = 0
        start_time = process_start_time(init_pid)
        if start_time is None:
            parent.expect("never")  # the init died at once: report its message
        if plan.on_init_pid is not None:
            plan.on_init_pid(init_pid, start_time or 0)
        parent.send("run", str(init_pid))
        console_master = None
        if plan.relay_console and fd_pair is not None:
            # Before the process starts, so its first look at the terminal sees the caller's size.
            console_master = receive_console(parent, fd_pair)
        parent.expect("hooks")
        run_runtime_hooks(init_pid)
        parent.send("ok")
        if notify_listener(plan.seccomp) and fd_pair is not None:
            forward_notify_fd(parent, fd_pair, plan.seccomp,
                              dict(plan.hook_state, pid=init_pid, status="creating"), init_pid)
        elif learn and fd_pair is not None:
            # The init's next syscall waits for the recorder's answer.
            recorder = plan.seccomp.start_recording(parent, fd_pair, init_pid, detached=not plan.die_with_runtime)
        parent.expect("ready")
        log.trace("init", "ready: user, capabilities and no_new_privs set; it waits on the exec fifo")
        return Spawned(init_pid, start_time or 0, console_master, recorder)
    except BaseException:
        kill_spawned(intermediate, init_pid)
        if recorder is not None:
            recorder.wait(2)  # it ends, writing nothing (the program never ran), once the init is reaped
        raise
    finally:
        parent.close()
        if fd_pair is not None:
            fd_pair[0].close()
            fd_pair[1].close()


def kill_spawned(intermediate: int, pid: int) -> None:
    """After a failed handshake: kill the intermediate (if still there) and the process it forked, and reap
    what is ours to reap."""
    for victim in (intermediate, pid):
        if victim:
            try:
                os.kill(victim, 9)
            except ProcessLookupError:
                pass
    try:
        if intermediate:
            os.waitpid(intermediate, 0)
        elif pid:
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def receive_console(parent: Channel, fd_pair) -> int:
    """The pty master from the container side, sized like the caller's terminal before the process starts."""
    from ocirt import console

    parent.expect("console")
    master = console.recv_fd(fd_pair[0])
    console.copy_window_size(0, master)
    console.clear_onlcr(master)
    return master


def forward_notify_fd(parent: Channel, fd_pair, compiled, state: dict, pid: int) -> None:
    """Pass the seccomp notify fd the container side installed on to the agent at listenerPath."""
    from ocirt import console
    from ocirt.linux import seccomp as seccomp_mod

    parent.expect("seccomp")
    notify_fd = console.recv_fd(fd_pair[0])
    try:
        seccomp_mod.send_listener_fd(compiled.listener_path, notify_fd, state, compiled.listener_metadata,
                                     pid=pid)
    finally:
        os.close(notify_fd)
