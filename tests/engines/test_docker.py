"""Debian's dockerd 20.10 (on our containerd, through the runc v2 shim) with the runtime under test
registered as ``--add-runtime ocirt=<path>`` and chosen per container with ``--runtime ocirt``.

docker adds a network prestart hook even with ``--network none`` and maps the runtime's error text
("no such file or directory", "permission denied") to exit codes 127 and 126.
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


def run_args() -> list[str]:
    return ["run", "--runtime", eh.RUNTIME_NAME, "--network", "none"]


def test_the_runtime_is_registered(docker: eh.Docker) -> None:
    runtimes = docker("info", "--format", "{{json .Runtimes}}").stdout
    assert f'"{eh.RUNTIME_NAME}"' in runtimes and docker.runtime in runtimes, runtimes


def test_run_rm_prints_and_returns_the_exit_code(docker: eh.Docker) -> None:
    name = new_name()
    result = docker(*run_args(), "--rm", "--name", name, eh.IMAGE, "sh", "-c", "echo hello from pid $$; exit 5",
                    check=False)
    assert result.returncode == 5, result.describe()
    assert "hello from pid 1" in result.stdout, result.describe()
    assert docker("ps", "--all", "--quiet", "--filter", f"name={name}").stdout.strip() == ""


def test_detached_exec_stop_rm(docker: eh.Docker) -> None:
    name = new_name()
    docker(*run_args(), "--detach", "--name", name, eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        assert docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "running"
        executed = docker("exec", name, "sh", "-c", "echo exec-$((6*7)); exit 4", check=False)
        assert executed.returncode == 4, executed.describe()
        assert "exec-42" in executed.stdout, executed.describe()
        docker("stop", "--time", "10", name, timeout=30)
        # 0 only if `stop`'s SIGTERM reached the trap; docker's SIGKILL after the timeout gives 137.
        state = docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.strip()
        assert state == "exited 0"
        docker("rm", name)
    finally:
        docker("rm", "--force", name, check=False)


def test_interactive_terminal(docker: eh.Docker) -> None:
    name = new_name()
    status, screen = docker.terminal([*run_args(), "--rm", "--interactive", "--tty", "--name", name, eh.IMAGE,
                                      "sh"], typed="tty; echo answer-$((6*7)); exit 3\r")
    assert status == 3, screen
    assert "/dev/pts/0" in screen, screen
    assert "answer-42" in screen, screen


def test_a_missing_executable_gives_127(docker: eh.Docker) -> None:
    result = docker(*run_args(), "--rm", eh.IMAGE, "/no/such/program", check=False)
    assert result.returncode == 127, result.describe()
    assert "no such file or directory" in result.stderr, result.describe()


def test_pause_and_unpause(docker: eh.Docker) -> None:
    name = new_name()
    docker(*run_args(), "--detach", "--name", name, eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        docker("pause", name)
        assert docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "paused"
        docker("unpause", name)
        assert docker("exec", name, "echo", "thawed").stdout.strip() == "thawed"
    finally:
        docker("rm", "--force", name, check=False)


def test_update_changes_limits_and_keeps_the_rest(docker: eh.Docker) -> None:
    """docker calls `update --resources - ID` with the JSON on stdin, where a zero means "leave as is"."""
    name = new_name()
    docker(*run_args(), "--detach", "--name", name, "--memory", "64m", "--memory-swap", "128m",
           "--pids-limit", "50", eh.IMAGE, *eh.SERVE_UNTIL_TERM)
    try:
        pid = int(docker("inspect", "--format", "{{.State.Pid}}", name).stdout)
        memory, pids = eh.cgroup_of(pid, "memory"), eh.cgroup_of(pid, "pids")
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
        docker("update", "--pids-limit", "40", name)
        assert (pids / "pids.max").read_text().strip() == "40"
        # Only the pids limit was sent (memory as 0): the memory limit must be untouched.
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
        docker("update", "--memory", "96m", "--memory-swap", "192m", name)
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(96 * 1024 * 1024)
        assert (pids / "pids.max").read_text().strip() == "40"
    finally:
        docker("rm", "--force", name, check=False)
