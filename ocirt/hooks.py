"""The six hook kinds of the spec, run with the container's state JSON on stdin.

Where each kind runs, and what its failure does (config.md "POSIX-platform Hooks"):
  prestart, createRuntime  - in the runtime namespace during create; a failure fails create.
  createContainer          - in the container namespace during create, before pivot_root; fails create.
  startContainer           - in the container, during start, before the user process; fails start.
  poststart                - in the runtime namespace after the process started; a failure is logged only,
                             and the hooks after it still run.
  poststop                 - in the runtime namespace during delete; the same.
"""

from __future__ import annotations

import os
import time

from ocirt import log
from ocirt.errors import HookError, why

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def hooks_of(config: dict, kind: str) -> list[dict]:
    return list((config.get("hooks") or {}).get(kind) or [])


def run_hooks(hooks: list[dict], kind: str, state: dict, env: list[str] | None = None) -> None:
    """Run each hook in order; raise HookError for the first that fails.

    A hook without ``env`` of its own gets ``env`` (the container process's, for the hooks that run in the
    init), else the runtime's environment, as runc does."""
    if not hooks:
        return
    from ocirt.fastjson import dumps

    payload = dumps(state).encode()
    for i, hook in enumerate(hooks):
        _run_one(hook, kind, i, payload, env)


def run_hooks_logged(hooks: list[dict], kind: str, state: dict) -> None:
    """poststart and poststop: the spec says a failing hook is logged as a warning, "but the remaining
    hooks and lifecycle continue as if the hook had succeeded"."""
    if not hooks:
        return
    from ocirt.fastjson import dumps

    payload = dumps(state).encode()
    for i, hook in enumerate(hooks):
        try:
            _run_one(hook, kind, i, payload, None)
        except HookError as err:
            log.warning(str(err))


def _run_one(hook: dict, kind: str, index: int, payload: bytes, inherited: list[str] | None) -> None:
    path = hook["path"]
    args = hook.get("args") or [path]
    own = hook.get("env")
    if own is not None:
        env = _env_dict(own)  # exactly these, even none at all
    elif inherited is not None:
        env = _env_dict(inherited)
    else:
        env = _runtime_environment()
    timeout = hook.get("timeout")
    what = f"{kind} hook #{index} ({path})"
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as err:
        raise HookError(f"{what}: cannot fork: {why(err)}") from None
    if pid == 0:
        try:
            os.dup2(stdin_r, 0)
            os.dup2(err_w, 2)
            os.execve(path, args, env)
        except OSError as err:
            os.write(2, f"{why(err)}".encode())
        except BaseException as err:  # noqa: BLE001 - the forked child must never unwind into the runtime
            # execve's ValueError: an empty args[0], or a NUL byte in an argument or variable.
            os.write(2, str(err).encode(errors="replace"))
        os._exit(127)
    os.close(stdin_r)
    os.close(err_w)
    try:
        os.write(stdin_w, payload)
    except BrokenPipeError:
        pass
    finally:
        os.close(stdin_w)
    status = _wait(pid, timeout, what)
    log.trace("hooks", "%s: exit status %d", what, status)
    stderr = b""
    # A daemon the hook left behind may still hold the pipe: take what is there, never wait for EOF.
    os.set_blocking(err_r, False)
    try:
        stderr = os.read(err_r, 4096)
    except BlockingIOError:
        pass
    finally:
        os.close(err_r)
    if status != 0:
        detail = stderr.decode(errors="replace").strip().replace("\n", " ")
        reason = f"exit status {status}" if status > 0 else f"killed by signal {-status}"
        raise HookError(f"{what} failed: {reason}{': ' + detail if detail else ''}")


def _runtime_environment() -> dict[str, str]:
    """The environment the runtime was started with. Not os.environ: Python's C-locale coercion adds
    LC_CTYPE=C.UTF-8 to that at start-up, which runc's hooks never see; /proc/self/environ holds what
    execve gave us."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    return _env_dict([entry.decode(errors="surrogateescape") for entry in raw.split(b"\0") if entry])


def _env_dict(env: list[str]) -> dict[str, str]:
    out = {}
    for entry in env:
        key, _, value = entry.partition("=")
        out[key] = value
    return out


def _wait(pid: int, timeout: int | None, what: str) -> int:
    if not timeout:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise HookError(f"{what} timed out after {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
