"""The runtime's operations (runtime.md "Operations"), expressed over the state store, the init and cgroups.

Every operation takes the container's lock first, so operations on one id never interleave.
"""

from __future__ import annotations

import os
import time

from ocirt import execfifo, log
from ocirt.config import load_config, save_config
from ocirt.errors import (
    InvalidState,
    NotRunning,
    OcirtError,
)
from ocirt.faults import crash_point
from ocirt.state import (
    CREATED,
    CREATING,
    PAUSED,
    RUNNING,
    STOPPED,
    Container,
)

# delete lives in teardown with the rest of a container's end; it is one of this module's operations too.
from ocirt.teardown import cgroup_manager, delete, kill_and_wait, reclaim, signal_init  # noqa: F401
from ocirt.version import OCI_VERSION


class CreateOptions:
    def __init__(self, *, root: str, container_id: str, bundle: str | None = None, pid_file: str | None = None,
                 console_socket: str | None = None, no_pivot: bool = False, no_new_keyring: bool = False,
                 preserve_fds: int = 0, rootless: bool = False, detach: bool = True,
                 relay_console: bool = False, listen_fds: int = 0, systemd_cgroup: bool = False,
                 seccomp_learn=None, pidfd_socket: str | None = None):
        self.root = root
        self.container_id = container_id
        self.bundle = os.path.abspath(bundle or ".")
        self.pid_file = os.path.abspath(pid_file) if pid_file else None
        self.pidfd_socket = os.path.abspath(pidfd_socket) if pidfd_socket else None
        self.console_socket = os.path.abspath(console_socket) if console_socket else None
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.preserve_fds = preserve_fds
        self.rootless = rootless
        self.detach = detach
        self.relay_console = relay_console
        # How many of the preserved fds are systemd socket-activation fds (LISTEN_FDS), counted in preserve_fds.
        self.listen_fds = listen_fds
        self.systemd_cgroup = systemd_cgroup
        # ocirt.linux.seccomp_learn.LearnOptions: record the syscalls into a profile instead of filtering.
        self.seccomp_learn = seccomp_learn




# -- create ---------------------------------------------------------------------------------------------------
def create(opts: CreateOptions, *, for_run: bool = False):
    """Create the container and leave its init waiting for `start`. Returns the init's Spawned record.
    The container's lock is released before it returns: the caller's next command on the id (state,
    start, delete) takes it again, as one from another process would."""
    from ocirt import cgroups

    # The kernel's wait before the init's first cgroup migration overlaps with reading the config and
    # planning (cgroups.warm_migrations).
    warmer = None if opts.systemd_cgroup else cgroups.warm_migrations(opts.rootless)
    try:
        return _create(opts, for_run, warmer)
    finally:
        if warmer is not None:
            warmer.stop()


