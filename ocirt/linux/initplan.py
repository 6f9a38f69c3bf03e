"""create's planner: a validated config.json, read once in the runtime, becomes the plan the forked init applies.

``plan_init`` reads the config in the order the init applies it: what the caller's environment adds to the
config (systemd's notify socket, socket-activation fds), the namespaces, the process and its labels, the
rootfs, network devices, the seccomp filter, hostname, sysctls, id maps and hooks. Every refusal of the
config happens there, before anything exists, so a bad config leaves nothing behind. One part waits:
cgroup mounts show the container's own cgroup directories, which the cgroup manager chooses only once the
state directory exists; ``plan_mounts`` completes the plan then. container.py does the rest, which is
ordering: state, cgroups, hooks and the spawn.

Nothing can be imported after pivot_root: ``preload`` imports what the init will run, before the fork.
"""

from __future__ import annotations

import os

from ocirt import log
from ocirt.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ocirt.cgroups.manager import Manager
    from ocirt.container import CreateOptions
    from ocirt.linux.rootfs import RootfsPlan


class InitPlan:
    """What the init needs, parsed in the runtime before the fork (nothing can be imported after pivot_root).

    container.py fills in what only exists once the state directory and cgroups do: ``cgroup``,
    ``fifo_path``, ``fifo_group``, ``hook_state``, ``close_in_child`` and ``on_init_pid``."""

    def __init__(self, *, config: dict, bundle: str, container_id: str, rootless: bool, namespaces, rootfs,
                 process, seccomp, console_socket: str | None, preserve_fds: int, no_new_keyring: bool,
                 relay_console: bool, die_with_runtime: bool = False, no_pivot: bool = False,
                 net_devices: dict | None = None):
        linux = config.get("linux") or {}
        self.config = config
        self.bundle = bundle
        self.container_id = container_id
        self.rootless = rootless
        self.namespaces = namespaces
        self.uid_mappings = list(linux.get("uidMappings") or [])
        self.gid_mappings = list(linux.get("gidMappings") or [])
        self.time_offsets = linux.get("timeOffsets") or {}
        self.cgroup: Manager | None = None
        # The rootfs' path as the config gives it (the state's "rootfs"); ``rootfs`` is its mount plan,
        # made by plan_mounts.
        self.rootfs_path = rootfs
        self.rootfs: RootfsPlan
        self.no_pivot = no_pivot
        # linux.netDevices, moved into the network namespace by the runtime once the init exists.
        self.net_devices = net_devices
        self.hostname = config.get("hostname")
        self.domainname = config.get("domainname")
        self.sysctl = dict(linux.get("sysctl") or {})
        _check_sysctl(self.sysctl, namespaces)
        hooks = config.get("hooks") or {}
        self.create_container_hooks = list(hooks.get("createContainer") or [])
        self.start_container_hooks = list(hooks.get("startContainer") or [])
        self.hook_state: dict = {}
        # None when the config has no process: the init sets everything up, then waits for a start that
        # will refuse.
        self.process = process
        # setgroups(2) is denied in a user namespace whose single-id map the user wrote itself.
        self.setgroups_allowed = not (rootless and namespaces.has("user") and "user" in namespaces.new
                                      and _single_own_map(self))
        self.seccomp = seccomp
        self.no_new_keyring = no_new_keyring
        self.console_socket = console_socket
        self.relay_console = relay_console and process is not None and process.terminal and not console_socket
        self.preserve_fds = preserve_fds
        # A foreground `run`: the container must not outlive the runtime that waits for it.
        self.die_with_runtime = die_with_runtime
        self.fifo_path = ""
        self.fifo_fd = -1
        # The gid the init gives the fifo before its user switch, when the runtime may not (rootless).
        self.fifo_group: int | None = None
        # Called with the init's pid and start time as soon as they are known, before the init may go on.
        self.on_init_pid: Callable[[int, int], None] | None = None
        # fds of the runtime that the init must not keep: the state lock would block every later command.
        self.close_in_child: list[int] = []


