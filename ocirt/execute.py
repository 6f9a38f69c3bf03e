"""`exec`: a new process in a running container, from --process or from the container's own process with
the command line's changes, with the container's seccomp filter and cgroups."""

from __future__ import annotations

import os

from ocirt import log
from ocirt.config import saved_config
from ocirt.container import check_pid_file, write_pid_file
from ocirt.errors import CgroupError, ConfigError, InvalidState, NotRunning, OcirtError
from ocirt.faults import crash_point
from ocirt.linux.initplan import check_realtime_runtime
from ocirt.state import PAUSED, STOPPED, Container
from ocirt.teardown import cgroup_manager


class ExecOptions:
    def __init__(self, *, root: str, container_id: str, process: dict | None = None, args: list[str] | None = None,
                 tty: bool | None = None, detach: bool = False, pid_file: str | None = None,
                 console_socket: str | None = None, cwd: str | None = None, env: list[str] | None = None,
                 user: str | None = None, additional_gids: list[str] | None = None, caps: list[str] | None = None,
                 no_new_privs: bool = False, preserve_fds: int = 0, apparmor: str | None = None,
                 process_label: str | None = None, ignore_paused: bool = False, pidfd_socket: str | None = None,
                 cgroup: list[str] | None = None):
        self.root = root
        self.cgroup = cgroup or []
        self.container_id = container_id
        self.process = process
        self.args = args or []
        self.tty = tty
        self.detach = detach
        self.pid_file = os.path.abspath(pid_file) if pid_file else None
        self.pidfd_socket = os.path.abspath(pidfd_socket) if pidfd_socket else None
        self.console_socket = os.path.abspath(console_socket) if console_socket else None
        self.cwd = cwd
        self.env = env or []
        self.user = user
        self.additional_gids = additional_gids or []
        self.caps = caps or []
        self.no_new_privs = no_new_privs
        self.preserve_fds = preserve_fds
        self.apparmor = apparmor
        self.process_label = process_label
        self.ignore_paused = ignore_paused


def parse_user(text: str) -> tuple[int, int | None]:
    """``uid[:gid]`` as numbers: names would need the container's /etc/passwd, which runc doesn't read either."""
    uid_text, colon, gid_text = text.partition(":")

    def numeric(part: str) -> bool:
        # str.isdigit() also accepts digits int() refuses, such as "²".
        return part.isascii() and part.isdigit()

    if len(text) > 64 or not numeric(uid_text) or (colon and not numeric(gid_text)):
        raise OcirtError(f"invalid --user {text[:64]!r}: use numeric uid[:gid]")
    uid = int(uid_text)
    gid = int(gid_text) if gid_text else None
    if uid > 0xFFFFFFFE or (gid is not None and gid > 0xFFFFFFFE):
        raise OcirtError(f"invalid --user {text!r}: id out of range")
    return uid, gid


def exec_process_dict(opts: ExecOptions, config: dict) -> dict:
    """The process to exec: from --process as given, or the container's process with the flags applied."""
    if opts.process is not None:
        process = dict(opts.process)
        if opts.tty is not None:
            process["terminal"] = opts.tty
        base_caps = (config.get("process") or {}).get("capabilities")
        if "capabilities" not in process and base_caps is not None:
            # runc and crun: a process file without capabilities gets the container's five sets.
            process["capabilities"] = base_caps
        return process
    if not opts.args:
        raise OcirtError("exec: no command given: pass the command after the container id, or --process")
    base = config.get("process") or {}
    process = {k: v for k, v in base.items() if k not in ("args", "commandLine", "terminal", "consoleSize")}
    process["args"] = list(opts.args)
    process["terminal"] = bool(opts.tty)
    process["env"] = list(base.get("env") or []) + list(opts.env)
    if opts.cwd:
        process["cwd"] = opts.cwd
    user = dict(base.get("user") or {"uid": 0, "gid": 0})
    if opts.user:
        uid, gid = parse_user(opts.user)
        user["uid"] = uid
        if gid is not None:
            user["gid"] = gid
    if opts.additional_gids:
        try:
            user["additionalGids"] = [int(g) for g in opts.additional_gids]
        except ValueError:
            raise OcirtError(f"invalid --additional-gids {opts.additional_gids!r}") from None
    process["user"] = user
    if opts.caps:
        caps = {k: list(v) for k, v in (base.get("capabilities") or {}).items()}
        for cap in opts.caps:
            name = cap.upper() if cap.upper().startswith("CAP_") else "CAP_" + cap.upper()
            for kind in ("bounding", "effective", "permitted"):
                if name not in caps.setdefault(kind, []):
                    caps[kind].append(name)
        process["capabilities"] = caps
    if opts.no_new_privs:
        process["noNewPrivileges"] = True
    if opts.apparmor:
        process["apparmorProfile"] = opts.apparmor
    if opts.process_label:
        process["selinuxLabel"] = opts.process_label
    return process


