"""Run a function in a forked child, so what it does to its process (seccomp filters, capabilities,
uid switches) never touches the pytest process. The child reports through a pipe, the parent reaps it."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ChildResult:
    status: int  # as from waitpid
    value: Any = None  # what the function returned (JSON-able), when it returned
    error: str | None = None  # "Type: message" of what it raised, when it raised

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    def ok(self) -> Any:
        """The returned value; fails the test with the child's traceback if it did not return."""
        assert self.error is None, self.error
        assert self.exit_code == 0, f"child ended with status {self.status:#x} (signal {self.signal})"
        return self.value


def run_forked(function: Callable[..., Any], *args: Any, timeout: float = 20.0,
               while_running: Callable[[int], Any] | None = None) -> ChildResult:
    """Fork; the child runs ``function(*args)`` and exits. ``while_running(pid)`` runs in the parent
    meanwhile (e.g. to answer a seccomp agent's socket) and must return before the child can finish."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 0
        try:
            # A child killed by SIGSYS on purpose must not leave a core file behind.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            report: dict[str, Any] = {"value": function(*args)}
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            report = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
            code = 1
        try:
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        if while_running is not None:
            while_running(pid)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                raise AssertionError(f"child {pid} did not finish within {timeout} s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    result = ChildResult(status)
    if chunks:
        report = json.loads(b"".join(chunks))
        result.value = report.get("value")
        result.error = report.get("error")
    return result
