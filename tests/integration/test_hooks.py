"""The six hook kinds (config.md "POSIX-platform Hooks"): order, the state on stdin, args and env, timeouts,
and which failures fail the operation."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import helpers
import pytest
from helpers import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rootful hooks need root")

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
# Where each kind runs: the container's own files (after pivot_root) only for startContainer.
IN_CONTAINER_LOG = "/hooklog"


def recording_hook(kind: str, log_dir: Path, *, extra: str = "") -> dict:
    """A hook that saves the state it reads on stdin as <kind>.json and appends its kind, its args and
    its environment to `order`."""
    directory = IN_CONTAINER_LOG if kind == "startContainer" else str(log_dir)
    script = (f"/bin/cat > {directory}/{kind}.json; "
              f"echo \"{kind} $0 $1 HOOK_VAR=$HOOK_VAR LEAK=${{RUNTIME_ONLY:-unset}}\" >> {directory}/order; {extra}")
    return {"path": "/bin/sh", "args": ["sh", "-c", script, f"arg0-{kind}", f"arg1-{kind}"],
            "env": [f"HOOK_VAR=value-{kind}"]}


def failing_hook(kind: str) -> dict:
    return {"path": "/bin/sh", "args": ["sh", "-c", f"echo {kind} says no >&2; exit 7"]}


def hook_bundle(make_bundle, test_dir: Path, args: list[str] | None = None) -> tuple:
    log_dir = test_dir / "hooklog"
    log_dir.mkdir(exist_ok=True)
    bundle = make_bundle(args=args or ["sleep", "100"])
    bundle.config["mounts"].append({"destination": IN_CONTAINER_LOG, "type": "bind", "source": str(log_dir),
                                    "options": ["rbind", "rw"]})
    return bundle, log_dir


def order(log_dir: Path) -> list[str]:
    path = log_dir / "order"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def nothing_left(bundle) -> None:
    assert not (bundle.root / bundle.id).exists()
    assert not bundle.cgroup_dirs()
    listed = bundle.runtime(["list", "-q"], check=True).stdout.split()
    assert bundle.id not in listed


def test_all_six_kinds_run_in_order_with_the_state_on_stdin(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir)
    bundle.config["annotations"] = {"hook.test": "yes"}
    bundle.config["hooks"] = {kind: [recording_hook(kind, log_dir)] for kind in KINDS}
    # A variable of the runtime's own environment must not reach the hooks.
    created = bundle.create(env={"RUNTIME_ONLY": "leaked"})
    assert created.returncode == 0, created.stderr
    try:
        assert order(log_dir) == ["prestart", "createRuntime", "createContainer"]
        pid = bundle.state()["pid"]
        assert bundle.start(env={"RUNTIME_ONLY": "leaked"}).returncode == 0
        assert order(log_dir)[3:] == ["startContainer", "poststart"]
    finally:
        assert bundle.delete(force=True, env={"RUNTIME_ONLY": "leaked"}).returncode == 0
    assert order(log_dir) == list(KINDS)

    states = {kind: json.loads((log_dir / f"{kind}.json").read_text()) for kind in KINDS}
    for kind, state in states.items():
        assert state["id"] == bundle.id, kind
        assert state["bundle"] == str(bundle.path), kind
        assert state["ociVersion"] == bundle.config["ociVersion"], kind
        assert state["annotations"] == {"hook.test": "yes"}, kind
    for kind in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart"):
        assert states[kind]["pid"] == pid, kind
    # Lifecycle steps 3-5 come "after step 2", which is when the state says "created" (crun does; runc 1.1.5
    # says "creating").
    create_time = {"created"} if helpers.runtime_name() == "ocirt" else {"creating", "created"}
    for kind in ("prestart", "createRuntime", "createContainer"):
        assert states[kind]["status"] in create_time, kind
    assert states["startContainer"]["status"] in ("created", "running")
    assert states["poststart"]["status"] == "running"
    assert states["poststop"]["status"] == "stopped"

    lines = {line.split()[0]: line.split()[1:] for line in (log_dir / "order").read_text().splitlines()}
    for kind in KINDS:
        # args[0] is $0 of `sh -c`; env is exactly the hook's, nothing of the runtime's.
        assert lines[kind] == [f"arg0-{kind}", f"arg1-{kind}", f"HOOK_VAR=value-{kind}", "LEAK=unset"], kind


def test_create_container_hook_runs_in_the_container_namespaces(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir, args=["true"])
    def probe(name: str) -> dict:
        script = "/bin/readlink /proc/self/ns/mnt /proc/self/ns/uts > " + shlex.quote(str(log_dir / name))
        return {"path": "/bin/sh", "args": ["sh", "-c", script]}

    bundle.config["hooks"] = {"createContainer": [probe("ns")], "createRuntime": [probe("runtime-ns")]}
    assert bundle.create().returncode == 0
    try:
        pid = bundle.state()["pid"]
        in_container = (log_dir / "ns").read_text().split()
        in_runtime = (log_dir / "runtime-ns").read_text().split()
        assert in_container == [os.readlink(f"/proc/{pid}/ns/mnt"), os.readlink(f"/proc/{pid}/ns/uts")]
        assert in_runtime == [os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/uts")]
    finally:
        bundle.delete(force=True)


@pytest.mark.parametrize("kind", ["prestart", "createRuntime", "createContainer"])
def test_a_failing_create_hook_fails_create_and_leaves_nothing(make_bundle, test_dir, kind):
    bundle, log_dir = hook_bundle(make_bundle, test_dir)
    bundle.config["hooks"] = {kind: [failing_hook(kind)], "poststop": [recording_hook("poststop", log_dir)]}
    result = bundle.create()
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert kind in result.stderr and "exit status 7" in result.stderr and f"{kind} says no" in result.stderr
    nothing_left(bundle)


def test_a_hook_after_a_failing_one_does_not_run(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir)
    bundle.config["hooks"] = {"prestart": [recording_hook("prestart", log_dir), failing_hook("prestart")],
                              "createRuntime": [recording_hook("createRuntime", log_dir)]}
    assert bundle.create().returncode != 0
    assert order(log_dir) == ["prestart"]
    nothing_left(bundle)


def test_a_hook_timeout_kills_it_and_fails_create(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir)
    marker = log_dir / "survived"
    bundle.config["hooks"] = {"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", f"/bin/sleep 1.5; echo > {marker}"], "timeout": 1}]}
    began = time.monotonic()
    result = bundle.create()
    elapsed = time.monotonic() - began
    assert result.returncode != 0
    assert "createRuntime" in result.stderr and "timed out" in result.stderr, result.stderr
    assert elapsed < 1.5
    nothing_left(bundle)
    time.sleep(max(0.0, 1.7 - elapsed))
    assert not marker.exists(), "the timed-out hook was not killed"


def test_a_failing_start_container_hook_fails_start(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir, args=["sh", "-c", f"echo ran > {IN_CONTAINER_LOG}/ran"])
    bundle.config["hooks"] = {"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo start hook says no >&2; exit 3"]}]}
    assert bundle.create().returncode == 0
    try:
        result = bundle.start()
        assert result.returncode != 0
        assert "startContainer" in result.stderr and "start hook says no" in result.stderr
        assert wait_for(lambda: bundle.state()["status"] == "stopped")
        assert not (log_dir / "ran").exists(), "the user process ran although startContainer failed"
    finally:
        bundle.delete(force=True)
    nothing_left(bundle)


def test_failing_poststart_and_poststop_hooks_are_only_logged(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir)
    bundle.config["hooks"] = {
        "poststart": [failing_hook("poststart"), recording_hook("poststart", log_dir)],
        "poststop": [failing_hook("poststop"), recording_hook("poststop", log_dir)],
    }
    assert bundle.create().returncode == 0
    try:
        started = bundle.start()
        assert started.returncode == 0, started.stderr
        assert "poststart" in started.stderr and "poststart says no" in started.stderr
        assert bundle.state()["status"] == "running"
        # runtime.md, lifecycle: "the remaining hooks and lifecycle continue as if the hook had succeeded".
        assert order(log_dir) == ["poststart"], "the poststart hook after the failing one did not run"
    finally:
        deleted = bundle.delete(force=True)
    assert deleted.returncode == 0, deleted.stderr
    assert "poststop" in deleted.stderr and "poststop says no" in deleted.stderr
    assert order(log_dir) == ["poststart", "poststop"], "the poststop hook after the failing one did not run"
    nothing_left(bundle)


def test_poststop_runs_on_delete_of_a_stopped_container(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir, args=["true"])
    bundle.config["hooks"] = {"poststop": [recording_hook("poststop", log_dir)]}
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert order(log_dir) == ["poststop"]
    state = json.loads((log_dir / "poststop.json").read_text())
    assert state["status"] == "stopped" and state["id"] == bundle.id
    nothing_left(bundle)


def test_a_hook_whose_path_does_not_exist_fails_create(make_bundle, test_dir):
    bundle, _ = hook_bundle(make_bundle, test_dir)
    bundle.config["hooks"] = {"prestart": [{"path": "/no/such/hook"}]}
    result = bundle.create()
    assert result.returncode != 0
    assert "/no/such/hook" in result.stderr and "no such file or directory" in result.stderr
    nothing_left(bundle)


def test_poststart_sees_running_and_the_pid_even_when_the_program_already_exited(make_bundle, test_dir):
    """Lifecycle step 9 follows step 8 (the program runs): a program as short as `true` may be gone by then,
    but the hook still gets the state of that step (runtime-tools' hooks_stdin checks it; crun does so)."""
    bundle, log_dir = hook_bundle(make_bundle, test_dir, args=["true"])
    bundle.config["hooks"] = {"poststart": [recording_hook("poststart", log_dir)]}
    assert bundle.create().returncode == 0
    # `start` with 0.3 s added to its unlink of the exec fifo (after the program's execve, before the hooks):
    # `true` has then always exited when the poststart hooks run.
    slow = test_dir / "slow-runtime"
    slow.write_text("#!/bin/sh\nexec strace -qq -o /dev/null -e trace=unlink -e inject=unlink:delay_enter=300000 "
                    f'{helpers.runtime_path()} "$@"\n')
    slow.chmod(0o755)
    try:
        pid = bundle.state()["pid"]
        assert bundle.start(runtime=str(slow)).returncode == 0
        state = json.loads((log_dir / "poststart.json").read_text())
        assert state["status"] == "running"
        assert state["pid"] == pid
    finally:
        bundle.delete(force=True)
    nothing_left(bundle)


def env_hook(kind: str, log_dir: Path, env: list[str] | None) -> dict:
    directory = IN_CONTAINER_LOG if kind == "startContainer" else str(log_dir)
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"/usr/bin/env > {directory}/{kind}.env"]}
    if env is not None:
        hook["env"] = env
    return hook


