"""`--debug` traces the lifecycle: one debug line per step (config, cgroups, namespaces, mounts, seccomp,
hooks, the exec fifo, exit), with its timing, to the --log file or to stderr, in runc's text and JSON
formats. The init's own steps come over its channel to the runtime, which logs them. Rootful and
rootless. Without --debug nothing of it is written (and --log is created all the same, as runc does)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

TEXT_LINE = re.compile(r'time="[^"]+" level=debug msg=(?:"(?:[^"\\]|\\.)*"|\S+) ms=[0-9.]+ step=\S+ '
                       r"total_ms=[0-9.]+")


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


def traced_bundle(make_bundle, user):
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["hooks"] = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", "cat >/dev/null"]}]
                              for kind in ("prestart", "createRuntime", "createContainer", "poststart",
                                           "poststop")}
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]}
    return bundle


def steps(entries: list[dict]) -> list[str]:
    return [entry["step"] for entry in entries]


def test_debug_run_traces_each_step_to_the_json_log(make_bundle, user, harness):
    bundle = traced_bundle(make_bundle, user)
    log_file = harness.dir / "trace.json"
    if user is not None:
        log_file.touch()
        os.chown(log_file, user.uid, user.gid)
    result = bundle.run(global_args=["--debug", "--log", log_file, "--log-format", "json"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    # Rootless, the controllers it may not use are notices (level info) among the trace.
    assert {e["level"] for e in lines} <= {"debug", "info"}
    entries = [e for e in lines if e["level"] == "debug"]
    for entry in entries:
        assert list(entry) == sorted(entry), "keys out of logrus's order"
        assert entry["msg"].startswith(entry["step"] + ": ")
        assert entry["ms"] >= 0 and entry["total_ms"] >= entry["ms"]
    totals = [e["total_ms"] for e in entries]
    assert totals == sorted(totals)
    seen = steps(entries)
    # The runtime's steps, and the init's (network, mounts, process), relayed over its channel.
    for step in ("config", "seccomp", "cgroups", "namespaces", "init", "mounts", "process", "hooks", "create",
                 "fifo", "exit", "delete"):
        assert step in seen, (step, seen)
    # The rootless bundle shares the host's network namespace: no loopback to bring up.
    assert ("network" in seen) == bool(bundle.config["linux"].get("namespaces") and any(
        ns["type"] == "network" for ns in bundle.config["linux"]["namespaces"]))
    messages = [e["msg"] for e in entries]

    def first(prefix: str) -> int:
        return next(i for i, m in enumerate(messages) if m.startswith(prefix))

    order = [first(p) for p in ("config:", "seccomp: BPF program ready", "fifo: state saved", "cgroups: created",
                                "namespaces: unshared", "mounts: rootfs prepared",
                                "hooks: createContainer", "mounts: root entered", "process:", "init: ready",
                                "create:", "fifo: exec fifo opened", "hooks: poststart", "exit:",
                                "cgroups: removed", "hooks: poststop", "delete:")]
    assert order == sorted(order), messages
    hooks = [e["msg"] for e in entries if e["step"] == "hooks"]
    assert len(hooks) == 5 and all("exit status 0" in m for m in hooks), hooks
    assert any(m.startswith("hooks: createContainer hook") for m in hooks)
    assert entries[-1]["step"] == "delete"
    assert [e for e in entries if e["step"] == "exit"][0]["msg"].endswith("exited: status 0")


def test_debug_without_log_goes_to_stderr_in_text(make_bundle, user):
    bundle = traced_bundle(make_bundle, user)
    result = bundle.run(global_args=["--debug"])
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) >= 15, result.stderr
    for line in lines:
        assert TEXT_LINE.fullmatch(line), line
    assert any("step=mounts" in line for line in lines) and any("step=exit" in line for line in lines)


def test_without_debug_nothing_is_traced_and_the_log_exists(make_bundle, harness):
    bundle = traced_bundle(make_bundle, None)
    log_file = harness.dir / "quiet.log"
    result = bundle.run(global_args=["--log", log_file])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    assert log_file.exists() and log_file.read_text() == ""


def test_debug_traces_the_other_commands(make_bundle, harness):
    bundle = make_bundle(args=["sleep", "60"])
    log_file = harness.dir / "commands.log"
    debug = ["--debug", "--log", log_file, "--log-format", "json"]
    for args in (["create", "--bundle", bundle.path, bundle.id], ["start", bundle.id], ["kill", bundle.id, "9"]):
        done = bundle.runtime(args, global_args=debug)
        assert done.returncode == 0, done.stderr
    for _ in range(100):
        if bundle.state()["status"] == "stopped":
            break
        time.sleep(0.02)
    assert bundle.runtime(["delete", bundle.id], global_args=debug).returncode == 0
    seen = steps([json.loads(line) for line in log_file.read_text().splitlines()])
    assert seen.index("create") < seen.index("fifo", seen.index("create")) < seen.index("kill") < seen.index("delete")
    assert seen.count("kill") == 1


def test_debug_exec_relays_the_exec_process_steps(make_bundle, harness):
    bundle = make_bundle(args=["sleep", "60"])
    assert bundle.create().returncode == 0
    try:
        assert bundle.start().returncode == 0
        log_file = harness.dir / "exec.log"
        done = bundle.runtime(["exec", bundle.id, "true"], global_args=["--debug", "--log", log_file,
                                                                           "--log-format", "json"])
        assert done.returncode == 0, done.stderr
        entries = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert "process" in steps(entries), entries
    finally:
        bundle.delete(force=True)