def _create(opts: CreateOptions, for_run: bool, warmer):
    from ocirt.linux import initplan

    if opts.pid_file:
        check_pid_file(opts.pid_file)
    if opts.pidfd_socket:
        from ocirt import pidfd_socket

        pidfd_socket.check(opts.pidfd_socket)
    config = load_config(opts.bundle)
    log.trace("config", "%s/config.json read and validated", opts.bundle)
    plan = initplan.plan_init(config, opts, for_run=for_run)
    linux = config.get("linux") or {}

    container = Container.new(opts.root, opts.container_id, rootless=opts.rootless, reclaim=reclaim)
    crash_point()
    cgroup = None
    try:
        from ocirt import cgroups

        cgroup = cgroups.open_manager(opts.container_id, linux.get("cgroupsPath"), rootless=opts.rootless,
                                      resources=linux.get("resources"), owner=cgroups.owner_of(container.dir),
                                      systemd=opts.systemd_cgroup, annotations=config.get("annotations"))
        # Rootless, skipping an undelegated controller is the expected case: a notice in the log.
        for notice in cgroup.notices:
            if opts.rootless:
                log.info(notice)
            else:
                log.warning(notice)
        initplan.plan_mounts(plan, cgroup.paths())
        container.data = {
            "ociVersion": config.get("ociVersion", OCI_VERSION),
            "id": opts.container_id,
            "status": CREATING,
            "pid": 0,
            "bundle": opts.bundle,
            "rootfs": plan.rootfs_path,
            "created": _now_rfc3339(),
            "owner": _owner(),
            "annotations": config.get("annotations") or {},
            "ocirt": {"creator_pid": os.getpid(), "rootless": opts.rootless},
        }
        container.save()
        crash_point()
        save_config(container, config)
        crash_point()
        plan.fifo_path = container.fifo_path
        plan.fifo_group = execfifo.make(container, plan.namespaces, plan.process, linux)
        log.trace("fifo", "state saved, exec fifo %s made", container.fifo_path)
        crash_point()
        # Recorded before they exist: from here on, a crash leaves cgroups that delete --force knows of
        # (marked "creating": which directories the dead create made, their tags say, or for one made and
        # not yet tagged, its absence from those that were there before).
        container.runtime["cgroup"] = dict(cgroup.to_state(), creating=True, preexisting=cgroup.existing())
        container.runtime["resources"] = linux.get("resources") or {}
        container.runtime["freezer_path"] = cgroup.freezer_file()
        container.save()
        crash_point()
        cgroup.create()
        log.trace("cgroups", "created %s", lambda: " ".join(sorted(set(cgroup.paths().values()))))
        crash_point()
        container.runtime["cgroup"] = cgroup.to_state()
        container.save()
        crash_point()
        if plan.process is not None:
            initplan.check_realtime_runtime(plan.process, cgroup)
        plan.cgroup = cgroup
        plan.hook_state = _hook_state(container)
        plan.close_in_child.append(container.lock_fd)

        def record_init(init_pid: int, start_time: int) -> None:
            # Saved before the init may go on: a create that dies after this leaves an init that
            # delete --force can find; one that dies before it leaves an init that exits on its own.
            container.data["pid"] = init_pid
            container.runtime["start_time"] = start_time
            container.save()
            crash_point()

        plan.on_init_pid = record_init
        initplan.preload(plan)

        runtime_hook_kinds = [k for k in ("prestart", "createRuntime") if (config.get("hooks") or {}).get(k)]

        def runtime_hooks(init_pid: int) -> None:
            # The hooks of create are lifecycle steps 3-5, after step 2 (the environment is created): the
            # state's "created" is "after step 2 in the lifecycle", and crun and runtime-tools read it so.
            state = dict(plan.hook_state, pid=init_pid, status=CREATED)
            if plan.net_devices:
                from ocirt.linux.network import move_net_devices

                container.runtime["net_devices"] = move_net_devices(plan.net_devices, init_pid)
            try:
                if runtime_hook_kinds:
                    from ocirt.hooks import hooks_of, run_hooks

                    for kind in runtime_hook_kinds:
                        run_hooks(hooks_of(config, kind), kind, state)
            except BaseException:
                # The init dies next, and its network namespace with it: give the devices back first, or
                # the kernel destroys the virtual ones.
                if container.runtime.get("net_devices"):
                    from ocirt.linux.network import return_net_devices

                    return_net_devices(container.runtime.pop("net_devices"), init_pid, rollback=True)
                raise

        if warmer is not None:
            warmer.stop()  # its thread is gone before the fork
        from ocirt.linux.init import spawn

        spawned = spawn(plan, runtime_hooks)
        crash_point()
        container.data["pid"] = spawned.pid
        container.data["status"] = CREATED
        container.runtime["start_time"] = spawned.start_time
        if spawned.recorder is not None:
            container.runtime["seccomp_learn"] = spawned.recorder.to_state()
        hooks = config.get("hooks") or {}
        container.runtime["hooks"] = {k: hooks[k] for k in ("poststart", "poststop") if hooks.get(k)}
        container.save()
        crash_point()
        if opts.pid_file:
            write_pid_file(opts.pid_file, spawned.pid)
            crash_point()
        if opts.pidfd_socket:
            from ocirt import pidfd_socket

            pidfd_socket.send(opts.pidfd_socket, spawned.pid)
        log.trace("create", "container %s created, init pid %d", opts.container_id, spawned.pid)
        container.close()
        return spawned
    except BaseException:
        # Undo all of it: an init that is already waiting for `start` (when the last save or the pid file
        # failed), the cgroups, the directory.
        if warmer is not None:
            warmer.stop()
        try:
            if container.init_alive():
                kill_and_wait(container)
            if cgroup is not None:
                cgroup.destroy()
        except OcirtError as err:
            log.warning(f"cleanup: {err}")
        try:
            container.remove()
        except OcirtError as err:
            log.warning(f"cleanup: {err}")
        container.close()
        raise


