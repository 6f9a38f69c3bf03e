"""Lifecycle: the operations, the status each leaves behind, the errors they must give, the state JSON."""

from __future__ import annotations

import os
import re
import time

from conformance.harness import CaseContext, CaseFailed, case, check

SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def _marker_process(ctx: CaseContext) -> tuple[str, str]:
    """Args that leave a marker on the host when the user process really runs, then sleep."""
    out = ctx.host_dir("out")
    ctx.rootfs_dir("/out")
    ctx.bind(out, "/out", ["rbind"])
    return str(out / "ran"), "touch /out/ran; exec sleep 30"


@case("lifecycle_create_leaves_created", "runtime.md#create",
      "create builds the environment but does not run the user program; status becomes created")
def create_leaves_created(ctx: CaseContext) -> None:
    marker, script = _marker_process(ctx)
    ctx.config["process"]["args"] = ["sh", "-c", script]
    container_id = ctx.create_ok()
    state = ctx.state(container_id)
    check(state.get("status") == "created", f"status after create is {state.get('status')!r}")
    pid = state.get("pid")
    check(isinstance(pid, int) and os.path.exists(f"/proc/{pid}"), f"no live process for pid {pid!r}")
    time.sleep(0.1)
    check(not os.path.exists(marker), "the user program ran before start")


@case("lifecycle_start_runs_program", "runtime.md#start",
      "start runs the user program and the status becomes running")
def start_runs_program(ctx: CaseContext) -> None:
    marker, script = _marker_process(ctx)
    container_id, _ = ctx.start_process(["sh", "-c", script])
    check(os.path.exists(marker), "the user program did not run after start")
    state = ctx.state(container_id)
    check(state.get("status") == "running", f"status after start is {state.get('status')!r}")


@case("lifecycle_create_without_process", "runtime.md#start",
      "a config without process creates a container; start then generates an error")
def create_without_process(ctx: CaseContext) -> None:
    del ctx.config["process"]
    container_id, result = ctx.create()
    check(result.returncode == 0, f"create refused a config without process: {result.describe()}")
    check(ctx.state(container_id).get("status") == "created", "the container is not created")
    started = ctx.start(container_id)
    check(started.returncode != 0, "start succeeded without a process")


@case("state_fields", "runtime.md#state",
      "state reports ociVersion, id, status, pid, the absolute bundle path and the config's annotations")
def state_fields(ctx: CaseContext) -> None:
    annotations = {"org.example.conformance": "yes", "org.example.other": "1"}
    ctx.config["annotations"] = annotations
    ctx.config["process"]["args"] = ["sleep", "30"]
    container_id = ctx.create_ok()
    state = ctx.state(container_id)
    version = state.get("ociVersion")
    check(isinstance(version, str) and SEMVER.match(version), f"ociVersion {version!r} is not SemVer")
    check(state.get("id") == container_id, f"id is {state.get('id')!r}, expected {container_id!r}")
    check(state.get("status") in ("creating", "created", "running", "stopped"),
          f"status {state.get('status')!r} is not a spec status")
    check(isinstance(state.get("pid"), int), f"pid {state.get('pid')!r} is not an integer")
    bundle = state.get("bundle")
    if not isinstance(bundle, str) or not os.path.isabs(bundle):
        raise CaseFailed(f"bundle {bundle!r} is not an absolute path")
    check(os.path.realpath(bundle) == os.path.realpath(ctx.bundle), f"bundle is {bundle!r}, not {ctx.bundle}")
    check(state.get("annotations") == annotations,
          f"annotations are {state.get('annotations')!r}, expected {annotations!r}")


@case("lifecycle_start_running_fails", "runtime.md#start",
      "start on a container that is not created is an error and leaves it running")
def start_running_fails(ctx: CaseContext) -> None:
    container_id, pid = ctx.start_process()
    result = ctx.start(container_id)
    check(result.returncode != 0, "a second start succeeded")
    check(ctx.state(container_id).get("status") == "running", "the second start changed the status")
    check(os.path.exists(f"/proc/{pid}"), "the second start stopped the process")


@case("lifecycle_start_stopped_fails", "runtime.md#start",
      "start on a stopped container is an error")
