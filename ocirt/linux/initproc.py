"""The init's side of create and exec, in the forked processes: the intermediate (user namespace first,
then the others, then the fork of the init), the init's steps from the namespaces to execve in the order the
kernel needs them, and the process's last steps that exec shares (finish_process).

Everything here runs after fork, so it imports nothing the runtime did not import before: ocirt.linux.init
imports this module, and the parent preloads what the init needs after pivot_root (ocirt.linux.initplan.preload).
"""

from __future__ import annotations

import errno
import fcntl
import os

from ocirt import log
from ocirt import syscalls as sc
from ocirt.errors import OcirtError, errno_of, filename_of, why
from ocirt.fastjson import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocirt.linux.init import Channel
    from ocirt.linux.initplan import InitPlan

def notify_listener(compiled) -> str | None:
    """Where a seccomp notify fd goes; only a filter with SCMP_ACT_NOTIFY rules makes one to send."""
    return compiled.listener_path if compiled is not None and compiled.uses_notify else None


def run_child(body, channel: Channel) -> None:
    """Run a forked child's body; any failure goes to the runtime as one structured message (report), then
    the child exits."""
    log.relay_to(channel.send)
    code = 1
    try:
        body()
        code = 0
    except OcirtError as err:
        report(channel, err)
    except OSError as err:
        report(channel, OcirtError(f"{err.strerror or err}{': ' + str(err.filename) if err.filename else ''}".lower()
                                   if err.strerror else str(err), path=filename_of(err), errno=err.errno))
    except BaseException as err:  # noqa: BLE001 - a forked child must never unwind into the runtime's code
        report(channel, OcirtError(f"internal error in the container's init: {type(err).__name__}: {err}"))
    os._exit(code)


