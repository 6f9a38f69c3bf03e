"""runc's logging conventions without the cost of ``logging`` (about 18 ms to import here).

``--log FILE`` appends one line per message; ``--log-format json`` makes each line
``{"level":"error","msg":"...","time":"<RFC 3339>"}``, which containerd's shim reads back for the error it
reports. Without ``--log``, messages at warning level and above go to stderr — except on commands whose
stderr is parsed by a caller (``ps --format json``), which set ``quiet_stderr``.

``--debug`` turns on ``trace(step, message, *args)``: one debug line per lifecycle step, with the
milliseconds since the previous line (``ms``) and since the command began (``total_ms``), to the log or,
without ``--log``, to stderr. Off, a trace point is one call that returns at once: callers pass the
message's arguments unformatted, so no string is built. A forked child of the runtime (the intermediate,
the container's init) cannot reach the log after pivot_root and must not write to the container's
stderr, so it ``relay``s its lines over its channel to the runtime, which logs them as they arrive.
"""

from __future__ import annotations

import os
import sys

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_DEBUG = 10


class _Config:
    path: str | None = None
    json: bool = False
    threshold: int = LEVELS["info"]
    quiet_stderr: bool = False
    started: float = 0.0
    last: float = 0.0
    # In a forked child: a function that takes (kind, payload) and sends it to the runtime.
    relay = None


config = _Config()


def configure(path: str | None, log_format: str = "text", debug: bool = False) -> None:
    config.path = path or None
    config.json = log_format == "json"
    if debug and config.threshold > _DEBUG:
        import time

        config.started = config.last = time.monotonic()
    config.threshold = _DEBUG if debug else LEVELS["info"]
    if config.path:
        # Like runc, the log exists once the command has begun, even when nothing is logged.
        try:
            os.close(os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
        except OSError:
            pass


def relay_to(send) -> None:
    """In a forked child: every line logged from now on goes to ``send(kind, payload)`` instead."""
    config.relay = send


def log(level: str, msg: str, *args, fields: dict | None = None) -> None:
    """``fields`` go into the log line as keys of their own (an error's op, path, errno and hint)."""
    if LEVELS[level] < config.threshold:
        return
    if args:
        msg = msg % args
    if config.relay is not None and level != "error":
        try:
            config.relay("log", f"{level} {msg}")
            return
        except OSError:
            pass  # the channel is closed (after the ready handshake): log as the runtime would
    if config.path or level == "debug":
        from ocirt import logline

        line = logline.format_line(level, msg, fields, config.json)
        if logline.append(config.path, line) and level != "error":
            return
        if level == "debug":
            if not config.quiet_stderr:
                sys.stderr.write(line)
                sys.stderr.flush()
            return
    # Errors always reach stderr too: the engines and people read them there.
    if LEVELS[level] >= LEVELS["warning"] and not (config.quiet_stderr and level != "error"):
        sys.stderr.write(f"ocirt: {msg}\n" if level == "error" else f"ocirt: {level}: {msg}\n")
        sys.stderr.flush()


def debug(msg: str, *args) -> None:
    log("debug", msg, *args)


def info(msg: str, *args) -> None:
    log("info", msg, *args)


def warning(msg: str, *args) -> None:
    log("warning", msg, *args)


def error(msg: str, *args, fields: dict | None = None) -> None:
    log("error", msg, *args, fields=fields)


def trace(step: str, msg: str, *args) -> None:
    """A lifecycle step just ended: ``step`` names it (config, cgroups, namespaces, mounts, seccomp, hooks,
    fifo, exit, ...), ``msg % args`` says what it did. Free when --debug is off: an argument that is a
    function (a bound method, say) is called only then, so nothing is computed for a line not written."""
    if config.threshold > _DEBUG:
        return
    if args:
        msg = msg % tuple(arg() if callable(arg) else arg for arg in args)
    if config.relay is not None:
        try:
            config.relay("trace", f"{step} {msg}")
        except OSError:
            pass  # the channel is closed: a child has nowhere else to write (its stderr is the container's)
        return
    traced(step, msg)


def traced(step: str, msg: str) -> None:
    """Log a trace line now, timed on this process's clock (the runtime logs its children's lines so)."""
    from ocirt import logline

    logline.trace_line(config, step, msg)


def relayed(kind: str, payload: str) -> None:
    """Log a line a child relayed: ``trace`` lines are timed on arrival, ``log`` lines keep their level."""
    if kind == "trace":
        step, _, msg = payload.partition(" ")
        traced(step, msg)
    else:
        level, _, msg = payload.partition(" ")
        if level in LEVELS:
            log(level, msg)
