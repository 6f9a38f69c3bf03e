"""podman 4.3 (through conmon) driving the runtime under test, rootful and rootless.

Rootful podman calls: create (through conmon, with --console-socket for -t), start, exec (through
conmon), kill, delete --force, pause, resume. Rootless podman on cgroup v1 drops resource limits and
refuses pause itself, so only run and exec are checked there.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_harness as eh  # noqa: E402

pytestmark = pytest.mark.engines


def new_name() -> str:
    return f"{eh.ENGINE_NAME}-{secrets.token_hex(3)}"


def test_run_rm_prints_and_returns_the_exit_code(podman: eh.Podman) -> None:
    result = podman(*podman.run_args(), "--rm", eh.IMAGE, "sh", "-c", "echo hello from $(hostname -s); exit 7",
                    check=False)
    assert result.returncode == 7, result.describe()
    assert "hello from" in result.stdout, result.describe()
    assert podman("ps", "--all", "--quiet").stdout.strip() == "", "--rm left the container"


def test_detached_then_exec_stop_rm(podman: eh.Podman) -> None:
    name = new_name()
    podman(*podman.run_args(), "--detach", "--name", name, eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        assert podman.inspect(name, "{{.State.Status}}") == "running"
        executed = podman("exec", name, "sh", "-c", "echo exec-$((6*7)) $$; exit 4", check=False)
        assert executed.returncode == 4, executed.describe()
        assert "exec-42" in executed.stdout, executed.describe()
        # The exec'd process is in the container's pid namespace: it is not pid 1 but sees pid 1.
        pid_in_container = int(executed.stdout.split()[1])
        assert pid_in_container > 1, executed.describe()
        podman("stop", "--time", "10", name, timeout=30)
        # SERVE_UNTIL_TERM ends with 0 only if the SIGTERM of `stop` reached it (a SIGKILL gives 137).
        assert podman.inspect(name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
        podman("rm", name)
        assert podman("ps", "--all", "--quiet", "--filter", f"name={name}").stdout.strip() == ""
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_interactive_terminal_through_the_console_socket(podman: eh.Podman) -> None:
    # Not --rm: podman 4.3's `run --rm` sometimes waits out its 20 s conmon timeout when its cleanup
    # process removes the exit file first (with every runtime); one --rm test above is enough.
    name = new_name()
    try:
        status, screen = podman.terminal([*podman.run_args(), "--name", name, "--interactive", "--tty", eh.IMAGE,
                                          "sh"], typed="tty; echo answer-$((6*7)); exit 3\r")
        assert status == 3, screen
        assert "/dev/pts/0" in screen, screen
        assert "answer-42" in screen, screen
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_exec_with_a_terminal(podman: eh.Podman) -> None:
    # conmon passes `exec --tty --console-socket S --detach`: the pty master goes over the socket.
    name = new_name()
    podman(*podman.run_args(), "--detach", "--name", name, eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        status, screen = podman.terminal(["exec", "--interactive", "--tty", name, "sh"],
                                         typed="tty; echo exec-answer-$((6*7)); exit 5\r")
        assert status == 5, screen
        assert "/dev/pts/" in screen, screen
        assert "exec-answer-42" in screen, screen
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_memory_and_pids_limits_are_applied(podman: eh.Podman) -> None:
    name = new_name()
    podman(*podman.run_args(), "--detach", "--name", name, "--memory", "64m", "--pids-limit", "16", eh.IMAGE,
           *eh.SERVE_UNTIL_TERM)
    try:
        pid = int(podman.inspect(name, "{{.State.Pid}}"))
        memory = eh.cgroup_of(pid, "memory")
        pids = eh.cgroup_of(pid, "pids")
        assert memory.name == pids.name and podman.cgroup_parent.strip("/") in str(memory), memory
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
        assert (pids / "pids.max").read_text().strip() == "16"
        # Enforced, not just written: the 17th task can't be forked.
        forked = podman("exec", name, "sh", "-c",
                        "for i in $(seq 24); do sleep 3 & done 2>&1; echo started; kill $(jobs -p) 2>/dev/null",
                        check=False)
        assert "can't fork" in forked.stdout + forked.stderr, forked.describe()
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_pause_and_unpause(podman: eh.Podman) -> None:
    name = new_name()
    podman(*podman.run_args(), "--detach", "--name", name, eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        pid = int(podman.inspect(name, "{{.State.Pid}}"))
        freezer = eh.cgroup_of(pid, "freezer") / "freezer.state"
        podman("pause", name)
        assert podman.inspect(name, "{{.State.Status}}") == "paused"
        assert freezer.read_text().strip() == "FROZEN"
        podman("unpause", name)
        assert podman.inspect(name, "{{.State.Status}}") == "running"
        assert freezer.read_text().strip() == "THAWED"
        assert podman("exec", name, "echo", "thawed").stdout.strip() == "thawed"
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.mark.rootless
def test_rootless_run_rm(podman_rootless: eh.Podman) -> None:
    result = podman_rootless(*podman_rootless.run_args(), "--rm", eh.IMAGE, "sh", "-c",
                             "echo uid=$(id -u) pid=$$; exit 5", check=False)
    assert result.returncode == 5, result.describe()
    assert "uid=0 pid=1" in result.stdout, result.describe()


@pytest.mark.rootless
def test_rootless_detached_exec_stop_rm(podman_rootless: eh.Podman) -> None:
    podman = podman_rootless
    name = new_name()
    podman(*podman.run_args(), "--detach", "--name", name, eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        executed = podman("exec", name, "sh", "-c", "echo exec-$((6*7)); exit 4", check=False)
        assert executed.returncode == 4, executed.describe()
        assert "exec-42" in executed.stdout, executed.describe()
        podman("stop", "--time", "10", name, timeout=30)
        assert podman.inspect(name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
        podman("rm", name)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_update_changes_the_memory_limit(podman: eh.Podman) -> None:
    """`podman update` calls the runtime's `update --resources=FILE ID`."""
    name = new_name()
    podman(*podman.run_args(), "--detach", "--name", name, "--memory", "64m", eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        memory = eh.cgroup_of(int(podman.inspect(name, "{{.State.Pid}}")), "memory")
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
        podman("update", "--memory", "96m", "--memory-swap", "192m", name)
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(96 * 1024 * 1024)
        assert podman.inspect(name, "{{.State.Status}}") == "running"
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