# runc's exit code for an exec that fails before its process runs, whatever the reason (missing container,
# paused, missing binary, bad user, pid file): scripts around runc test for it.
EXEC_FAILED = 255


def exec_process(opts: ExecOptions) -> int:
    """Run a process in the container; the process's exit code in the foreground, else 0."""
    try:
        return _exec_process(opts)
    except OcirtError as err:
        err.exit_code = EXEC_FAILED
        raise


def _exec_process(opts: ExecOptions) -> int:
    from ocirt import syscalls as sc
    from ocirt.linux.exec import ExecPlan, spawn_exec
    from ocirt.linux.process import ProcessPlan

    if opts.pid_file:
        check_pid_file(opts.pid_file)
    if opts.pidfd_socket:
        from ocirt import pidfd_socket

        pidfd_socket.check(opts.pidfd_socket)
    container = Container.load(opts.root, opts.container_id, shared=True)
    try:
        status = container.status()
        if status == STOPPED:
            raise NotRunning(opts.container_id)
        if status == PAUSED and not opts.ignore_paused:
            raise InvalidState(f"cannot exec in container {opts.container_id!r}: it is paused")
        config = saved_config(container)
        linux = config.get("linux") or {}
        process = exec_process_dict(opts, config)
        if opts.process is not None:
            from ocirt.spec.validate import check_process

            check_process(process)
        plan_process = ProcessPlan(process, linux)
        if plan_process.terminal and opts.detach and not opts.console_socket:
            raise ConfigError("exec with a terminal in detached mode needs --console-socket")
        seccomp = None
        if linux.get("seccomp"):
            from ocirt.linux.seccomp import cache_dir, compile_filter

            seccomp = compile_filter(linux["seccomp"], cache_dir=cache_dir(bool(container.runtime.get("rootless"))))
        cgroup = cgroup_manager(container)
        if cgroup is not None:
            check_realtime_runtime(plan_process, cgroup)
        cgroup_subs = None
        if opts.cgroup:
            from ocirt.cgroups.manager import parse_sub_cgroups

            cgroup_subs = parse_sub_cgroups(opts.cgroup)
            if cgroup_subs and cgroup is None:
                raise CgroupError(f"--cgroup: container {opts.container_id} has no cgroups to join")
        rootless = bool(container.runtime.get("rootless"))
        from ocirt.linux.idmap import is_own_single_map

        single_map = is_own_single_map(linux.get("uidMappings") or [], linux.get("gidMappings") or [],
                                       os.geteuid(), os.getegid())
        plan = ExecPlan(process=plan_process, seccomp=seccomp, init_pid=container.pid,
                        init_start_time=container.runtime.get("start_time", 0), cgroup=cgroup,
                        console_socket=opts.console_socket, relay_console=not opts.detach,
                        preserve_fds=opts.preserve_fds,
                        setgroups_allowed=not (rootless and single_map), cgroup_subs=cgroup_subs,
                        listener_state=container.spec_state() if getattr(seccomp, "listener_path", None) else None)
        import ocirt.linux.process  # noqa: F401 - needed after the mount namespace is joined
        if plan_process.terminal or getattr(seccomp, "listener_path", None):
            import ocirt.console  # noqa: F401
        if seccomp is not None:
            import ocirt.linux.seccomp  # noqa: F401
        if not opts.detach:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    except BaseException:
        container.close()
        raise
    # The exec'd process must not inherit the lock, and the lock must not outlive this setup: a long
    # foreground exec would otherwise block every other command on the container.
    container.close()
    crash_point()
    spawned = spawn_exec(plan)
    crash_point()
    try:
        if opts.pid_file:
            write_pid_file(opts.pid_file, spawned.pid)
        if opts.pidfd_socket:
            from ocirt import pidfd_socket

            pidfd_socket.send(opts.pidfd_socket, spawned.pid)
    except OcirtError:
        # As runc: no process runs that its caller can't know of.
        _kill_exec_process(spawned.pid)
        raise
    if opts.pid_file:
        crash_point()
    if opts.detach:
        return 0
    return wait_foreground(spawned)


def _kill_exec_process(pid: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)  # ours in the foreground (a subreaper), someone else's when detached
    except (ProcessLookupError, ChildProcessError):
        pass


def wait_foreground(spawned) -> int:
    import _signal as signal  # the C module: "signal" pulls in enum (~5 ms)

    def forward(signum, _frame):
        try:
            os.kill(spawned.pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        if signum == 28 and spawned.console_master is not None:
            continue
        signal.signal(signum, forward)
    if spawned.console_master is not None:
        from ocirt.console import relay

        status = relay(spawned.console_master, spawned.pid)
    else:
        _, status = os.waitpid(spawned.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    log.trace("exit", "pid %d exited: %s %d", spawned.pid, "signal" if code < 0 else "status", abs(code))
    reap_orphans()
    return 128 - code if code < 0 else code


FORWARDED_SIGNALS = (1, 2, 3, 10, 12, 15, 28)


def reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