def plan_init(config: dict, opts: CreateOptions, *, for_run: bool = False) -> InitPlan:
    """Everything the init will do, checked against this host, before the runtime makes anything."""
    from ocirt.linux import namespaces
    from ocirt.linux.process import ProcessPlan

    pass_notify_socket(config)
    linux = config.get("linux") or {}
    ns_plan = namespaces.plan_namespaces(config)
    if opts.listen_fds and "pid" in ns_plan.new:
        pass_listen_fds(config, opts.listen_fds)
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
    rootfs_path = rootfs_path_of(config, opts.bundle)
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
        from ocirt.linux.seccomp import cache_dir, compile_filter

        seccomp = compile_filter(linux["seccomp"], cache_dir=cache_dir(opts.rootless))
        log.trace("seccomp", "BPF program ready (from the cache: %s)", seccomp.from_cache)
    return InitPlan(config=config, bundle=opts.bundle, container_id=opts.container_id, rootless=opts.rootless,
                    namespaces=ns_plan, rootfs=rootfs_path, process=process_plan, seccomp=seccomp,
                    console_socket=opts.console_socket, preserve_fds=opts.preserve_fds,
                    no_new_keyring=opts.no_new_keyring, relay_console=opts.relay_console,
                    die_with_runtime=not opts.detach, no_pivot=opts.no_pivot, net_devices=net_devices or None)


def plan_mounts(plan: InitPlan, cgroup_paths: dict[str, str]) -> None:
    """The rootfs' mounts, devices, masked and read-only paths; cgroup mounts show ``cgroup_paths``."""
    from ocirt.linux.rootfs import plan_rootfs

    plan.rootfs = plan_rootfs(plan.config, plan.bundle, rootless=plan.rootless, no_pivot=plan.no_pivot,
                              cgroup_paths=cgroup_paths)
    log.trace("plan", "mounts of rootfs %s planned", plan.rootfs_path)


def rootfs_path_of(config: dict, bundle: str) -> str:
    """root.path, relative to the bundle unless absolute (config.md)."""
    path = (config.get("root") or {}).get("path")
    if not path:
        raise ConfigError("root.path is not set")
    return path if os.path.isabs(path) else os.path.join(bundle, path)


# -- what the caller's environment adds to the config -------------------------------------------------------
NOTIFY_SOCKET_IN_CONTAINER = "/run/notify/notify.sock"


def pass_notify_socket(config: dict) -> None:
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


def pass_listen_fds(config: dict, count: int) -> None:
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


# -- the parts of the plan --------------------------------------------------------------------------------
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


_IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                          "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})


_PROC_NS_NAMES = {"ipc": "ipc", "network": "net", "uts": "uts"}


def _check_sysctl(sysctl: dict, namespaces) -> None:
    """Only sysctls of a namespace the container has: any other is the host's own setting (a config's
    kernel.core_pattern would run a program as the host's root on the next crash)."""
    for key in sysctl:
        parts = str(key).replace("/", ".").split(".")
        if not all(parts):
            raise ConfigError(f"$.linux.sysctl: malformed name {key!r}")
        name = ".".join(parts)
        if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            kind = "ipc"
        elif name.startswith("net."):
            kind = "network"
        elif name == "kernel.hostname":
            # As runc and crun: the config's hostname field is the one way to set it.
            raise ConfigError(f"$.linux.sysctl: {key!r} conflicts with the hostname field: set hostname "
                              "instead")
        elif name == "kernel.domainname":
            kind = "uts"
        else:
            raise ConfigError(f"$.linux.sysctl: {key!r} is not namespaced: setting it would change the host")
        if not namespaces.has(kind):
            raise ConfigError(f"$.linux.sysctl: {key!r} needs a {kind} namespace of the container's own")
        path = namespaces.join.get(kind)
        if path is not None and _same_namespace(path, _PROC_NS_NAMES[kind]):
            # runc refuses this for the network namespace; the same holds for the other two.
            raise ConfigError(f"$.linux.sysctl: {key!r}: the {kind} namespace {path} is the runtime's own: "
                              "setting it would change the host")


def _same_namespace(path: str, proc_name: str) -> bool:
    try:
        theirs = os.stat(path)
        ours = os.stat(f"/proc/self/ns/{proc_name}")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _single_own_map(plan: InitPlan) -> bool:
    from ocirt.linux.idmap import is_own_single_map

    return is_own_single_map(plan.uid_mappings, plan.gid_mappings, os.geteuid(), os.getegid())


def check_realtime_runtime(process_plan, cgroup) -> None:
    """SCHED_FIFO and SCHED_RR fail (EPERM) in a v1 cpu cgroup without real-time runtime, which is what a
    new cgroup gets with real-time group scheduling: say so before any process exists."""
    from ocirt.linux.process import REALTIME_POLICIES

    if process_plan.scheduler is None or process_plan.scheduler.sched_policy not in REALTIME_POLICIES:
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
        raise ConfigError(f"$.process.scheduler.policy: {process_plan.scheduler_policy} needs real-time runtime, "
                          "and the container's cpu cgroup has none (cpu.rt_runtime_us is 0): set "
                          "linux.resources.cpu.realtimeRuntime (and realtimePeriod)")


# -- before the fork ----------------------------------------------------------------------------------------
def preload(plan: InitPlan) -> None:
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
