"""runc's exit codes, for the errors users and scripts meet (docs/cli.md has the table, measured with
runc 1.1.5 on this machine): 255 for an exec that fails before its process runs, 1 for every other
refused command, the process's own code otherwise. And a pid file that can't be written is one line that
leaves nothing running. Root and rootless; the same tests pass with ``OCIRT_RUNTIME=/usr/sbin/runc``.
"""

from __future__ import annotations

import os
import time

import helpers
import pytest


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


@pytest.fixture
def running(make_bundle, user) -> helpers.Bundle:
    bundle = make_bundle(user=user, args=["sleep", "600"])
    result = bundle.run("-d")
    assert result.returncode == 0, result.stderr
    yield bundle
    bundle.delete(force=True)


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "internal error" not in result.stderr
    return lines[0]


def processes_with_command_line(text: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").strip() == text.encode():
                        found.append(int(name))
            except OSError:
                continue
    return [pid for pid in found if helpers.pid_alive(pid)]


@pytest.mark.parametrize(("flags", "command", "words"), [
    ([], ["/no-such-binary"], "no such file or directory"),
    ([], ["no-such-binary"], "executable file not found in $PATH"),
    ([], ["/etc/passwd"], "permission denied"),
    (["--cwd", "/no/such/dir"], ["true"], "no such file or directory"),
    (["--user", "nobody"], ["true"], "nobody"),
])
def test_an_exec_that_cannot_start_exits_255(running, flags, command, words):
    result = running.runtime(["exec", *flags, running.id, *command])
    assert result.returncode == 255, result.stderr
    assert words in one_line(result)
    assert running.state()["status"] == "running"


def test_exec_into_a_missing_a_paused_or_a_stopped_container_exits_255(make_bundle, user, runtime, container_id):
    result = runtime(["exec", container_id, "true"], user=user)
    assert result.returncode == 255
    assert "does not exist" in one_line(result)
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    try:
        if user is None:  # rootless, the cgroup v1 freezer is not ours to use
            assert bundle.runtime(["pause", bundle.id]).returncode == 0
            result = bundle.runtime(["exec", bundle.id, "true"])
            assert result.returncode == 255
            assert "paused" in one_line(result)
            assert bundle.runtime(["resume", bundle.id]).returncode == 0
        assert bundle.kill("KILL").returncode == 0
        assert helpers.wait_for(lambda: bundle.state()["status"] == "stopped")
        result = bundle.runtime(["exec", bundle.id, "true"])
        assert result.returncode == 255
        line = one_line(result)
        assert "not running" in line or "stopped" in line, line
    finally:
        bundle.delete(force=True)


def test_the_exec_processs_own_exit_code_passes_through(running):
    assert running.runtime(["exec", running.id, "sh", "-c", "exit 42"]).returncode == 42
    assert running.runtime(["exec", running.id, "sh", "-c", "kill -9 $$"]).returncode == 137


@pytest.mark.parametrize("args", [["/no-such-binary"], ["/etc/passwd"]])
def test_a_run_whose_process_cannot_start_exits_1(make_bundle, user, args):
    bundle = make_bundle(user=user, args=args)
    result = bundle.run()
    assert result.returncode == 1, result.stderr
    one_line(result)
    assert not (bundle.root / bundle.id).exists()


def test_commands_on_a_missing_or_stopped_container_exit_1(make_bundle, user, runtime, container_id):
    for command in (["state"], ["start"], ["kill"], ["delete"]):
        result = runtime([*command, container_id], user=user)
        assert result.returncode == 1, (command, result.stderr)
        assert "does not exist" in one_line(result)
    bundle = make_bundle(user=user, args=["true"])
    assert bundle.create().returncode == 0
    try:
        assert bundle.start().returncode == 0
        assert helpers.wait_for(lambda: bundle.state()["status"] == "stopped")
        # runtime.md: signalling a container that is neither created nor running MUST be an error.
        result = bundle.kill("TERM")
        assert result.returncode == 1
        assert "not running" in one_line(result)
        assert bundle.start().returncode == 1
    finally:
        bundle.delete(force=True)


# -- pid files -------------------------------------------------------------------------------------------------
def assert_nothing_of(bundle: helpers.Bundle, command_line: str) -> None:
    assert not (bundle.root / bundle.id).exists(), "no state is left"
    assert not processes_with_command_line(command_line), "no process is left"
    assert not bundle.cgroup_dirs(), "no cgroup is left"


@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_create_with_a_pid_file_it_cannot_write_is_one_line_and_leaves_nothing(make_bundle, user, where):
    marker = f"sleep {600 + os.getpid() % 97}"
    bundle = make_bundle(user=user, args=marker.split())
    if where == "missing-directory":
        pid_file = bundle.path / "no-such-dir" / "init.pid"
    else:
        # The directory check passes; the file can't be put in place (a directory has its name).
        pid_file = bundle.path / "taken"
        pid_file.mkdir()
        (pid_file / "keep").touch()
        if user is not None:
            helpers.chown_tree(pid_file, user.uid, user.gid)
    for command in ("create", "run"):
        result = bundle.runtime([command, *(["-d"] if command == "run" else []), "--pid-file", pid_file,
                                 "--bundle", bundle.path, bundle.id])
        assert result.returncode == 1, result.stderr
        # ocirt: "cannot write pid file <path>: <reason>"; runc names its temporary file next to it.
        assert str(pid_file.parent) in one_line(result)
        assert_nothing_of(bundle, marker)


@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_exec_with_a_pid_file_it_cannot_write_exits_255_and_leaves_no_process(running, where):
    marker = f"sleep {700 + os.getpid() % 97}"
    if where == "missing-directory":
        pid_file = running.path / "no-such-dir" / "exec.pid"
    else:
        pid_file = running.path / "taken"
        pid_file.mkdir()
        (pid_file / "keep").touch()
        if running.user is not None:
            helpers.chown_tree(pid_file, running.user.uid, running.user.gid)
    for detach in ([], ["-d"]):
        result = running.runtime(["exec", *detach, "--pid-file", pid_file, running.id, *marker.split()],
                                 timeout=20)
        assert result.returncode == 255, result.stderr
        assert str(pid_file.parent) in one_line(result)
        time.sleep(0.1)
        assert not processes_with_command_line(marker)
    assert running.state()["status"] == "running"
