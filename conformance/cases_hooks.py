"""hooks: the six kinds, their order, the state on stdin, env and args, timeouts, and what a failure does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conformance.harness import CaseContext, case, check

ORDER = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
IN_CONTAINER_LOG = "/hooklog"


def _hook_log(ctx: CaseContext) -> Path:
    log = ctx.host_dir("hooks")
    ctx.rootfs_dir(IN_CONTAINER_LOG)
    ctx.bind(log, IN_CONTAINER_LOG, ["rbind", "rw"])
    return log


def recording_hook(ctx: CaseContext, kind: str, log: Path, extra: str = "") -> dict:
    """A hook that saves its stdin and appends its kind to the order file.

    startContainer's path resolves in the container, so it uses the container's shell and the bind-mounted
    log; every other kind resolves its path on the host."""
    where = IN_CONTAINER_LOG if kind == "startContainer" else str(log)
    script = f"cat > {where}/{kind}.json; {extra}echo {kind} >> {where}/order"
    return {"path": "/bin/sh", "args": ["sh", "-c", script]}


def failing_hook() -> dict:
    return {"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}


def _marker_args(log: Path) -> tuple[list[str], Path]:
    return ["sh", "-c", f"touch {IN_CONTAINER_LOG}/process-ran; exec sleep 30"], log / "process-ran"


def _not_running(ctx: CaseContext, container_id: str) -> bool:
    state = ctx.call(["state", container_id])
    if state.returncode != 0:
        return True
    try:
        return json.loads(state.stdout).get("status") in ("stopped", None)
    except ValueError:
        return False


@case("hooks_order", "config.md#posix-platform-hooks",
      "hooks run in lifecycle order: prestart, createRuntime, createContainer, startContainer, poststart, poststop")
def hooks_order(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    ctx.config["hooks"] = {kind: [recording_hook(ctx, kind, log)] for kind in ORDER}
    # A slow startContainer hook turns a runtime that does not wait for it before poststart from a race
    # into a reliable failure.
    ctx.config["hooks"]["startContainer"] = [recording_hook(ctx, "startContainer", log, extra="sleep 0.3; ")]
    result = ctx.run(["true"])
    check(result.returncode == 0, f"run with hooks failed: {result.describe()}")
    order_file = log / "order"
    order = order_file.read_text().split() if order_file.exists() else []
    check(order == ORDER, f"hooks ran as {order}, expected {ORDER}")


@case("hooks_state_on_stdin", "runtime.md#lifecycle",
      "every hook receives the container state JSON (with id and bundle) on stdin")
def hooks_state_on_stdin(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    ctx.config["hooks"] = {kind: [recording_hook(ctx, kind, log)] for kind in ORDER}
    result = ctx.run(["true"])
    check(result.returncode == 0, f"run with hooks failed: {result.describe()}")
    container_id = ctx.last_id
    for kind in ORDER:
        path = log / f"{kind}.json"
        check(path.exists(), f"the {kind} hook did not run")
        try:
            state = json.loads(path.read_text())
        except ValueError:
            check(False, f"the {kind} hook's stdin is not JSON: {path.read_text()[:100]!r}")
        check(state.get("id") == container_id, f"{kind} state has id {state.get('id')!r}")
        check(isinstance(state.get("ociVersion"), str), f"{kind} state has no ociVersion")
        bundle = state.get("bundle", "")
        check(os.path.realpath(bundle) == os.path.realpath(ctx.bundle), f"{kind} state has bundle {bundle!r}")
        if state.get("status") in ("created", "running"):
            check(isinstance(state.get("pid"), int) and state["pid"] > 0,
                  f"{kind} state is {state['status']} but has pid {state.get('pid')!r}")


@case("hooks_env_and_args", "config.md#posix-platform-hooks",
      "a hook runs with exactly its args and its env")
def hooks_env_and_args(ctx: CaseContext) -> None:
    log = ctx.host_dir("hooks")
    ctx.config["hooks"] = {"createRuntime": [{
        "path": "/bin/sh", "args": ["sh", "-c", f'echo "$0|$1|$CONF_HOOK" > {log}/seen', "first", "second"],
        "env": ["CONF_HOOK=from-env", "PATH=/bin:/usr/bin"]}]}
    result = ctx.run(["true"])
    check(result.returncode == 0, f"run failed: {result.describe()}")
    seen = (log / "seen").read_text().strip() if (log / "seen").exists() else None
    check(seen == "first|second|from-env", f"the hook saw {seen!r}")


@case("hooks_create_runtime_failure", "runtime.md#lifecycle",
      "a failing createRuntime hook makes create an error and the user program never runs")
def hooks_create_runtime_failure(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    ctx.config["hooks"] = {"createRuntime": [failing_hook()]}
    ctx.config["process"]["args"], marker = _marker_args(log)
    container_id, result = ctx.create()
    check(result.returncode != 0, "create succeeded though a createRuntime hook failed")
    if ctx.call(["state", container_id]).returncode == 0:
        ctx.start(container_id)
    time.sleep(0.1)
    check(not marker.exists(), "the user program ran after a createRuntime hook failed")
    check(_not_running(ctx, container_id), "the container is still alive after the hook failed")


@case("hooks_prestart_failure", "runtime.md#lifecycle",
      "a failing prestart hook makes create an error and the user program never runs")
def hooks_prestart_failure(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    ctx.config["hooks"] = {"prestart": [failing_hook()]}
    ctx.config["process"]["args"], marker = _marker_args(log)
    container_id, result = ctx.create()
    if result.returncode == 0:
        start = ctx.start(container_id)
        check(start.returncode != 0, "create and start both succeeded though a prestart hook failed")
    time.sleep(0.1)
    check(not marker.exists(), "the user program ran after a prestart hook failed")


@case("hooks_start_container_failure", "runtime.md#lifecycle",
      "a failing startContainer hook makes start an error and the user program never runs")
def hooks_start_container_failure(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    ctx.config["hooks"] = {"startContainer": [failing_hook()]}
    ctx.config["process"]["args"], marker = _marker_args(log)
    container_id = ctx.create_ok()
    result = ctx.start(container_id)
    time.sleep(0.1)
    check(not marker.exists(), "the user program ran after a startContainer hook failed")
    check(result.returncode != 0, "start reported success though a startContainer hook failed")


@case("hooks_poststart_failure_continues", "runtime.md#lifecycle",
      "a failing poststart hook is only a warning: start succeeds, the hooks after it run, the container runs")
def hooks_poststart_failure_continues(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    ctx.config["hooks"] = {"poststart": [failing_hook(), recording_hook(ctx, "poststart", log)]}
    ctx.config["process"]["args"], marker = _marker_args(log)
    container_id = ctx.create_ok()
    result = ctx.start(container_id)
    check(result.returncode == 0, f"start failed because of a poststart hook: {result.describe()}")
    state = ctx.state(container_id)
    check(state.get("status") == "running", f"status is {state.get('status')!r} after a poststart failure")
    check((log / "poststart.json").exists(), "the poststart hook after the failing one did not run")


@case("hooks_poststop_failure_continues", "runtime.md#lifecycle",
      "a failing poststop hook is only a warning: delete succeeds, the hooks after it run, the container is gone")
def hooks_poststop_failure_continues(ctx: CaseContext) -> None:
    log = ctx.host_dir("hooks")
    ctx.config["hooks"] = {"poststop": [failing_hook(), recording_hook(ctx, "poststop", log)]}
    ctx.config["process"]["args"] = ["true"]
    container_id = ctx.create_ok()
    check(ctx.start(container_id).returncode == 0, "start failed")
    ctx.wait_status(container_id, "stopped")
    result = ctx.delete(container_id)
    check(result.returncode == 0, f"delete failed because of a poststop hook: {result.describe()}")
    check(ctx.call(["state", container_id]).returncode != 0, "the container survived delete")
    check((log / "poststop.json").exists(), "the poststop hook after the failing one did not run")


@case("hooks_create_time_state_created", "runtime.md#state",
      "prestart, createRuntime and createContainer (lifecycle steps 3-5, after step 2) see status created")
def hooks_create_time_state_created(ctx: CaseContext) -> None:
    log = _hook_log(ctx)
    kinds = ["prestart", "createRuntime", "createContainer"]
    ctx.config["hooks"] = {kind: [recording_hook(ctx, kind, log)] for kind in kinds}
    result = ctx.run(["true"])
    check(result.returncode == 0, f"run with hooks failed: {result.describe()}")
    for kind in kinds:
        path = log / f"{kind}.json"
        check(path.exists(), f"the {kind} hook did not run")
        status = json.loads(path.read_text()).get("status")
        check(status == "created", f"the {kind} hook saw status {status!r}")


@case("hooks_timeout", "config.md#posix-platform-hooks",
      "a hook that outlives its timeout is aborted and counts as failed")
def hooks_timeout(ctx: CaseContext) -> None:
    ctx.config["hooks"] = {"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "20"], "timeout": 1}]}
    started = time.monotonic()
    _, result = ctx.create()
    elapsed = time.monotonic() - started
    check(result.returncode != 0, "create succeeded though its hook timed out")
    check(elapsed < 10, f"create took {elapsed:.1f}s: the 1s hook timeout was not enforced")
