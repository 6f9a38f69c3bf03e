"""The runtime's operations (runtime.md "Operations"), expressed over the state store, the init and cgroups.

Every operation takes the container's lock first, so operations on one id never interleave.
"""

from __future__ import annotations

import os
import stat
import time

from ocirt import OCI_VERSION, log
from ocirt.errors import (
    CgroupError,
    ConfigError,
    ContainerNotFound,
    InvalidState,
    NotRunning,
    OcirtError,
    why,
)
from ocirt.faults import crash_point
from ocirt.state import (
    CREATED,
    CREATING,
    EXEC_FIFO,
    PAUSED,
    RUNNING,
    STOPPED,
    Container,
    read_all,
    write_file_atomic,
)


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


# -- config ---------------------------------------------------------------------------------------------------
def load_config(bundle: str) -> dict:
    path = os.path.join(bundle, "config.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            raw = read_all(fd, CONFIG_MAX_BYTES)
        finally:
            os.close(fd)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {why(err)}") from None
    except ValueError:
        raise ConfigError(f"{path}: larger than {CONFIG_MAX_BYTES >> 20} MiB, the most ocirt reads") from None
    from ocirt.fastjson import JSONError, loads

    try:
        config = loads(raw)
    except (JSONError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    check_json_document(config, raw, where=path)
    from ocirt.spec.validate import check_config

    check_config(config)
    _check_counts(config)
    return config


# The most config.json (or an exec --process file) may hold: far more than any real one (the kernel's
# limit on args plus env is 2-6 MiB), and little enough that parsing the worst of it stays bounded.
CONFIG_MAX_BYTES = 4 << 20
# Deeper than any structure of the spec (seccomp args are the deepest, at 7 levels).
JSON_MAX_DEPTH = 64


def check_json_document(doc: object, raw: bytes, *, where: str) -> None:
    """What a schema can't say about a parsed document: it nests at most JSON_MAX_DEPTH levels (code that
    walks it must not run out of stack), and its strings can reach the kernel as C strings: no NUL byte
    (annotations aside: they never do), no lone UTF-16 surrogate ("\\ud800" is valid JSON, but no byte
    string encodes it)."""
    depth = _depth(doc)
    if depth > JSON_MAX_DEPTH:
        raise ConfigError(f"{where}: nested more than {JSON_MAX_DEPTH} levels deep")
    nul = b"\\u0000" in raw
    surrogate = b"\\ud" in raw or b"\\uD" in raw
    if nul or surrogate:
        found = _bad_string_at(doc, nul=nul, surrogate=surrogate)
        if found:
            raise ConfigError(f"{found[0]}: {found[1]}")


def _depth(doc: object) -> int:
    deepest = 0
    pending = [(doc, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > deepest:
            deepest = depth
            if depth > JSON_MAX_DEPTH:
                break
        for child in node.values() if type(node) is dict else node:  # type: ignore[attr-defined]
            if type(child) is dict or type(child) is list:
                pending.append((child, depth + 1))
    return deepest


def _bad_string_at(doc: object, *, nul: bool, surrogate: bool) -> tuple[str, str] | None:
    """The JSON path of the first string (or key) holding a NUL byte outside the annotations (paths, names
    and values reach the kernel as C strings, which a NUL would silently cut short) or a lone surrogate,
    and what is wrong with it."""

    def problem(text: str, in_annotations: bool) -> str | None:
        if nul and not in_annotations and "\0" in text:
            return "contains a NUL byte"
        if surrogate:
            try:
                text.encode()
            except UnicodeEncodeError:
                return "is not valid Unicode: it holds a lone UTF-16 surrogate"
        return None

    pending: list[tuple[str, object, bool]] = [("$", doc, False)]
    while pending:
        where, node, in_annotations = pending.pop()
        if isinstance(node, str):
            found = problem(node, in_annotations)
            if found:
                return where, found
        elif isinstance(node, dict):
            for key, value in node.items():
                found = problem(key, in_annotations)
                if found:
                    return where, found
                annotations = in_annotations or (where == "$" and key == "annotations")
                pending.append((f"{where}.{key}", value, annotations))
        elif isinstance(node, list):
            pending.extend((f"{where}[{i}]", item, in_annotations) for i, item in enumerate(node))
    return None


def _check_counts(config: dict) -> None:
    """Counts the schema can't bound, because the kernel's limit is a setting of the host."""
    linux = config.get("linux") or {}
    mounts = len(config.get("mounts") or []) + len(linux.get("maskedPaths") or []) + \
        len(linux.get("readonlyPaths") or [])
    if mounts > 1000:
        limit = _mount_max()
        if mounts > limit:
            raise ConfigError(f"$.mounts: {mounts} mounts, with the masked and read-only paths: more than one "
                              f"mount namespace may hold (fs.mount-max is {limit})")


def _mount_max() -> int:
    try:
        with open("/proc/sys/fs/mount-max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 100000


def _rootfs_path(config: dict, bundle: str) -> str:
    path = (config.get("root") or {}).get("path")
    if not path:
        raise ConfigError("root.path is not set")
    return path if os.path.isabs(path) else os.path.join(bundle, path)


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
    from ocirt.linux import namespaces
    from ocirt.linux.process import ProcessPlan

    if opts.pid_file:
        check_pid_file(opts.pid_file)
    if opts.pidfd_socket:
        from ocirt import pidfd_socket

        pidfd_socket.check(opts.pidfd_socket)
    config = load_config(opts.bundle)
    log.trace("config", "%s/config.json read and validated", opts.bundle)
    _pass_notify_socket(config)
    linux = config.get("linux") or {}
    ns_plan = namespaces.plan_namespaces(config)
    if opts.listen_fds and "pid" in ns_plan.new:
        _pass_listen_fds(config, opts.listen_fds)
    if opts.rootless and os.geteuid() != 0 and not ns_plan.has("user"):
        raise ConfigError("rootless containers need a user namespace: add {\"type\": \"user\"} to "
                          "linux.namespaces with uidMappings and gidMappings (see `ocirt spec --rootless`)")
    # runtime.md: create applies everything but process, and "start ... MUST generate an error if process
    # was not set": without one the init sets the container up and waits; at start it reports the error and
    # exits, so the container is stopped, as after a failing startContainer hook.
    process = config.get("process")
    if not process and for_run:
        raise ConfigError("$.process: run needs a process to start (create accepts a config without one)")
    process_plan = ProcessPlan(process, linux) if process else None
    if process_plan is not None and process_plan.terminal and opts.detach and not opts.console_socket:
        raise ConfigError("process.terminal is true: a detached container needs --console-socket to receive "
                          "the terminal")
    labels = (process_plan.apparmor_profile, process_plan.selinux_label) if process_plan else (None, None)
    if any(labels) or linux.get("mountLabel"):
        from ocirt.linux.lsm import check_host_support

        check_host_support(*labels, mount_label=linux.get("mountLabel"))
    rootfs_path = _rootfs_path(config, opts.bundle)
    if not os.path.isdir(rootfs_path):
        raise ConfigError(f"rootfs {rootfs_path} does not exist or is not a directory")
    net_devices = linux.get("netDevices")
    if net_devices:
        if not ns_plan.has("network"):
            raise ConfigError("$.linux.netDevices: moving devices into the container needs a network "
                              "namespace of its own (add {\"type\": \"network\"} to linux.namespaces)")
        from ocirt.linux.network import check_net_devices

        check_net_devices(net_devices, rootless=opts.rootless)
    seccomp = None
    if opts.seccomp_learn is not None:
        seccomp = _learning_filter(opts.seccomp_learn, linux, process_plan)
    elif linux.get("seccomp"):
        from ocirt.linux.seccomp import compile_filter

        seccomp = compile_filter(linux["seccomp"], cache_dir=_cache_dir(opts.rootless))
        log.trace("seccomp", "BPF program ready (from the cache: %s)", seccomp.from_cache)

    container = Container.new(opts.root, opts.container_id, rootless=opts.rootless, reclaim=_reclaim)
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
        from ocirt.linux.rootfs import plan_rootfs

        rootfs_plan = plan_rootfs(config, opts.bundle, rootless=opts.rootless, no_pivot=opts.no_pivot,
                                  cgroup_paths=cgroup.paths())
        log.trace("plan", "mounts of rootfs %s planned", rootfs_path)
        container.data = {
            "ociVersion": config.get("ociVersion", OCI_VERSION),
            "id": opts.container_id,
            "status": CREATING,
            "pid": 0,
            "bundle": opts.bundle,
            "rootfs": rootfs_path,
            "created": _now_rfc3339(),
            "owner": _owner(),
            "annotations": config.get("annotations") or {},
            "ocirt": {"creator_pid": os.getpid(), "rootless": opts.rootless},
        }
        container.save()
        crash_point()
        _save_config(container, config)
        crash_point()
        fifo_group = _make_exec_fifo(container, ns_plan, process_plan, linux)
        log.trace("fifo", "state saved, exec fifo %s made", container.fifo_path)
        crash_point()
        # Recorded before they exist: from here on, a crash leaves cgroups that delete --force knows of
        # (marked "creating": which directories the dead create made, their tags say).
        container.runtime["cgroup"] = dict(cgroup.to_state(), creating=True)
        container.runtime["resources"] = linux.get("resources") or {}
        container.runtime["freezer_path"] = _freezer_file(cgroup)
        container.save()
        crash_point()
        cgroup.create()
        log.trace("cgroups", "created %s", lambda: " ".join(sorted(set(cgroup.paths().values()))))
        crash_point()
        container.runtime["cgroup"] = cgroup.to_state()
        container.save()
        crash_point()
        if process_plan is not None:
            check_realtime_runtime(process_plan, cgroup)

        from ocirt.linux.init import InitPlan, spawn

        plan = InitPlan(config=config, bundle=opts.bundle, container_id=opts.container_id,
                        rootless=opts.rootless, namespaces=ns_plan, rootfs=rootfs_plan, process=process_plan,
                        seccomp=seccomp, cgroup=cgroup, fifo_path=container.fifo_path,
                        console_socket=opts.console_socket, preserve_fds=opts.preserve_fds,
                        no_new_keyring=opts.no_new_keyring, relay_console=opts.relay_console,
                        die_with_runtime=not opts.detach)
        plan.hook_state = _hook_state(container)
        plan.close_in_child.append(container.lock_fd)
        plan.fifo_group = fifo_group

        def record_init(init_pid: int, start_time: int) -> None:
            # Saved before the init may go on: a create that dies after this leaves an init that
            # delete --force can find; one that dies before it leaves an init that exits on its own.
            container.data["pid"] = init_pid
            container.runtime["start_time"] = start_time
            container.save()
            crash_point()

        plan.on_init_pid = record_init
        _preload_for_init(plan)

        runtime_hook_kinds = [k for k in ("prestart", "createRuntime") if (config.get("hooks") or {}).get(k)]

        def runtime_hooks(init_pid: int) -> None:
            # The hooks of create are lifecycle steps 3-5, after step 2 (the environment is created): the
            # state's "created" is "after step 2 in the lifecycle", and crun and runtime-tools read it so.
            state = dict(plan.hook_state, pid=init_pid, status=CREATED)
            if net_devices:
                from ocirt.linux.network import move_net_devices

                container.runtime["net_devices"] = move_net_devices(net_devices, init_pid)
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
            _write_pid_file(opts.pid_file, spawned.pid)
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
                _kill_and_wait(container)
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


def _learning_filter(learn, linux: dict, process_plan):
    """--seccomp-learn: the filter that records every syscall, in place of the config's own profile."""
    from ocirt import seccomp_profile
    from ocirt.linux import seccomp_learn
    from ocirt.linux.seccomp import binding

    if process_plan is None:
        raise ConfigError("--seccomp-learn: the config has no process to learn from")
    seccomp_learn.check_host()
    binding()  # the names of the recorded numbers come from libseccomp: refuse now if it is missing
    seccomp_profile.check_learning_target(learn.profile)
    if linux.get("seccomp"):
        log.warning("--seccomp-learn: the config's linux.seccomp is not loaded in this run: every syscall "
                    "is recorded and allowed")
    return seccomp_learn.LearningFilter(learn)


NOTIFY_SOCKET_IN_CONTAINER = "/run/notify/notify.sock"


def _pass_notify_socket(config: dict) -> None:
    """systemd's NOTIFY_SOCKET: bind the caller's socket into the container so sd_notify reaches it."""
    host_socket = os.environ.get("NOTIFY_SOCKET")
    if not host_socket or host_socket.startswith("@") or not os.path.exists(host_socket):
        return
    config.setdefault("mounts", []).append({
        "destination": NOTIFY_SOCKET_IN_CONTAINER, "type": "bind", "source": os.path.abspath(host_socket),
        "options": ["bind", "nosuid", "noexec", "nodev"],
    })
    process = config.get("process")
    if process is not None:
        env = [e for e in process.get("env") or [] if not e.startswith("NOTIFY_SOCKET=")]
        env.append(f"NOTIFY_SOCKET={NOTIFY_SOCKET_IN_CONTAINER}")
        process["env"] = env


def _pass_listen_fds(config: dict, count: int) -> None:
    """Socket activation: the container's process, pid 1 of its new pid namespace, is the one the fds are for."""
    process = config.get("process")
    if process is None:
        return
    env = [e for e in process.get("env") or [] if not e.startswith(("LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES="))]
    env += [f"LISTEN_FDS={count}", "LISTEN_PID=1"]
    names = os.environ.get("LISTEN_FDNAMES")
    if names:
        env.append(f"LISTEN_FDNAMES={names}")
    process["env"] = env


CONFIG_COPY = "config.json"


def _save_config(container: Container, config: dict) -> None:
    """exec needs the container's process defaults and seccomp later, even if the bundle changes."""
    from ocirt.fastjson import dumps

    write_file_atomic(container.lock_fd, CONFIG_COPY, dumps(config).encode(), what=f"the config of {container.id!r}")


def saved_config(container: Container) -> dict:
    from ocirt.fastjson import loads

    try:
        fd = os.open(CONFIG_COPY, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=container.lock_fd)
        try:
            config = loads(read_all(fd, 2 * CONFIG_MAX_BYTES))
        finally:
            os.close(fd)
    except OSError as err:
        raise OcirtError(f"container {container.id!r}: cannot read its saved config: {why(err)}") from None
    except ValueError as err:  # JSONError, UnicodeDecodeError, too large
        raise OcirtError(f"container {container.id!r}: its saved config is unreadable: {err}") from None
    if not isinstance(config, dict):
        raise OcirtError(f"container {container.id!r}: its saved config is not a JSON object")
    return config


def _make_exec_fifo(container: Container, ns_plan, process_plan, linux: dict) -> int | None:
    """The fifo whose opening by `start` lets the init exec. Only the runtime's user (who reads it at
    `start`) and the container's process (which writes it, after its switch to the config's user) may open
    it: 0600, or 0620 with the process's own group when the process runs as another host uid.

    The init holds an O_PATH fd of the fifo from before that switch, but reopening it for writing still
    checks the mode. Returns the gid (as the container sees it) that the init must give the fifo itself,
    when a rootless runtime may not: the subordinate gid of a process that isn't the container's root."""
    os.mkfifo(EXEC_FIFO, 0o600, dir_fd=container.lock_fd)
    # Changed through an fd of the fifo just made: a name swapped for a link in between is never followed.
    fd = os.open(EXEC_FIFO, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=container.lock_fd)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OcirtError(f"{container.fifo_path} is not the fifo just made")
        return _give_exec_fifo(fd, ns_plan, process_plan, linux)
    finally:
        os.close(fd)


def _give_exec_fifo(fd: int, ns_plan, process_plan, linux: dict) -> int | None:
    mapped = ns_plan.has("user")
    from ocirt.linux.idmap import host_id

    # Without a process the init waits as the container's root.
    uid, gid = (process_plan.uid, process_plan.gid) if process_plan is not None else (0, 0)
    uid_maps, gid_maps = linux.get("uidMappings") or [], linux.get("gidMappings") or []
    host_uid = host_id(uid_maps, uid) if mapped else uid
    host_gid = host_id(gid_maps, gid) if mapped else gid
    if host_uid is not None and host_uid == os.geteuid():
        return None
    if host_gid is not None and (os.geteuid() == 0 or host_gid == os.getegid() or host_gid in os.getgroups()):
        try:
            os.fchown(fd, -1, host_gid)
        except OSError as err:
            if err.errno != 22:  # EINVAL: an id this user namespace of the runtime does not map
                raise
            raise ConfigError(f"$.linux.gidMappings: the host gid {host_gid} of the container's process is not "
                              "mapped in the runtime's own user namespace") from None
        os.fchmod(fd, 0o620)
        return None
    if host_gid is not None and "user" in ns_plan.new and _maps_host_id(uid_maps, os.geteuid()) \
            and _maps_host_id(gid_maps, os.getegid()):
        # The init, root of the new user namespace, may give a file of ours to a gid mapped there.
        os.fchmod(fd, 0o620)
        return gid
    # A user namespace whose maps we don't know (joined) or don't contain us: the mode alone must let the
    # process write. The directory around the fifo is private to the runtime's user all the same.
    os.fchmod(fd, 0o622)
    return None


def _maps_host_id(mappings: list[dict], host: int) -> bool:
    return any(m["hostID"] <= host < m["hostID"] + m["size"] for m in mappings)


def _preload_for_init(plan) -> None:
    """Import now what the init needs after pivot_root, where imports no longer work."""
    import ocirt.linux.process  # noqa: F401
    import ocirt.linux.rootfs  # noqa: F401

    if plan.create_container_hooks or plan.start_container_hooks:
        import ocirt.hooks  # noqa: F401
    if plan.process is None:
        if plan.sysctl:
            import ocirt.linux.procfs  # noqa: F401
        return
    if plan.sysctl or plan.process.oom_score_adj is not None:
        import ocirt.linux.procfs  # noqa: F401
    if plan.process.terminal or getattr(plan.seccomp, "listener_path", None):
        # The seccomp listener fd travels to the runtime through console.send_fd too.
        import ocirt.console  # noqa: F401
    if plan.process.apparmor_profile or plan.process.selinux_label:
        import ocirt.linux.lsm  # noqa: F401
    if plan.seccomp is not None:
        import ocirt.linux.seccomp  # noqa: F401
    if getattr(plan.seccomp, "learning", False):
        import struct  # noqa: F401

        import ocirt.linux.seccomp_learn  # noqa: F401
    if "network" in plan.namespaces.new:
        import ocirt.linux.network  # noqa: F401


def check_realtime_runtime(plan, cgroup) -> None:
    """SCHED_FIFO and SCHED_RR fail (EPERM) in a v1 cpu cgroup without real-time runtime, which is what a
    new cgroup gets with real-time group scheduling: say so before any process exists."""
    from ocirt.linux.process import REALTIME_POLICIES

    if plan.scheduler is None or plan.scheduler.sched_policy not in REALTIME_POLICIES:
        return
    directory = cgroup.paths().get("cpu")
    if directory is None:
        return
    try:
        with open(os.path.join(directory, "cpu.rt_runtime_us")) as f:
            runtime = f.read().strip()
    except OSError:
        return
    if runtime == "0":
        raise ConfigError(f"$.process.scheduler.policy: {plan.scheduler_policy} needs real-time runtime, and the "
                          f"container's cpu cgroup has none (cpu.rt_runtime_us is 0): set "
                          "linux.resources.cpu.realtimeRuntime (and realtimePeriod)")


def _cache_dir(rootless: bool) -> str:
    if rootless:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "ocirt")
    return "/var/cache/ocirt"


def _freezer_file(cgroup) -> str | None:
    paths = cgroup.paths()
    if "freezer" in paths:
        return os.path.join(paths["freezer"], "freezer.state")
    if "" in paths or "unified" in paths:
        return os.path.join(paths.get("") or paths["unified"], "cgroup.freeze")
    return None


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
        raise OcirtError(f"cannot write pid file {path}: {why(err)}") from None
    if (st.st_mode & 0o170000) != 0o040000:
        raise OcirtError(f"cannot write pid file {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OcirtError(f"cannot write pid file {path}: permission denied")


def _write_pid_file(path: str, pid: int) -> None:
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
        raise OcirtError(f"cannot write pid file {path}: {why(err)}") from None


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
        _release_init(container)
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


def _release_init(container: Container) -> None:
    """Open the exec fifo: the init, blocked opening its other end, runs the startContainer hooks and
    execs. It writes "0" (or "E" and the hook's error) and the fifo reaches EOF at its execve.

    The fifo, the mark of the "created" status, goes as soon as the init is released. If a `start` died
    in between, a later one finds the fifo but an init that has already left: it sees the init run
    another program and takes the container as started."""
    import select

    try:
        fd = os.open(EXEC_FIFO, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=container.lock_fd)
    except OSError as err:
        raise OcirtError(f"container {container.id!r}: cannot open its exec fifo: {why(err)}") from None
    received = b""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OcirtError(f"container {container.id!r}: {container.fifo_path} is not a fifo")
        crash_point()
        try:
            os.unlink(EXEC_FIFO, dir_fd=container.lock_fd)
        except FileNotFoundError:
            pass
        crash_point()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            if poller.poll(100):
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                if data:
                    received += data
                    continue
                # EOF counts only once the init has written: before its open returns there is no
                # writer yet, which reads as EOF too.
                if received:
                    break
            if not container.init_alive():
                if received.startswith(b"E"):
                    break
                raise OcirtError(f"container {container.id!r}: its init exited before start")
            if not received and _init_has_left_the_runtime(container.pid):
                return
    finally:
        os.close(fd)
    if received.startswith(b"E"):
        raise OcirtError(received[1:].decode(errors="replace"))


def _init_has_left_the_runtime(pid: int) -> bool:
    """Whether the init already runs the container's program rather than the runtime's interpreter."""
    try:
        exe = os.stat(f"/proc/{pid}/exe")
        own = os.stat("/proc/self/exe")
    except OSError:
        return False
    return (exe.st_dev, exe.st_ino) != (own.st_dev, own.st_ino)


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
        _signal_init(container, sig)
        log.trace("kill", "signal %d sent to pid %d", sig, container.pid)
    finally:
        container.close()


def _signal_init(container: Container, sig: int) -> None:
    # os and _signal have both pidfd calls: no ctypes (3-4 ms to import) on the kill path.
    from _signal import pidfd_send_signal

    try:
        pidfd = os.pidfd_open(container.pid)
    except OSError:
        raise NotRunning(container.id) from None
    try:
        # The pid was checked against its start time before pidfd_open: recheck now that the fd pins it.
        if not container.init_alive():
            raise NotRunning(container.id)
        pidfd_send_signal(pidfd, sig)
    except OSError as err:
        if err.errno == 3:
            raise NotRunning(container.id) from None
        raise OcirtError(f"cannot signal container {container.id!r}: {why(err)}") from None
    finally:
        os.close(pidfd)


# -- delete ---------------------------------------------------------------------------------------------------
def delete(root: str, container_id: str, *, force: bool = False, wait_for_learning: bool = True) -> None:
    try:
        container = Container.load(root, container_id, partial=force)
    except ContainerNotFound:
        if force:
            return
        raise
    try:
        crash_point()
        if container.problem is not None:
            _remove_unreadable(container)
            return
        status = container.status()
        if status in (RUNNING, PAUSED) and not force:
            raise InvalidState(f"cannot delete container {container_id!r} that is not stopped: {status}")
        if status in (CREATING, CREATED) and not force:
            # runtime.md: deleting a container that is not stopped MUST fail (runc deletes a created one).
            raise InvalidState(f"cannot delete container {container_id!r} that is not stopped: {status}")
        manager = None
        if status != STOPPED or container.init_alive():
            # (A stopped container with a live init is one whose create died after the init was made.)
            # The cgroups are verified once, while the init still lives (its own cgroups are evidence then).
            manager = _kill_and_wait(container)
            crash_point()
        destroy(container, manager, wait_for_learning=wait_for_learning)
    finally:
        container.close()


def _reclaim(container: Container) -> None:
    """Clean up after a create that died (Container.new found its directory, locked and stale)."""
    log.info(f"container {container.id!r}: reclaiming what a create that did not finish left")
    if container.problem is not None:
        _remove_unreadable(container)
        return
    manager = _kill_and_wait(container) if container.init_alive() else None
    destroy(container, manager)


def _remove_unreadable(container: Container) -> None:
    """A directory without a usable state: a create that died before its first save (nothing else of it
    exists yet), or a damaged file, which ocirt's atomic saves never leave. The saved config, if it still
    reads, says where the container's cgroups would be; of those, the ones carrying this directory's tag
    are the container's, and go with every process in them. The rest can't be identified."""
    from ocirt.state import NO_STATE

    if container.problem != NO_STATE:
        reclaimed = _kill_fifo_holders(container)
        reclaimed = _reclaim_cgroups_by_tag(container) or reclaimed
        log.warning(f"container {container.id!r}: its state is unreadable ({container.problem}): removing its "
                    + ("directory and what it could identify as its own" if reclaimed else
                       "directory; its processes and cgroups, if any, can't be identified"))
    container.remove()


def _kill_fifo_holders(container: Container) -> bool:
    """Kill the caller's processes that hold the container's exec fifo: an init still waiting for `start`
    (it keeps an O_PATH fd of the fifo from before its pivot_root). True if there was one."""
    try:
        fifo = os.stat(container.fifo_path, follow_symlinks=False)
    except OSError:
        return False
    killed = False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look into
        for fd in fds:
            try:
                held = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (held.st_dev, held.st_ino) == (fifo.st_dev, fifo.st_ino):
                try:
                    os.kill(int(name), 9)
                    killed = True
                except OSError:
                    pass
                break
    return killed


def _reclaim_cgroups_by_tag(container: Container) -> bool:
    """Kill and remove the cgroups the saved config names that carry the container's tag; True if any."""
    try:
        config = saved_config(container)
    except OcirtError:
        return False
    linux = config.get("linux")
    cgroups_path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    from ocirt import cgroups

    try:
        owner = cgroups.owner_of(container.dir)
        fresh = cgroups.open_manager(container.id, cgroups_path if isinstance(cgroups_path, str) else None,
                                     rootless=os.geteuid() != 0, resources=None, owner=owner)
        manager = cgroups.load_manager(dict(fresh.to_state(), creating=True), owner=owner)
    except OcirtError as err:
        log.debug(f"container {container.id!r}: its cgroups can't be found: {err}")
        return False
    if not manager.paths():
        return False
    container.runtime["cgroup"] = manager.to_state()
    destroy_cgroups(container, manager)
    return True


def _kill_and_wait(container: Container):
    manager = cgroup_manager(container, for_cleanup=True)
    signalled = False
    if container.init_alive():
        try:
            _signal_init(container, 9)
            signalled = True
        except NotRunning:
            pass
        except OcirtError as err:
            # Not a process this caller may signal, so not the container's init (whose user namespace or
            # uid is the caller's): a state that names someone else's process, which stays untouched.
            log.warning(f"{err}: leaving that process alone")
    if manager is not None:
        try:
            manager.kill_all(9)
            manager.thaw()
        except OcirtError as err:
            log.debug(f"kill --all during delete: {err}")
    deadline = time.monotonic() + 10
    while signalled and container.init_alive():
        if time.monotonic() > deadline:
            raise OcirtError(f"container {container.id!r}: its init did not die after SIGKILL")
        time.sleep(0.002)
    return manager


def cgroup_manager(container: Container, *, for_cleanup: bool = False):
    """The container's cgroups, as far as they are verifiably its own; None when it has none. A record
    that doesn't parse fails the command, or, while cleaning up, is reported and skipped."""
    if not container.runtime.get("cgroup"):
        return None
    from ocirt import cgroups

    try:
        return cgroups.container_manager(container)
    except OcirtError as err:
        if not for_cleanup:
            raise OcirtError(f"container {container.id!r}: {err}") from None
        log.warning(f"container {container.id!r}: {err}; its cgroups, if any, stay")
        return None


def destroy_cgroups(container: Container, manager) -> None:
    """Kill what is left in the container's cgroups and remove them, retrying while the kernel is busy."""
    deadline = time.monotonic() + 5
    while True:
        try:
            if manager.pids():
                manager.kill_all(9)
                manager.thaw()
            manager.destroy()
            log.trace("cgroups", "removed")
            return
        except OcirtError as err:
            if time.monotonic() > deadline:
                log.warning(f"cannot remove the cgroups of {container.id!r}: {err}")
                return
            time.sleep(0.01)


def destroy(container: Container, manager=None, *, wait_for_learning: bool = True) -> None:
    """Release everything a stopped container still holds, then forget it. A learning container's
    recorder is given time to write its profile first (``wait_for_learning``)."""
    runtime = container.runtime
    manager = manager or cgroup_manager(container, for_cleanup=True)
    if manager is not None:
        destroy_cgroups(container, manager)
        crash_point()
    # linux.netDevices are not moved back (config-linux.md: the runtime MUST NOT move them out before the
    # namespace is gone): a physical device returns to the host with the namespace, a virtual one dies.
    hooks = runtime.get("hooks") or {}
    if hooks.get("poststop"):
        from ocirt.hooks import run_hooks_logged

        state = container.spec_state()
        state["status"] = STOPPED
        run_hooks_logged(hooks["poststop"], "poststop", state)
        crash_point()
    learning = runtime.get("seccomp_learn")
    if learning and wait_for_learning:
        from ocirt.linux.seccomp_learn import wait_for_recorder

        if not wait_for_recorder(learning, RECORDER_TIMEOUT):
            log.warning(f"--seccomp-learn: processes of {container.id!r} still use its filter: "
                        f"{learning.get('profile')} is written when the last one exits")
    container.remove()
    log.trace("delete", "state of %s removed", container.id)


# How long delete and run wait for a learning container's recorder to write its profile.
RECORDER_TIMEOUT = 10.0


# -- exec -----------------------------------------------------------------------------------------------------
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
            from ocirt.linux.seccomp import compile_filter

            seccomp = compile_filter(linux["seccomp"], cache_dir=_cache_dir(bool(container.runtime.get("rootless"))))
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
            _write_pid_file(opts.pid_file, spawned.pid)
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
    return _wait_foreground(spawned)


def _kill_exec_process(pid: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)  # ours in the foreground (a subreaper), someone else's when detached
    except (ProcessLookupError, ChildProcessError):
        pass


def _wait_foreground(spawned) -> int:
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
    _reap_orphans()
    return 128 - code if code < 0 else code


# -- run ------------------------------------------------------------------------------------------------------
FORWARDED_SIGNALS = (1, 2, 3, 10, 12, 15, 28)


def run(opts: CreateOptions, *, keep: bool = False) -> int:
    """create + start; in the foreground, wait and return the process's exit code (128+signal if killed).

    A foreground run ends the container when its caller dies (the caller can no longer stop it or read
    its status): the init dies with this process (see linux/init.py), and this process learns of its
    caller's death and kills the init. `--detach` is for containers meant to outlive their caller."""
    from ocirt import syscalls as sc

    watch = None
    if not opts.detach:
        # The init is the intermediate's child: becoming a subreaper makes it ours when the intermediate exits.
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        watch = CallerWatch()
    spawned = create(opts, for_run=True)
    try:
        if watch is not None and watch.gone:
            raise OcirtError(f"container {opts.container_id!r} not started: the caller of run has exited")
        start(opts.root, opts.container_id)
    except BaseException:
        if not opts.detach:
            _cleanup_after_run(opts)
        raise
    if watch is None:
        return 0
    watch.on_gone = lambda: _kill_pid(spawned.pid)
    exit_code = _wait_foreground(spawned)
    watch.on_gone = None
    if spawned.recorder is None:
        if not keep:
            _cleanup_after_run(opts)
        return exit_code
    return _finish_learning_run(opts, spawned.recorder, exit_code, keep)


def _finish_learning_run(opts: CreateOptions, recorder, exit_code: int, keep: bool) -> int:
    """The recorder writes the profile once no process uses the filter: every zombie reaped, which is
    this process's job (the init's children come to it, the subreaper). What remains alive after the
    program's end (a container without a pid namespace) goes with the container's deletion."""
    try:
        result = recorder.result(1.0, reap=_reap_orphans)
    finally:
        if not keep:
            _cleanup_after_run(opts, wait_for_learning=False)
    if result is None and not keep:
        result = recorder.result(RECORDER_TIMEOUT, reap=_reap_orphans)
    learn = opts.seccomp_learn
    if result is None:
        learn.summary = (f"processes of {opts.container_id!r} still use its filter: {learn.profile} is "
                         "written when the last one exits")
        log.warning(f"--seccomp-learn: {learn.summary}")
        return exit_code
    if not result.ok:
        raise OcirtError(f"--seccomp-learn: {result.message}", exit_code=exit_code or 1)
    learn.summary = result.message
    log.info(f"seccomp-learn: {result.message}")
    log.debug(f"seccomp-learn: {result.notifications} syscalls recorded; the runtime's after loading the "
              f"filter: {' '.join(result.runtime) or 'none'}")
    return exit_code


# A real-time signal that nothing forwards to the container: the kernel also sends a parent-death signal
# when only the thread that forked us exits, and such a stray signal must not reach the container.
CALLER_GONE_SIGNAL = 64  # SIGRTMAX


class CallerWatch:
    """Learn, through PR_SET_PDEATHSIG, that the process which started this one has died (a job's
    `/bin/sh -c` wrapper killed by Slurm, a shell that exited). The signal only counts if the parent
    has really changed."""

    def __init__(self) -> None:
        import _signal

        from ocirt import syscalls as sc

        self.caller = os.getppid()
        self.gone = False
        self.on_gone = None
        _signal.signal(CALLER_GONE_SIGNAL, self._signalled)
        sc.prctl(sc.PR_SET_PDEATHSIG, CALLER_GONE_SIGNAL)
        if os.getppid() != self.caller:
            # Died before the prctl: no signal will come.
            self._signalled(CALLER_GONE_SIGNAL, None)

    def _signalled(self, _signum, _frame) -> None:
        if os.getppid() == self.caller:
            return
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    @property
    def on_gone(self):
        return self._on_gone

    @on_gone.setter
    def on_gone(self, action) -> None:
        self._on_gone = action
        if action is not None and self.gone:
            action()


def _kill_pid(pid: int) -> None:
    # The init is our child until we reap it, so its pid cannot have been reused.
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _cleanup_after_run(opts: CreateOptions, *, wait_for_learning: bool = True) -> None:
    try:
        delete(opts.root, opts.container_id, force=True, wait_for_learning=wait_for_learning)
    except OcirtError as err:
        log.warning(f"cleanup after run: {err}")