def _hook_state(container: Container) -> dict:
    state = {
        "ociVersion": container.data["ociVersion"],
        "id": container.id,
        "status": CREATING,
        "pid": 0,
        "bundle": container.data["bundle"],
    }
    if container.data.get("annotations"):
        state["annotations"] = container.data["annotations"]
    return state


def _now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f"{now % 1:.9f}"[1:] + "Z"


def _owner() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def check_pid_file(path: str) -> None:
    """Fail before anything is made when the pid file's directory can't take it (runc finds out only after
    starting the process, then kills it)."""
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(directory)
    except OSError as err:
        raise OcirtError.from_os(err, "stat", directory, what=f"cannot write pid file {path}") from None
    if (st.st_mode & 0o170000) != 0o040000:
        raise OcirtError(f"cannot write pid file {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OcirtError(f"cannot write pid file {path}: permission denied")


def write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OcirtError.from_os(err, "write", path, what=f"cannot write pid file {path}") from None


# -- start ----------------------------------------------------------------------------------------------------
def start(root: str, container_id: str) -> None:
    container = Container.load(root, container_id)
    try:
        status = container.status()
        if status != CREATED:
            if status == STOPPED:
                raise InvalidState(f"cannot start container {container_id!r}: it is stopped")
            raise InvalidState(f"cannot start container {container_id!r} in status {status}: "
                               "it is not in the created state")
        crash_point()
        execfifo.release_init(container)
        log.trace("fifo", "exec fifo opened: pid %d runs its program", container.data.get("pid"))
        crash_point()
        hooks = container.runtime.get("hooks") or {}
        if hooks.get("poststart"):
            from ocirt.hooks import run_hooks_logged

            # The state of lifecycle step 9, right after the program was executed: running, with its pid,
            # even when a short program has already exited by the time the hook runs (crun does the same).
            state = dict(container.spec_state(), status=RUNNING, pid=container.pid)
            run_hooks_logged(hooks["poststart"], "poststart", state)
    finally:
        container.close()


# -- state, kill ----------------------------------------------------------------------------------------------
def state(root: str, container_id: str) -> dict:
    container = Container.load(root, container_id, shared=True)
    try:
        return container.spec_state()
    finally:
        container.close()


SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
    "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
    "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
    "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}


def parse_signal(text: str) -> int:
    # isdigit() alone also accepts digits such as "٩", which int() reads as 9.
    if text.isascii() and text.isdigit():
        sig = int(text)
        if 0 < sig <= 64:
            return sig
        raise OcirtError(f"invalid signal {text!r}")
    name = text.upper()
    if name.startswith("SIG"):
        name = name[3:]
    if name in SIGNALS:
        return SIGNALS[name]
    if name.startswith("RTMIN") or name.startswith("RTMAX"):
        base = 34 if name.startswith("RTMIN") else 64
        rest = name[5:]
        try:
            offset = int(rest) if rest else 0
        except ValueError:
            offset = None
        if offset is not None and 34 <= base + offset <= 64:
            return base + offset
    raise OcirtError(f"unknown signal {text!r}")


def kill(root: str, container_id: str, sig: int, *, all_processes: bool = False) -> None:
    container = Container.load(root, container_id)
    try:
        status = container.status()
        if status not in (CREATED, RUNNING, PAUSED):
            raise NotRunning(container_id)
        manager = cgroup_manager(container) if all_processes else None
        if manager is not None:
            manager.kill_all(sig)
            if status == PAUSED and sig == 9:
                manager.thaw()
            return
        signal_init(container, sig)
        log.trace("kill", "signal %d sent to pid %d", sig, container.pid)
    finally:
        container.close()








