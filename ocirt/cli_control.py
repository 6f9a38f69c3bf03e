"""The command-line tables of update, pause, resume, ps, events and `cgroup delegate|undelegate`.

`ocirt.cli` merges these tables at import, so this module stays import-free: every handler imports
what it needs when it runs.
"""

from __future__ import annotations

import os
import sys

from ocirt.errors import why

# flag -> (destination, takes a value), runc's names; --cpu-shares is accepted beside runc's --cpu-share.
_UPDATE = {
    "--resources": ("resources", True), "-r": ("resources", True),
    "--memory": ("memory", True), "--memory-swap": ("memory_swap", True),
    "--memory-reservation": ("memory_reservation", True),
    "--kernel-memory": ("kernel_memory", True), "--kernel-memory-tcp": ("kernel_memory_tcp", True),
    "--cpu-share": ("cpu_shares", True), "--cpu-shares": ("cpu_shares", True),
    "--cpu-quota": ("cpu_quota", True), "--cpu-period": ("cpu_period", True), "--cpu-burst": ("cpu_burst", True),
    "--cpu-rt-runtime": ("cpu_rt_runtime", True), "--cpu-rt-period": ("cpu_rt_period", True),
    "--cpu-idle": ("cpu_idle", True),
    "--cpuset-cpus": ("cpuset_cpus", True), "--cpuset-mems": ("cpuset_mems", True),
    "--pids-limit": ("pids_limit", True), "--blkio-weight": ("blkio_weight", True),
    "--l3-cache-schema": ("l3_cache_schema", True), "--mem-bw-schema": ("mem_bw_schema", True),
}
_PS = {"--format": ("format", True), "-f": ("format", True)}
_CGROUP = {"--user": ("user", True), "-u": ("user", True), "--controllers": ("controllers", True),
           "--path": ("path", True)}

COMMANDS: dict[str, tuple[dict, str]] = {
    "update": (_UPDATE, "ID"),
    "pause": ({}, "ID"),
    "resume": ({}, "ID"),
    "ps": (_PS, "ID [-- ps options]"),
    "events": ({"--stats": ("stats", False), "--interval": ("interval", True)}, "ID"),
    "cgroup": (_CGROUP, "delegate|undelegate --user NAME [--controllers LIST] [--path PATH]"),
}
RAW_ARGS = {"ps"}

# (flag, section, field, how to parse it)
_SIZE, _INT, _UINT, _TEXT = "size", "int", "uint", "text"
_UPDATE_FLAGS = (
    ("memory", "memory", "limit", _SIZE), ("memory_swap", "memory", "swap", _SIZE),
    ("memory_reservation", "memory", "reservation", _SIZE),
    ("cpu_shares", "cpu", "shares", _UINT), ("cpu_period", "cpu", "period", _UINT),
    ("cpu_quota", "cpu", "quota", _INT), ("cpu_burst", "cpu", "burst", _UINT),
    ("cpu_rt_period", "cpu", "realtimePeriod", _UINT), ("cpu_rt_runtime", "cpu", "realtimeRuntime", _INT),
    ("cpu_idle", "cpu", "idle", _INT),
    ("cpuset_cpus", "cpu", "cpus", _TEXT), ("cpuset_mems", "cpu", "mems", _TEXT),
    ("pids_limit", "pids", "limit", _INT), ("blkio_weight", "blockIO", "weight", _INT),
)
# Zero is "unset" for these flags, as in runc; burst and idle are applied even when 0.
_ZERO_IS_VALUE = {"cpu_burst", "cpu_idle"}


def _flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _resources_from_flags(cmd: dict) -> dict:
    from ocirt.control import parse_integer, ram_in_bytes

    resources: dict = {}
    for dest, section, field, kind in _UPDATE_FLAGS:
        text = cmd.get(dest)
        if text is None or text == "":
            continue
        flag = _flag_name(dest)
        if kind == _SIZE:
            value: int | str = ram_in_bytes(text, flag)
        elif kind == _TEXT:
            value = text
        else:
            value = parse_integer(text, flag, unsigned=kind == _UINT)
        if value == 0 and dest not in _ZERO_IS_VALUE:
            continue
        resources.setdefault(section, {})[field] = value
    return resources