def start_stopped_fails(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["true"]
    container_id = ctx.create_ok()
    check(ctx.start(container_id).returncode == 0, "start failed")
    ctx.wait_status(container_id, "stopped")
    result = ctx.start(container_id)
    check(result.returncode != 0, "start of a stopped container succeeded")


@case("lifecycle_exit_becomes_stopped", "runtime.md#lifecycle",
      "when the user program exits the status becomes stopped")
def exit_becomes_stopped(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["true"]
    container_id = ctx.create_ok()
    check(ctx.start(container_id).returncode == 0, "start failed")
    ctx.wait_status(container_id, "stopped")


@case("lifecycle_delete_running_fails", "runtime.md#delete",
      "delete of a container that is not stopped is an error and has no effect")
def delete_running_fails(ctx: CaseContext) -> None:
    container_id, pid = ctx.start_process()
    result = ctx.delete(container_id)
    check(result.returncode != 0, "delete of a running container succeeded")
    check(os.path.exists(f"/proc/{pid}"), "delete killed the running process")
    check(ctx.state(container_id).get("status") == "running", "delete changed the status")


@case("lifecycle_delete_created_fails", "runtime.md#delete",
      "delete of a created (not yet stopped) container is an error and has no effect")
def delete_created_fails(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["sleep", "30"]
    container_id = ctx.create_ok()
    result = ctx.delete(container_id)
    check(result.returncode != 0, "delete of a created container succeeded")
    check(ctx.state(container_id).get("status") == "created", "delete changed the created container")


@case("lifecycle_kill_running", "runtime.md#kill",
      "kill sends the signal to the container process; after SIGKILL the status becomes stopped")
def kill_running(ctx: CaseContext) -> None:
    container_id, _ = ctx.start_process()
    result = ctx.kill(container_id, "KILL")
    check(result.returncode == 0, f"kill failed: {result.describe()}")
    ctx.wait_status(container_id, "stopped")


@case("lifecycle_kill_signal_delivered", "runtime.md#kill",
      "kill delivers the named signal, not just any termination")
def kill_signal_delivered(ctx: CaseContext) -> None:
    out = ctx.host_dir("out")
    ctx.rootfs_dir("/out")
    ctx.bind(out, "/out")
    script = "trap 'echo got-usr1 > /out/signal; exit 0' USR1; touch /out/ready; while :; do sleep 0.05; done"
    container_id, pid = ctx.start_process(["sh", "-c", script], comm="sh")
    deadline = time.monotonic() + 5
    while not (out / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    result = ctx.kill(container_id, "USR1")
    check(result.returncode == 0, f"kill USR1 failed: {result.describe()}")
    ctx.wait_status(container_id, "stopped")
    check((out / "signal").exists(), "the process did not see SIGUSR1")


@case("lifecycle_kill_created", "runtime.md#kill",
      "kill is allowed on a created container and stops it")
def kill_created(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["sleep", "30"]
    container_id = ctx.create_ok()
    result = ctx.kill(container_id, "KILL")
    check(result.returncode == 0, f"kill of a created container failed: {result.describe()}")
    ctx.wait_status(container_id, "stopped")


@case("lifecycle_kill_stopped_fails", "runtime.md#kill",
      "kill of a container that is neither created nor running is an error")
def kill_stopped_fails(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["true"]
    container_id = ctx.create_ok()
    check(ctx.start(container_id).returncode == 0, "start failed")
    ctx.wait_status(container_id, "stopped")
    result = ctx.kill(container_id, "KILL")
    check(result.returncode != 0, "kill of a stopped container succeeded")


@case("lifecycle_delete_stopped", "runtime.md#delete",
      "delete of a stopped container removes it: state then fails and the id can be reused")
def delete_stopped(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["true"]
    container_id = ctx.create_ok()
    check(ctx.start(container_id).returncode == 0, "start failed")
    ctx.wait_status(container_id, "stopped")
    result = ctx.delete(container_id)
    check(result.returncode == 0, f"delete failed: {result.describe()}")
    check(ctx.call(["state", container_id]).returncode != 0, "state still answers after delete")
    _, again = ctx.create(container_id, write=False)
    check(again.returncode == 0, f"the id could not be reused after delete: {again.describe()}")


@case("lifecycle_create_duplicate_id_fails", "runtime.md#create",
      "create with an id that is already in use is an error and leaves the first container alone")
def create_duplicate_id_fails(ctx: CaseContext) -> None:
    ctx.config["process"]["args"] = ["sleep", "30"]
    container_id = ctx.create_ok()
    pid = ctx.state(container_id)["pid"]
    _, result = ctx.create(container_id, write=False)
    check(result.returncode != 0, "a second create with the same id succeeded")
    state = ctx.state(container_id)
    check(state.get("status") == "created" and state.get("pid") == pid, "the duplicate create changed the first")


@case("lifecycle_state_unknown_fails", "runtime.md#query-state",
      "state of an id that does not exist is an error")
def state_unknown_fails(ctx: CaseContext) -> None:
    result = ctx.call(["state", "conformance-no-such-container"])
    check(result.returncode != 0, "state of an unknown id succeeded")


@case("lifecycle_create_bad_config_fails", "runtime.md#create",
      "create with a config that cannot be applied is an error and leaves no container behind (runtime.md#errors)")
def create_bad_config_fails(ctx: CaseContext) -> None:
    ctx.config["root"]["path"] = "no-such-rootfs"
    container_id, result = ctx.create()
    check(result.returncode != 0, "create with a missing rootfs succeeded")
    check(ctx.call(["state", container_id]).returncode != 0,
          "a failed create left a container behind: the error must leave things as if never attempted")


@case("lifecycle_create_invalid_json_fails", "runtime.md#create",
      "create with a config.json that is not valid JSON is an error")
def create_invalid_json_fails(ctx: CaseContext) -> None:
    (ctx.bundle / "config.json").write_text("{ not json")
    ctx.chown(ctx.bundle / "config.json")
    container_id, result = ctx.create(write=False)
    check(result.returncode != 0, "create with broken JSON succeeded")
    check(ctx.call(["state", container_id]).returncode != 0, "a failed create left state behind")
