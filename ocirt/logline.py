"""The lines of ocirt.log as runc (logrus) writes them, and appending them to the --log file.

Apart from ocirt.log so that a command that logs nothing, or only to stderr, does not load it. It imports
nothing of ocirt's but fastjson, for the JSON format.
"""

from __future__ import annotations

import os
import sys
import time


def timestamp() -> str:
    now = time.time()
    offset = time.localtime(now).tm_gmtoff
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset)
    frac = f"{now % 1:.9f}"[1:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + frac + \
        (f"{sign}{offset // 3600:02d}:{offset % 3600 // 60:02d}" if offset or sign == "-" else "Z")


_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/@^+")


def quote(text: str) -> str:
    """A value as logrus's text format writes it: bare when it is plain, else quoted and escaped."""
    if text and all(char in _BARE for char in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_line(level: str, msg: str, fields: dict | None, as_json: bool) -> str:
    """One line of runc's (logrus's) formats: JSON with sorted keys, or text with time, level and msg
    first and the other fields after them, sorted."""
    if as_json:
        from ocirt.fastjson import dumps

        record = {"level": level, "msg": msg, "time": timestamp()}
        if fields:
            record.update(fields)
        return dumps(dict(sorted(record.items()))) + "\n"
    extra = "".join(f" {key}={value if isinstance(value, (int, float)) else quote(str(value))}"
                    for key, value in sorted(fields.items())) if fields else ""
    return f"time={quote(timestamp())} level={level} msg={quote(msg)}{extra}\n"


def append(path: str | None, line: str) -> bool:
    """Append a line to the log file; False when there is none or it cannot be opened."""
    if not path:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return True


def trace_line(config, step: str, msg: str) -> None:
    """Write a trace line with its timing: ``ms`` since the previous one, ``total_ms`` since configure."""
    now = time.monotonic()
    fields = {"ms": round((now - config.last) * 1000, 3), "step": step,
              "total_ms": round((now - config.started) * 1000, 3)}
    config.last = now
    line = format_line("debug", f"{step}: {msg}", fields, config.json)
    if not append(config.path, line) and not config.quiet_stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