def cmd_update(opts, cmd, positional):
    from ocirt import log
    from ocirt.cli import one_id, state_root
    from ocirt.control import parse_resources, update
    from ocirt.errors import OcirtError

    container_id = one_id(positional, "update")
    for flag in ("l3_cache_schema", "mem_bw_schema"):
        if cmd.get(flag):
            raise OcirtError(f"{_flag_name(flag)}: Intel RDT is not supported by ocirt")
    source = cmd.get("resources")
    if source:
        ignored = [_flag_name(k) for k in cmd if k != "resources"]
        if ignored:
            log.warning(f"{', '.join(sorted(ignored))} ignored: --resources gives every value")
        if source == "-":
            text = sys.stdin.buffer.read()
            name = "standard input"
        else:
            try:
                with open(source, "rb") as handle:
                    text = handle.read()
            except OSError as err:
                raise OcirtError(f"cannot read --resources {source}: {why(err)}") \
                    from None
            name = source
        resources = parse_resources(text, name)
    else:
        for flag in ("kernel_memory", "kernel_memory_tcp"):
            if cmd.get(flag):
                log.warning(f"{_flag_name(flag)} is ignored: the kernel no longer supports kernel memory limits")
        resources = _resources_from_flags(cmd)
    update(state_root(opts), container_id, resources)


def cmd_pause(opts, cmd, positional):
    from ocirt.cli import one_id, state_root
    from ocirt.control import pause

    pause(state_root(opts), one_id(positional, "pause"))


def cmd_resume(opts, cmd, positional):
    from ocirt.cli import one_id, state_root
    from ocirt.control import resume

    resume(state_root(opts), one_id(positional, "resume"))


def cmd_ps(opts, cmd, positional):
    from ocirt import cli
    from ocirt.control import processes, ps_table

    # Flags stop at the id: everything after it belongs to ps (runc's `ps ID [ps options]`).
    args = cli.parse(positional, _PS, cmd, stop_at_positional=True)
    for key in ("root", "log", "log_format", "debug", "rootless"):
        if key in cmd:
            opts[key] = cmd.pop(key)
    if opts.get("log") or opts.get("debug"):
        from ocirt import log

        log.configure(opts.get("log"), opts.get("log_format", "text"), bool(opts.get("debug")))
    if not args:
        raise cli.UsageError(f"ps: requires a container id: {COMMANDS['ps'][1]}")
    container_id, ps_args = args[0], args[1:]
    if ps_args[:1] == ["--"]:
        ps_args = ps_args[1:]
    fmt = cmd.get("format", "table")
    if fmt not in ("table", "json"):
        raise cli.UsageError(f"invalid --format {fmt!r}: use table or json")
    if fmt == "json" and ps_args:
        raise cli.UsageError("ps options cannot be combined with --format json")
    pids = processes(cli.state_root(opts), container_id)
    if fmt == "json":
        from ocirt.fastjson import dumps

        sys.stdout.write(dumps(pids) + "\n")
    else:
        sys.stdout.write(ps_table(pids, ps_args))


def cmd_events(opts, cmd, positional):
    from ocirt.cli import UsageError, one_id, state_root
    from ocirt.control import container_stats, parse_duration, stream_events
    from ocirt.fastjson import dumps

    container_id = one_id(positional, "events")
    interval = parse_duration(cmd.get("interval", "5s"))
    if interval <= 0:
        raise UsageError("--interval must be greater than 0")
    root = state_root(opts)

    def emit(event: dict) -> None:
        sys.stdout.write(dumps(event) + "\n")
        sys.stdout.flush()

    try:
        if cmd.get("stats"):
            emit(container_stats(root, container_id))
        else:
            stream_events(root, container_id, interval, emit)
    except BrokenPipeError:
        # The reader went away: that ends the stream, it is not an error. What is still buffered must not
        # fail again in the flush at exit, so stdout now leads nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def cmd_cgroup(opts, cmd, positional):
    from ocirt.cli import UsageError
    from ocirt.errors import OcirtError

    usage = f"usage: ocirt cgroup {COMMANDS['cgroup'][1]}"
    if len(positional) != 1 or positional[0] not in ("delegate", "undelegate"):
        raise UsageError(f"cgroup: expected `delegate` or `undelegate`; {usage}")
    action = positional[0]
    user = cmd.get("user")
    if not user:
        raise UsageError(f"cgroup {action}: --user is required; {usage}")
    if os.geteuid() != 0:
        raise OcirtError(f"cgroup {action}: only root can change cgroup ownership; run it as root "
                         f"(e.g. `sudo ocirt cgroup {action} --user {user}`)")
    controllers = None
    if cmd.get("controllers"):
        controllers = [item.strip() for item in cmd["controllers"].split(",") if item.strip()]
        if not controllers:
            raise UsageError(f"cgroup {action}: --controllers needs a comma-separated list")
    from ocirt.cgroups import delegate as delegation

    if action == "delegate":
        directories = delegation.delegate(user, controllers, cmd.get("path"))
    else:
        directories = delegation.undelegate(user, controllers, cmd.get("path"))
    for directory in directories:
        print(directory)


HANDLERS = {
    "update": cmd_update, "pause": cmd_pause, "resume": cmd_resume, "ps": cmd_ps, "events": cmd_events,
    "cgroup": cmd_cgroup,
}
