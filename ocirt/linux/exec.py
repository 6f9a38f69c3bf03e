"""`exec`: a new process inside a running container's namespaces and cgroups.

The same two-step fork as create: the intermediate joins the namespaces (the user namespace first, the mount
namespace last) and forks, because a joined pid namespace only applies to children. Both runtime processes
are made non-dumpable before they join anything, so a process in the container can't open
/proc/<pid>/exe of the runtime (the host's interpreter) while they are visible there (CVE-2019-5736).
The new process then runs the same finishing steps as the init (``init.finish_process``).
"""

from __future__ import annotations

import os

from ocirt import syscalls as sc
from ocirt.errors import NotRunning, OcirtError
from ocirt.linux.init import Channel, Spawned, forward_notify_fd, kill_spawned, receive_console
from ocirt.linux.initproc import close_callers_fds, finish_process, notify_listener, run_child

PROC_NS = (("user", "user"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"), ("cgroup", "cgroup"),
           ("pid", "pid"), ("time", "time"), ("mount", "mnt"))


class ExecPlan:
    def __init__(self, *, process, seccomp, init_pid: int, init_start_time: int, cgroup,
                 console_socket: str | None, relay_console: bool, preserve_fds: int, setgroups_allowed: bool,
                 listener_state: dict | None = None, cgroup_subs: dict[str, str] | None = None):
        self.process = process
        self.cgroup_subs = cgroup_subs  # exec --cgroup: sub-cgroups to join instead of the container's
        self.listener_state = listener_state  # the container's state, for a seccomp notify agent
        self.seccomp = seccomp
        self.init_pid = init_pid
        self.init_start_time = init_start_time
        self.cgroup = cgroup
        self.console_socket = console_socket
        self.relay_console = relay_console and process.terminal and not console_socket
        self.preserve_fds = preserve_fds
        self.setgroups_allowed = setgroups_allowed


def _open_namespaces(pid: int) -> list[tuple[str, int]]:
    """fds of every namespace of the init that differs from ours, opened before anything can change."""
    fds = []
    try:
        for ns_type, name in PROC_NS:
            try:
                theirs = os.stat(f"/proc/{pid}/ns/{name}")
            except FileNotFoundError:
                if ns_type == "time":
                    continue
                raise
            ours = os.stat(f"/proc/self/ns/{name}")
            if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                fds.append((ns_type, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)))
    except OSError:
        for _, fd in fds:
            os.close(fd)
        raise NotRunning() from None
    return fds


def spawn_exec(plan: ExecPlan) -> Spawned:
    from ocirt.state import process_start_time

    ns_fds = _open_namespaces(plan.init_pid)
    # The fds now pin the namespaces; make sure they belong to the init we mean, not to a recycled pid.
    if process_start_time(plan.init_pid) != plan.init_start_time:
        for _, fd in ns_fds:
            os.close(fd)
        raise NotRunning()
    parent, child = Channel.pair()
    fd_pair = None
    listener = bool(notify_listener(plan.seccomp))
    if plan.relay_console or listener:
        import _socket

        fd_pair = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    console_sock = None
    if plan.console_socket:
        from ocirt import console

        # Connected here: the socket's path is on the host, out of reach once the mount namespace is joined.
        console_sock = console.connect(plan.console_socket)
    intermediate = os.fork()
    if intermediate == 0:
        parent.close()
        run_child(lambda: _intermediate(plan, child, ns_fds, fd_pair, console_sock), child)
    child.close()
    for _, fd in ns_fds:
        os.close(fd)
    if console_sock is not None:
        console_sock.close()
    pid = 0
    try:
        if plan.cgroup is not None:
            try:
                if plan.cgroup_subs:
                    plan.cgroup.join(intermediate, plan.cgroup_subs)
                else:
                    plan.cgroup.apply(intermediate)
            except OcirtError as err:
                # As runc: as root a process outside the container's cgroups would escape its limits, so
                # the exec fails; rootless, a hierarchy the user was not delegated is one it can't join,
                # unless the caller named the sub-cgroups to join.
                if not plan.cgroup.rootless or plan.cgroup_subs:
                    raise OcirtError(f"cannot exec in the container: {err}") from None
                from ocirt import log

                log.debug(f"exec: not joining the container's cgroups: {err}")
        parent.send("go")
        pid = int(parent.expect("pid"))
        os.waitpid(intermediate, 0)
        intermediate = 0
        parent.send("run")
        console_master = None
        if plan.relay_console and fd_pair is not None:
            console_master = receive_console(parent, fd_pair)
        if listener and fd_pair is not None:
            forward_notify_fd(parent, fd_pair, plan.seccomp, plan.listener_state or {"pid": pid}, pid)
        parent.expect("ready")
        return Spawned(pid, process_start_time(pid) or 0, console_master)
    except BaseException:
        kill_spawned(intermediate, pid)
        raise
    finally:
        parent.close()
        if fd_pair is not None:
            fd_pair[0].close()
            fd_pair[1].close()


def _intermediate(plan: ExecPlan, channel: Channel, ns_fds, fd_pair, console_sock) -> None:
    from ocirt.linux import namespaces

    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    close_callers_fds(plan.preserve_fds)
    if plan.process.cpu_affinity_initial:
        os.sched_setaffinity(0, plan.process.cpu_affinity_initial)
    if channel.recv()[0] != "go":
        os._exit(1)
    joined_user = False
    for ns_type, fd in ns_fds:
        namespaces.join(ns_type, fd)
        os.close(fd)
        if ns_type == "user":
            joined_user = True
    if joined_user:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    pid = os.fork()
    if pid == 0:
        run_child(lambda: _exec_process(plan, channel, fd_pair, console_sock), channel)
    channel.send("pid", str(pid))


def _exec_process(plan: ExecPlan, channel: Channel, fd_pair, console_sock) -> None:
    if channel.recv()[0] != "run":
        os._exit(1)
    os.chdir("/")
    if plan.process.cpu_affinity_final:
        os.sched_setaffinity(0, plan.process.cpu_affinity_final)
    console_slave = None
    if plan.process.terminal:
        from ocirt import console

        master, console_slave = console.open_pty(_open_container_ptmx())
        if plan.process.console_size:
            console.set_window_size(master, *plan.process.console_size)
        if console_sock is not None:
            console.send_fd(console_sock, master)
            console_sock.close()
        elif fd_pair is not None:
            channel.send("console")
            console.send_fd(fd_pair[1], master)
        os.close(master)
        os.setsid()
    elif console_sock is not None:
        console_sock.close()
    finish_process(plan.process, seccomp=plan.seccomp, channel=channel, fd_pair=fd_pair,
                   console_slave=console_slave, setgroups_allowed=plan.setgroups_allowed,
                   preserve_fds=plan.preserve_fds,
                   listener=bool(notify_listener(plan.seccomp)), keyring=None)


def _open_container_ptmx() -> int:
    import stat

    fd = sc.openat2(sc.AT_FDCWD, "/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY,
                    resolve=sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_SYMLINKS)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(5, 2):
        os.close(fd)
        raise OcirtError("/dev/pts/ptmx in the container is not the pty multiplexer")
    return fd

