"""update, pause, resume, ps and events: resource control of a live container, over ocirt.control."""

from __future__ import annotations

import os
import sys

from ocirt.cli.container import state_root
from ocirt.errors import OcirtError, why

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
    from ocirt.control import parse_resources, update

    container_id = positional[0]
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
    from ocirt.control import pause

    pause(state_root(opts), positional[0])


def cmd_resume(opts, cmd, positional):
    from ocirt.control import resume

    resume(state_root(opts), positional[0])


def cmd_ps(opts, cmd, positional):
    from ocirt import log
    from ocirt.control import processes, ps_table

    # What ps prints on stderr is read by containerd with its stdout: warnings stay out of it.
    log.config.quiet_stderr = True
    container_id, ps_args = positional[0], positional[1:]
    if ps_args[:1] == ["--"]:
        ps_args = ps_args[1:]
    fmt = cmd.get("format", "table")
    if fmt not in ("table", "json"):
        raise OcirtError(f"invalid --format {fmt!r}: use table or json")
    if fmt == "json" and ps_args:
        raise OcirtError("ps options cannot be combined with --format json")
    pids = processes(state_root(opts), container_id)
    if fmt == "json":
        from ocirt.fastjson import dumps

        sys.stdout.write(dumps(pids) + "\n")
    else:
        sys.stdout.write(ps_table(pids, ps_args))


def cmd_events(opts, cmd, positional):
    from ocirt.control import container_stats, parse_duration, stream_events
    from ocirt.fastjson import dumps

    container_id = positional[0]
    interval = parse_duration(cmd.get("interval", "5s"))
    if interval <= 0:
        raise OcirtError("--interval must be greater than 0")
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