def recorded_env(log_dir: Path, kind: str) -> dict[str, str]:
    lines = (log_dir / f"{kind}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(("PWD=", "SHLVL=")))


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


def test_hooks_without_env_inherit_what_runcs_do(make_bundle, test_dir, user):
    """Measured with runc 1.1.5: the runtime-namespace hooks get the runtime's environment; createContainer
    the process's env; startContainer the process's env with the HOME the process gets."""
    log_dir = test_dir / "hooklog"
    log_dir.mkdir()
    if user is not None:
        os.chown(log_dir, user.uid, user.gid)
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["mounts"].append({"destination": IN_CONTAINER_LOG, "type": "bind", "source": str(log_dir),
                                    "options": ["rbind", "rw"]})
    bundle.config["process"]["env"] = ["PATH=/bin:/usr/bin", "PROCESS_VAR=p"]
    bundle.config["hooks"] = {kind: [env_hook(kind, log_dir, None)] for kind in KINDS}
    caller = {"CALLER_VAR": "c", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": None}
    assert bundle.create(env=caller).returncode == 0
    try:
        assert bundle.start(env=caller).returncode == 0
        assert wait_for(lambda: bundle.state()["status"] == "stopped")
    finally:
        assert bundle.delete(force=True, env=caller).returncode == 0
    runtime_env = {key: value for key, value in {**helpers.base_env(user), **caller}.items() if value is not None}
    for kind in ("prestart", "createRuntime", "poststart", "poststop"):
        assert recorded_env(log_dir, kind) == runtime_env, kind
    assert recorded_env(log_dir, "createContainer") == {"PATH": "/bin:/usr/bin", "PROCESS_VAR": "p"}
    assert recorded_env(log_dir, "startContainer") == {"PATH": "/bin:/usr/bin", "PROCESS_VAR": "p",
                                                       "HOME": "/root"}


def test_a_hooks_own_env_is_all_it_gets_even_when_empty(make_bundle, test_dir):
    bundle, log_dir = hook_bundle(make_bundle, test_dir, args=["true"])
    bundle.config["hooks"] = {kind: [env_hook(kind, log_dir, [] if kind in ("prestart", "startContainer")
                                              else [f"ONLY={kind}"])] for kind in KINDS}
    assert bundle.run(env={"CALLER_VAR": "c"}).returncode == 0
    for kind in KINDS:
        expected = {} if kind in ("prestart", "startContainer") else {"ONLY": kind}
        seen = recorded_env(log_dir, kind)
        seen.pop("PATH", None)  # busybox's sh exports a default PATH of its own when it gets none
        assert seen == expected, kind
