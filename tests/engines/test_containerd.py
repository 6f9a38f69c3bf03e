"""containerd 1.6's runc v2 shim driving the runtime under test, through `ctr`.

The shim calls the runtime with ``--root DIR --log <bundle>/log.json --log-format json`` before every
command: create (with --console-socket for -t), start, exec --process F --detach, kill [--all], pause,
resume, ps --format json, delete. ``--runc-binary`` fills the same shim option (``BinaryName``) that
containerd's CRI configuration sets for a Kubernetes RuntimeClass (see docs/engines.md).
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_harness as eh  # noqa: E402

pytestmark = pytest.mark.engines

# Field numbers in containerd.runc.v1.Options (runtime/v2/runc/options/oci.proto).
RUNC_OPTION_BINARY_NAME = 6
RUNC_OPTION_ROOT = 7


def new_id() -> str:
    return f"ctr-{secrets.token_hex(4)}"


def test_run_rm_prints_and_returns_the_exit_code(containerd: eh.Containerd) -> None:
    container = new_id()
    try:
        result = containerd.ctr("run", "--rm", *containerd.runtime_args(), eh.IMAGE, container,
                                "sh", "-c", "echo hello from pid $$; exit 5", check=False)
        assert result.returncode == 5, result.describe()
        assert "hello from pid 1" in result.stdout, result.describe()
        assert containerd.task_status(container) == ""
    finally:
        containerd.remove(container)


def test_detached_exec_ps_pause_resume_kill(containerd: eh.Containerd) -> None:
    container = new_id()
    try:
        containerd.ctr("run", "--detach", *containerd.runtime_args(), eh.IMAGE, container,
                       *eh.SERVE_UNTIL_TERM)
        assert containerd.wait_status(container, "RUNNING") == "RUNNING"

        executed = containerd.ctr("task", "exec", *containerd.fifo_args(), "--exec-id", "probe", container, "sh", "-c",
                                  "echo exec-$((6*7)); exit 4", check=False)
        assert executed.returncode == 4, executed.describe()
        assert "exec-42" in executed.stdout, executed.describe()

        # `ctr task ps` is the runtime's `ps --format json`: the init's host pid must be listed.
        init_pid = next(line.split()[1] for line in containerd.ctr("task", "list").stdout.splitlines()[1:]
                        if line.split()[0] == container)
        listed = containerd.ctr("task", "ps", container)
        assert init_pid in [line.split()[0] for line in listed.stdout.splitlines()[1:]], listed.describe()

        containerd.ctr("task", "pause", container)
        assert containerd.task_status(container) == "PAUSED"
        freezer = eh.cgroup_of(int(init_pid), "freezer") / "freezer.state"
        assert freezer.read_text().strip() == "FROZEN"
        containerd.ctr("task", "resume", container)
        assert containerd.task_status(container) == "RUNNING"

        containerd.ctr("task", "kill", "--signal", "SIGTERM", container)
        assert containerd.wait_status(container, "STOPPED") == "STOPPED"
        deleted = containerd.ctr("task", "delete", container)
        # A non-zero status would mean the SIGTERM never reached the trap (ctr warns about it).
        assert "non-zero" not in deleted.stderr, deleted.describe()
    finally:
        containerd.remove(container)


def test_kill_all_reaches_exec_processes(containerd: eh.Containerd) -> None:
    container = new_id()
    try:
        containerd.ctr("run", "--detach", *containerd.runtime_args(), eh.IMAGE, container, "sleep", "600")
        assert containerd.wait_status(container, "RUNNING") == "RUNNING"
        containerd.ctr("task", "exec", *containerd.fifo_args(), "--detach", "--exec-id", "background", container, "sleep", "601")
        init_pid = int(next(line.split()[1] for line in containerd.ctr("task", "list").stdout.splitlines()[1:]
                            if line.split()[0] == container))
        cgroup = eh.cgroup_of(init_pid, "pids")
        assert len((cgroup / "cgroup.procs").read_text().split()) == 2
        containerd.ctr("task", "kill", "--all", "--signal", "SIGKILL", container)
        assert containerd.wait_status(container, "STOPPED") == "STOPPED"
        assert not cgroup.exists() or (cgroup / "cgroup.procs").read_text().split() == []
    finally:
        containerd.remove(container)


def test_terminal_through_the_console_socket(containerd: eh.Containerd) -> None:
    container = new_id()
    try:
        status, screen = containerd.ctr_terminal(
            ["run", "--rm", "--tty", *containerd.runtime_args(), eh.IMAGE, container, "sh"],
            typed="tty; echo answer-$((6*7)); exit 3\r")
        assert status == 3, screen
        assert "/dev/pts/0" in screen, screen
        assert "answer-42" in screen, screen
    finally:
        containerd.remove(container)


def test_the_shim_runs_the_binary_named_in_its_options(containerd: eh.Containerd) -> None:
    """``--runc-binary`` and ``--runc-root`` become the shim's ``BinaryName`` and ``Root`` options: the
    fields a CRI runtime handler's ``options`` table sets for a Kubernetes RuntimeClass. The container's
    state then lives in the runtime under test's own state directory, and that runtime reports it."""
    container = new_id()
    try:
        containerd.ctr("run", "--detach", *containerd.runtime_args(), eh.IMAGE, container, "sleep", "600")
        runtime = json.loads(containerd.ctr("container", "info", container).stdout)["Runtime"]
        assert runtime["Name"] == "io.containerd.runc.v2"
        assert runtime["Options"]["type_url"] == "containerd.runc.v1.Options", runtime
        options = eh.protobuf_strings(base64.b64decode(runtime["Options"]["value"]))
        assert options[RUNC_OPTION_BINARY_NAME] == containerd.runtime, options
        assert options[RUNC_OPTION_ROOT] == str(containerd.runtime_root), options
        # The shim adds the namespace to its Root option.
        root = containerd.runtime_root / containerd.namespace
        state = eh.run([containerd.runtime, "--root", str(root), "state", container], env=containerd.env)
        assert json.loads(state.stdout)["status"] == "running", state.describe()
    finally:
        containerd.remove(container)


def test_a_runtime_class_handler_runs_the_pod_sandbox(containerd_cri: eh.ContainerdCRI) -> None:
    """CRI's RunPodSandbox with runtime_handler "ocirt" (what kubelet sends for a RuntimeClass whose
    handler is ocirt): the shim runs the runtime named by ``options.BinaryName`` in containerd's config."""
    cri = containerd_cri
    sandbox = cri.run_pod_sandbox(f"pod-{secrets.token_hex(3)}", eh.RUNTIME_NAME)
    try:
        tasks = cri.ctr("task", "list").stdout
        assert any(line.split()[0] == sandbox and line.split()[-1] == "RUNNING"
                   for line in tasks.splitlines()[1:]), tasks
        root = cri.runtime_root / "k8s.io"
        state = eh.run([cri.runtime, "--root", str(root), "state", sandbox], env=cri.env)
        assert json.loads(state.stdout)["status"] == "running", state.describe()
        pid = json.loads(state.stdout)["pid"]
        assert cri.cgroup_parent.strip("/") in str(eh.cgroup_of(pid, "memory"))
    finally:
        cri.remove_pod_sandbox(sandbox)
    assert sandbox not in cri.ctr("container", "list").stdout