def report(channel: Channel, err: OcirtError) -> None:
    """The error as one line: a JSON object with the exit code, the message, the error's kind and its
    fields (Channel.expect raises it again in the runtime). fastjson was loaded before the fork."""
    record = dict(err.fields(), code=err.exit_code, message=str(err), kind=type(err).__name__)
    line = dumps(record)
    while len(line) > 3900:  # the channel's lines stay below PIPE_BUF: shorten the longest text
        longest = max(("message", "path", "hint"), key=lambda key: len(str(record.get(key) or "")))
        record[longest] = str(record[longest])[:len(str(record[longest])) // 2]
        line = dumps(record)
    try:
        channel.send("error", line)
    except OSError:
        pass


# -- the intermediate process ---------------------------------------------------------------------------------
def run_intermediate(plan: InitPlan, channel: Channel, join_fds, fd_pair) -> None:
    from ocirt.linux import namespaces

    close_callers_fds(plan.preserve_fds)
    ns = plan.namespaces
    remaining = []
    for ns_type, fd in join_fds:
        if ns_type == "user":
            namespaces.join("user", fd)
            os.close(fd)
        else:
            remaining.append((ns_type, fd))
    if "user" in ns.new:
        namespaces.unshare(sc.CLONE_NEWUSER)
        channel.send("userns")
    if channel.recv()[0] != "go":
        os._exit(1)
    if ns.has("user"):
        # Become root of the user namespace so the mounts and mknods below are allowed.
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    for ns_type, fd in remaining:
        namespaces.join(ns_type, fd)
        os.close(fd)
    namespaces.unshare(ns.unshare_flags)
    log.trace("namespaces", "unshared %s", lambda: " ".join(ns.new) or "none")
    if "time" in ns.new and plan.time_offsets:
        # The uid switch above made us non-dumpable, which hands /proc/self to the host's root, out of
        # reach of a mapped root: be dumpable just for this write.
        sc.prctl(sc.PR_SET_DUMPABLE, 1)
        try:
            _write_time_offsets(plan.time_offsets)
        finally:
            sc.prctl(sc.PR_SET_DUMPABLE, 0)
    pid = os.fork()
    if pid == 0:
        run_child(lambda: _init(plan, channel, fd_pair), channel)
    channel.send("pid", str(pid))


def _write_time_offsets(offsets: dict) -> None:
    # Must happen before the first process enters the new time namespace, i.e. before the fork.
    lines = "".join(
        f"{clock} {int(v.get('secs', 0))} {int(v.get('nanosecs', 0))}\n" for clock, v in offsets.items()
    )
    fd = os.open("/proc/self/timens_offsets", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, lines.encode())
    except OSError as err:
        raise OcirtError(f"cannot set time namespace offsets: {why(err)}", op="write",
                         path="/proc/self/timens_offsets") from None
    finally:
        os.close(fd)


# -- the init ------------------------------------------------------------------------------------------------
def _init(plan: InitPlan, channel: Channel, fd_pair) -> None:
    from ocirt.linux import rootfs

    kind, payload = channel.recv()
    if kind != "run":
        os._exit(1)
    init_host_pid = int(payload)
    if plan.fifo_group is not None:
        # Root of its user namespace, the init may hand the runtime's fifo to the process's (mapped) group.
        os.chown(f"/proc/self/fd/{plan.fifo_fd}", -1, plan.fifo_group)
    if not plan.namespaces.has("user"):
        # Without a user namespace the container's root is the host's: until execve, nothing in the
        # container may open this process's /proc entries (its exe is the host's interpreter).
        # With one, /proc/self would then belong to the host's root and the mapped root could not use it.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
    os.setsid()
    ns = plan.namespaces
    if "network" in ns.new:
        from ocirt.linux.network import bring_up_loopback

        bring_up_loopback()
        log.trace("network", "loopback up")
    if ns.has("uts"):
        for op, name, set_name in (("sethostname", plan.hostname, sc.sethostname),
                                   ("setdomainname", plan.domainname, sc.setdomainname)):
            if name:
                try:
                    set_name(name)
                except OSError as err:
                    raise OcirtError.from_os(err, op, what=f"{op} {name!r}") from None
    elif plan.hostname or plan.domainname:
        raise OcirtError("hostname and domainname need a private uts namespace", op="sethostname",
                         hint='add {"type": "uts"} to linux.namespaces')

    # Opened now, while the host's /proc and the state dir are reachable; used after pivot_root.
    proc_fd = os.open("/proc", sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fifo_fd = plan.fifo_fd

    rootfs.prepare_rootfs(plan.rootfs)
    log.trace("mounts", "rootfs prepared: mounts, devices, /dev")
    console_slave = None
    if plan.process is not None and plan.process.terminal:
        console_slave = _setup_console(plan, fd_pair, channel)

    channel.send("hooks")
    if channel.recv()[0] != "ok":
        os._exit(1)
    if plan.create_container_hooks:
        from ocirt.hooks import run_hooks

        # The process's env, as runc gives it (crun gives the runtime's): HOME is not set yet.
        run_hooks(plan.create_container_hooks, "createContainer",
                  dict(plan.hook_state, pid=init_host_pid, status="created"),  # as prestart's
                  env=list(plan.process.env) if plan.process is not None else [])

    rootfs.enter_rootfs(plan.rootfs)
    if plan.process is not None:
        # Before the root is made read-only, as runc and crun do.
        _make_missing_cwd(plan.process.cwd)
    rootfs.finish_rootfs(plan.rootfs)
    log.trace("mounts", "root entered; masked and read-only paths applied")

    if plan.sysctl:
        from ocirt.linux.procfs import write_proc_file

        for key, value in plan.sysctl.items():
            write_proc_file("sys/" + key.replace(".", "/"), str(value))
    if plan.process is not None and plan.process.oom_score_adj is not None:
        from ocirt.linux.procfs import write_proc_file

        write_proc_file("self/oom_score_adj", str(plan.process.oom_score_adj))

    def wait_for_start() -> None:
        # Blocks until `start` opens the fifo for reading.
        fd = os.open(f"self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        os.close(fifo_fd)
        os.close(proc_fd)
        if plan.start_container_hooks:
            from ocirt.errors import HookError
            from ocirt.hooks import run_hooks

            try:
                # The process's env, HOME included, as runc and crun give it.
                run_hooks(plan.start_container_hooks, "startContainer",
                          dict(plan.hook_state, pid=init_host_pid, status="running"),
                          env=plan.process.env if plan.process is not None else [])
            except HookError as err:
                os.write(fd, b"E" + str(err).encode()[:4000])
                os._exit(1)
        # The fd stays open, close-on-exec: `start` reads until EOF, which comes exactly at execve, so
        # `start` returns (and runs poststart) only once the user's process runs.
        os.write(fd, b"0")

    if plan.process is None:
        channel.send("ready")
        channel.close()
        _wait_without_a_process(proc_fd, fifo_fd, plan.container_id)
    finish_process(plan.process, seccomp=plan.seccomp, channel=channel, fd_pair=fd_pair,
                   console_slave=console_slave, setgroups_allowed=plan.setgroups_allowed,
                   preserve_fds=plan.preserve_fds,
                   listener=bool(notify_listener(plan.seccomp)) or getattr(plan.seccomp, "learning", False),
                   keyring=None if plan.no_new_keyring else f"_ses.{plan.container_id}",
                   after_ready=wait_for_start, die_with_runtime=plan.die_with_runtime)


def _wait_without_a_process(proc_fd: int, fifo_fd: int, container_id: str) -> None:
    """The init of a config without process waits on the exec fifo like any other; when `start` opens it,
    it sends start its error and exits (runtime.md: start "MUST generate an error if process was not set")."""
    fd = os.open(f"self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    os.write(fd, f"Ecannot start container {container_id!r}: its config has no process to run".encode())
    os._exit(1)


# What the init and an exec'd process do between loading the seccomp filter (early, when noNewPrivileges is
# false) and execve, step by step, with the syscalls each step makes: the same as runc's there, no more.
# (Measured with strace -f on a default-allow profile; tests/security/test_seccomp_runtime_syscalls.py
# runs with a profile that allows only runc's list and the program's.)
AFTER_FILTER = {
    "switch_user": ("prctl", "capget", "capset", "setgroups", "setgid", "setuid", "umask"),
    "cwd": ("openat2", "openat", "fchdir", "chdir", "getcwd", "close"),
    "no_new_privs": ("prctl",),
    "ready": ("write", "close"),
    "wait_for_start": ("openat", "write", "close"),
    "execve": ("execve",),
}


class AfterFilter:
    """Names, in a failing step's message, the syscall the seccomp profile denies (when it does)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.step = ""

    def __call__(self, step: str) -> AfterFilter:
        self.step = step
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind, err, traceback) -> None:
        if err is None or not isinstance(err, (OcirtError, OSError)):
            return
        denied = self.denied(self.step, err)
        if not denied:
            return
        if isinstance(err, OcirtError):
            raise OcirtError.rebuilt(str(err) + denied, err.exit_code, err.fields()) from None
        raise OcirtError(f"{self.step}: {why(err)}{denied}", op=self.step, path=filename_of(err),
                         errno=err.errno) from None

    def denied(self, step: str, err: BaseException) -> str:
        """", the seccomp profile denies X ..." when the profile denies a syscall of ``step`` with the
        error ``err`` carries; "" otherwise (or when no filter is loaded yet)."""
        if self.compiled is None:
            return ""
        err_no = errno_of(err)
        names = [name for name in AFTER_FILTER[step] if self.compiled.denies(name, err_no)]
        if not names:
            return ""
        return (f": the container's seccomp profile denies {' and '.join(names)}, which the runtime needs "
                "between loading the filter and execve, as runc does")


def _make_missing_cwd(cwd: str) -> None:
    """Create ``process.cwd`` (mode 0755, the runtime's owner) when it does not exist, as runc and crun do,
    inside the container's root with symlinks resolved there. A cwd that exists is left to enter_cwd, which
    may find it closed to root and open to the process user."""
    from ocirt.linux import paths

    root_fd = os.open("/", sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.close(paths.open_in_root(root_fd, cwd, sc.O_PATH))
            return
        except OSError as err:
            if err.errno != errno.ENOENT:
                return
        try:
            os.close(paths.mkdir_all(root_fd, cwd, 0o755))
        except OcirtError as err:
            raise OcirtError(f"cannot create cwd {cwd}: {err}", op="mkdir", path=cwd) from None
    finally:
        os.close(root_fd)


def finish_process(proc, *, seccomp, channel: Channel, fd_pair, console_slave: int | None,
                   setgroups_allowed: bool, preserve_fds: int, listener: bool, keyring: str | None,
                   after_ready=None, die_with_runtime: bool = False) -> None:
    """The steps the init and an exec'd process share, from limits to execve. Never returns.

    Once the seccomp filter is loaded the process may only make the syscalls runc makes there, because
    profiles are written (and tested) against runc: so the cwd, the executable and the fd sweep, which need
    openat2, close_range and a lookup, all come before it. What follows the filter is listed, step by
    step, in ``seccomp.AFTER_FILTER``; a step that fails there names the syscall the profile denies.
    """
    from ocirt.linux import capabilities, process

    missing = capabilities.withhold_unavailable(proc.capabilities)
    if missing:
        names = capabilities.names_of(missing)
        them = "it" if len(names) == 1 else "them"
        channel.send("warning", f"cannot grant {', '.join(names)}: the runtime does not hold {them}, so the "
                                f"process starts without {them}")
    process.apply_rlimits(proc)
    process.apply_scheduling(proc)
    if keyring:
        _join_session_keyring(keyring)
    if proc.apparmor_profile or proc.selinux_label:
        from ocirt.linux import lsm

        # Before the uid switch: a non-dumpable process can't open its own attr files once it isn't root.
        if proc.apparmor_profile:
            lsm.apply_apparmor(proc.apparmor_profile)
        if proc.selinux_label:
            lsm.apply_selinux_label(proc.selinux_label)

    process.set_home(proc)
    # As the runtime's root, as runc does first: a cwd only the process user may enter is entered again
    # after the switch.
    cwd_entered = process.enter_cwd(proc, as_process_user=False)
    executable = process.find_executable(proc)
    if console_slave is not None:
        from ocirt.console import TIOCSCTTY, give_to

        give_to(console_slave, proc.uid)
        fcntl.ioctl(console_slave, TIOCSCTTY, 0)
        for target in (0, 1, 2):
            os.dup2(console_slave, target)
        os.close(console_slave)
    _seal_fds(preserve_fds)
    log.trace("process", "rlimits, scheduling, HOME, cwd and fds set; executable %s", executable)

    # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which the user switch may drop: load it
    # first then. With no_new_privs it waits until just before execve. A notify listener needs it now too,
    # to hand the fd over while the runtime still listens.
    early_seccomp = seccomp is not None and (not proc.no_new_privileges or listener)
    if early_seccomp:
        log.trace("seccomp", "loading the filter now, before the user switch")
        _install_seccomp(seccomp, fd_pair, channel)
    step = AfterFilter(seccomp if early_seccomp else None)

    with step("switch_user"):
        process.switch_user(proc, setgroups_allowed=setgroups_allowed)
        if die_with_runtime:
            _die_with_runtime()
    if not cwd_entered:
        with step("cwd"):
            process.enter_cwd(proc, as_process_user=True)
    with step("no_new_privs"):
        if proc.no_new_privileges:
            process.set_no_new_privileges()
    with step("ready"):
        channel.send("ready")
        channel.close()
    if after_ready is not None:
        after_ready()
    if seccomp is not None and not early_seccomp:
        from ocirt.linux.seccomp import install_filter

        install_filter(seccomp)
    try:
        os.execve(executable, proc.args, _env_dict(proc.env))
    except OSError as err:
        denied = AfterFilter(seccomp).denied("execve", err)
        os.write(2, f'ocirt: exec: "{proc.args[0]}": {why(err)}{denied}\n'.encode())
        os._exit(127 if err.errno == 2 else 126)


def _die_with_runtime() -> None:
    """SIGKILL when the runtime (our parent since the intermediate exited) dies, even by SIGKILL.

    After the user switch, which clears the parent-death signal when the ids change (runc restores its
    own at the same point). Before "ready": if the runtime died before this call, sending "ready" fails
    and the init exits, so there is no window in which it would outlive the runtime unnoticed. A
    seccomp profile that denies prctl leaves the container without this guard, not without its process."""
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    except OSError:
        pass


def _env_dict(env: list[str]) -> dict[str, str]:
    out = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep:
            out[key] = value
    return out


def _setup_console(plan: InitPlan, fd_pair, channel: Channel) -> int:
    from ocirt import console
    from ocirt.linux import rootfs

    master, slave = console.open_pty(rootfs.open_ptmx(plan.rootfs))
    if plan.process.console_size:
        console.set_window_size(master, *plan.process.console_size)
    rootfs.mount_console(plan.rootfs, f"/proc/self/fd/{slave}")
    if plan.console_socket:
        sock = console.connect(plan.console_socket)
        try:
            console.send_fd(sock, master)
        finally:
            sock.close()
    elif plan.relay_console and fd_pair is not None:
        channel.send("console")
        console.send_fd(fd_pair[1], master)
    os.close(master)
    return slave


def _install_seccomp(compiled, fd_pair, channel: Channel) -> None:
    if getattr(compiled, "learning", False):
        compiled.install(fd_pair, channel)  # ocirt.linux.seccomp_learn.LearningFilter
        return
    from ocirt.linux.seccomp import install_filter

    listener_fd = install_filter(compiled)
    if listener_fd is not None and fd_pair is not None:
        from ocirt import console

        channel.send("seccomp")
        console.send_fd(fd_pair[1], listener_fd, "seccomp")
        os.close(listener_fd)


def _join_session_keyring(name: str) -> None:
    try:
        sc.keyctl_join_session_keyring(name[:255])
    except OSError as err:
        # Kernels or seccomp profiles of the host may forbid keyrings; runc ignores ENOSYS and EACCES too.
        if err.errno not in (38, 13, 1):
            raise OcirtError(f"cannot join a session keyring: {why(err)}", op="keyctl",
                             hint="--no-new-keyring keeps the caller's keyring") from None


def close_callers_fds(preserve_fds: int) -> None:
    """Close the fds the runtime's caller left open beyond the preserved ones, right after the fork, so
    not even the init waiting for ``start`` holds them (runc's init never gets them at all).

    They are the ones without close-on-exec: they crossed the runtime's own execve, while every fd the
    runtime opens is close-on-exec (PEP 446, and O_CLOEXEC/SOCK_CLOEXEC where ocirt opens its own)."""
    first = 3 + preserve_fds
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(first, os.sysconf("SC_OPEN_MAX")))
    for fd in fds:
        if fd < first:
            continue
        try:
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                os.close(fd)
        except OSError:
            pass  # the listdir's own fd, closed meanwhile


def _seal_fds(preserve_fds: int) -> None:
    """At execve only 0-2 and the preserved fds may stay open: everything else gets close-on-exec."""
    first = 3 + preserve_fds
    try:
        sc.close_range(first, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
    except OSError as err:
        # ENOSYS before 5.9, EINVAL for the CLOEXEC flag before 5.11, EPERM from a host's seccomp profile.
        if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
            raise
        _seal_fds_one_by_one(first)
    for fd in range(3, first):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass


def _seal_fds_one_by_one(first: int) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        # No /proc in the container: every fd this process may hold.
        fds = list(range(first, os.sysconf("SC_OPEN_MAX")))
    for fd in fds:
        if fd < first:
            continue
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            if not flags & fcntl.FD_CLOEXEC:
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            pass  # closed meanwhile (the listdir's own fd)
