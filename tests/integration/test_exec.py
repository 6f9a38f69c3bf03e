"""`exec`: a new process in a running container's namespaces and cgroups, with runc's flags.

Every behaviour is shown as root and rootless (the ``unprivileged_user`` fixture, container root mapped
to that user), through the runtime binary, against real containers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import helpers
import pytest

wait_for = helpers.wait_for


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    """None for a rootful runtime, else the unprivileged user the runtime runs as."""
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


@pytest.fixture
def running(make_bundle, user) -> helpers.Bundle:
    """A running container whose init sleeps; deleted at the end of the test."""
    bundle = make_bundle(user=user, args=["sleep", "600"])
    result = bundle.run("-d")
    assert result.returncode == 0, result.stderr
    yield bundle
    bundle.delete(force=True)


def exec_in(bundle: helpers.Bundle, *args: str | os.PathLike, **kwargs):
    return bundle.runtime(["exec", *args], **kwargs)


def host_pid_file(bundle: helpers.Bundle, name: str = "exec.pid") -> Path:
    """A pid file path the runtime's user may write: the bundle directory belongs to that user."""
    return bundle.path / name


# -- namespaces and cgroups ----------------------------------------------------------------------------------
def test_exec_joins_every_namespace_of_the_init(running):
    pid_file = host_pid_file(running)
    result = exec_in(running, "--detach", "--pid-file", pid_file, running.id, "sleep", "600")
    assert result.returncode == 0, result.stderr
    text = pid_file.read_text()
    assert text.isdigit(), f"pid file holds {text!r}: decimal without a newline expected"
    exec_pid = int(text)
    init_pid = running.state()["pid"]
    names = sorted(os.listdir(f"/proc/{init_pid}/ns"))
    assert {"mnt", "pid", "uts", "ipc", "net"} <= set(names)
    init_ns = {name: os.readlink(f"/proc/{init_pid}/ns/{name}") for name in names}
    exec_ns = {name: os.readlink(f"/proc/{exec_pid}/ns/{name}") for name in names}
    assert exec_ns == init_ns
    ours = {name: os.readlink(f"/proc/self/ns/{name}") for name in names}
    # The comparison means something only if the container's namespaces are not the host's.
    proc_names = {"mount": "mnt", "network": "net"}
    created = [proc_names.get(ns["type"], ns["type"]) for ns in running.config["linux"]["namespaces"]
               if "path" not in ns]
    assert {"mnt", "pid", "uts"} <= set(created)
    for name in created:
        assert init_ns[name] != ours[name], name
    # The same cgroups too (every hierarchy the init is in).
    assert Path(f"/proc/{exec_pid}/cgroup").read_text() == Path(f"/proc/{init_pid}/cgroup").read_text()
    # Inside, the exec'd process is a member of the container's pid namespace, not pid 1.
    status = Path(f"/proc/{exec_pid}/status").read_text()
    nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid[0] == str(exec_pid) and len(nspid) == 2 and int(nspid[1]) > 1


def test_exec_sees_the_init_as_pid_1_and_the_container_hostname(running):
    result = exec_in(running, running.id, "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ocirt\nsleep 600 "


# -- user, cwd, env, --process -------------------------------------------------------------------------------
def test_user_cwd_and_env_flags_take_effect(running):
    # A rootless container with a single-id map has only uid/gid 0; a rootful one any id.
    ids = ["--user", "0:0"] if running.rootless else ["--user", "1000:1001", "--additional-gids", "5,7"]
    result = exec_in(running, *ids, "--cwd", "/tmp", "--env", "FOO=bar baz", "-e", "PATH=/bin",
                     running.id, "sh", "-c", 'id -u; id -g; id -G; pwd; echo "$FOO"; echo "$PATH"')
    assert result.returncode == 0, result.stderr
    uid, gid, groups, cwd, foo, path = result.stdout.splitlines()
    if running.rootless:
        assert (uid, gid, groups) == ("0", "0", "0")
    else:
        assert (uid, gid) == ("1000", "1001")
        assert set(groups.split()) == {"1001", "5", "7"}
    assert cwd == "/tmp"
    assert foo == "bar baz"
    assert path == "/bin", "a later --env entry overrides the container's own"


def test_exec_inherits_the_container_process_env_and_cwd_by_default(running):
    result = exec_in(running, running.id, "sh", "-c", 'pwd; echo "$TERM"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/\nxterm\n"


def test_process_file_defines_the_whole_process(running):
    process = {"args": ["sh", "-c", 'echo "$GREETING"; pwd; id -u; exit 4'], "cwd": "/tmp",
               "env": ["GREETING=from the file", "PATH=/bin:/usr/bin"], "user": {"uid": 0, "gid": 0}}
    path = running.path / "process.json"
    path.write_text(json.dumps(process))
    result = exec_in(running, "--process", path, running.id)
    assert result.returncode == 4, result.stderr
    assert result.stdout == "from the file\n/tmp\n0\n"


@pytest.mark.parametrize(("process", "message"), [
    ({"args": "echo", "cwd": "/"}, '$.args: must be of type array, not string "echo"'),
    ({"args": ["true"], "cwd": "tmp"}, '$.cwd: "tmp" is not an absolute path'),
    ({"args": ["true"], "cwd": "/", "user": {"uid": -1, "gid": 0}}, "$.user.uid"),
], ids=["args-not-array", "relative-cwd", "negative-uid"])
def test_an_invalid_process_file_is_refused_naming_the_json_path(running, process, message):
    path = running.path / "process.json"
    path.write_text(json.dumps(process))
    result = exec_in(running, "--process", path, running.id)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, "one line for people"


def test_an_unreadable_or_malformed_process_file_is_an_error(running):
    malformed = running.path / "malformed.json"
    malformed.write_text('{"args": [')
    result = exec_in(running, "--process", malformed, running.id)
    assert result.returncode != 0 and "malformed JSON" in result.stderr
    missing = running.path / "missing.json"
    result = exec_in(running, "--process", missing, running.id)
    assert result.returncode != 0
    assert f"cannot read process file {missing}: no such file or directory" in result.stderr


# -- exit codes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("script", "code"), [
    ("exit 7", 7), ("exit 0", 0), ("kill -KILL $$", 128 + 9), ("kill -TERM $$", 128 + 15),
], ids=["exit-7", "exit-0", "sigkill", "sigterm"])
def test_the_exit_code_of_the_exec_process_is_the_runtimes(running, script, code):
    result = exec_in(running, running.id, "sh", "-c", script)
    assert result.returncode == code, result.stderr


def test_a_detached_exec_writes_its_pid_file_before_returning(running):
    pid_file = host_pid_file(running)
    result = exec_in(running, "-d", "--pid-file", pid_file, running.id, "sh", "-c", "exit 5")
    assert result.returncode == 0, result.stderr
    assert pid_file.read_text().isdigit()


# -- error paths -------------------------------------------------------------------------------------------
def test_exec_into_a_missing_container_says_does_not_exist(runtime, user, container_id):
    result = runtime(["exec", container_id, "true"], user=user)
    assert result.returncode != 0
    assert "does not exist" in result.stderr


def test_exec_into_a_stopped_container_says_container_not_running(make_bundle, user):
    bundle = make_bundle(user=user, args=["true"])
    assert bundle.create().returncode == 0
    assert bundle.start().returncode == 0
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    result = exec_in(bundle, bundle.id, "true")
    assert result.returncode != 0
    assert "container not running" in result.stderr
    assert bundle.delete().returncode == 0


# runc 1.1.5 exits 255 for every exec that fails before its process runs; engines (docker, podman) tell a
# missing binary (127) from a refused one (126) by these texts, not by the code.
def test_exec_of_a_missing_binary_exits_255_with_no_such_file(running):
    result = exec_in(running, running.id, "no-such-binary")
    assert result.returncode == 255
    assert "no such file or directory" in result.stderr
    result = exec_in(running, running.id, "/bin/no-such-binary")
    assert result.returncode == 255
    assert "no such file or directory" in result.stderr


def test_exec_of_a_file_that_is_not_executable_exits_255_with_permission_denied(running):
    result = exec_in(running, running.id, "/etc/passwd")
    assert result.returncode == 255
    assert "permission denied" in result.stderr


def test_a_failed_exec_leaves_the_container_running_and_usable(running):
    assert exec_in(running, running.id, "no-such-binary").returncode == 255
    assert running.state()["status"] == "running"
    result = exec_in(running, running.id, "echo", "still fine")
    assert (result.returncode, result.stdout) == (0, "still fine\n")


@pytest.mark.parametrize(("flag", "message"), [
    ("abc", "invalid --user 'abc': use numeric uid[:gid]"),
    ("a:1", "invalid --user 'a:1': use numeric uid[:gid]"),
    ("1:", "invalid --user '1:': use numeric uid[:gid]"),
    ("1:2:3", "invalid --user '1:2:3': use numeric uid[:gid]"),
    ("-1", "invalid --user '-1': use numeric uid[:gid]"),
    ("\u00b2", "invalid --user '\u00b2': use numeric uid[:gid]"),
    ("99999999999", "invalid --user '99999999999': id out of range"),
    ("9" * 100_000, "invalid --user '" + "9" * 64 + "': use numeric uid[:gid]"),
], ids=["name", "name-uid", "empty-gid", "three-parts", "negative", "superscript", "too-big", "huge"])
def test_a_bad_user_string_fails_fast_with_an_exact_message(running, flag, message):
    started = time.monotonic()
    result = exec_in(running, "--user", flag, running.id, "true", timeout=10)
    assert time.monotonic() - started < 5
    assert result.returncode == 255  # runc: every exec that cannot start
    assert result.stderr == f"ocirt: {message}\n" or result.stderr.endswith(f": {message}\n")


def test_a_user_the_container_cannot_map_is_an_error_rootless(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    try:
        result = exec_in(bundle, "--user", "1000", bundle.id, "true", timeout=10)
        assert result.returncode != 0
        assert result.stderr.strip(), "the failure is explained"
        assert bundle.state()["status"] == "running"
    finally:
        bundle.delete(force=True)


# -- stdio, capabilities, paused ---------------------------------------------------------------------------------
def test_a_foreground_exec_without_a_terminal_passes_stdin_and_stdout_through(running):
    result = exec_in(running, running.id, "sh", "-c", "tr a-z A-Z; echo done >&2", input="piped text\n")
    assert result.returncode == 0
    assert result.stdout == "PIPED TEXT\n"
    assert result.stderr == "done\n"


def test_cap_adds_a_capability_to_the_exec_process_only(running):
    def effective(*flags: str) -> int:
        result = exec_in(running, *flags, running.id, "sh", "-c", "grep CapEff /proc/self/status")
        assert result.returncode == 0, result.stderr
        return int(result.stdout.split()[1], 16)

    cap_sys_admin = 1 << 21
    assert not effective() & cap_sys_admin
    assert effective("--cap", "CAP_SYS_ADMIN") & cap_sys_admin
    assert effective("--cap", "sys_admin") & cap_sys_admin
    assert not effective() & cap_sys_admin, "the container's own set is unchanged"


def test_exec_into_a_paused_container_is_refused_unless_ignore_paused(make_bundle):
    """With --ignore-paused the new process joins the frozen cgroup and waits there (as with runc): the
    detached exec completes once the container is resumed."""
    import subprocess

    bundle = make_bundle(args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    waiting = None
    try:
        assert bundle.runtime(["pause", bundle.id]).returncode == 0
        result = exec_in(bundle, bundle.id, "true", timeout=10)
        assert result.returncode != 0
        assert "paused" in result.stderr
        pid_file = host_pid_file(bundle)
        waiting = subprocess.Popen([bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root),
                                    "exec", "--ignore-paused", "-d", "--pid-file", str(pid_file), bundle.id,
                                    "sh", "-c", "exit 0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=helpers.base_env())
        time.sleep(0.3)
        assert waiting.poll() is None, "the exec'd process is frozen with the container"
        assert not pid_file.exists()
        assert bundle.runtime(["resume", bundle.id]).returncode == 0
        assert waiting.wait(timeout=10) == 0
        assert pid_file.read_text().isdigit()
    finally:
        bundle.runtime(["resume", bundle.id])
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        bundle.delete(force=True)


def test_a_foreground_exec_forwards_signals_to_its_process(running, test_dir):
    import signal
    import subprocess

    out = running.path / "forward.out"
    identity: dict = {}
    if running.user is not None:
        identity = {"user": running.user.uid, "group": running.user.gid, "extra_groups": [],
                    "cwd": running.user.home}
    with open(out, "w") as out_file:
        proc = subprocess.Popen([running.runtime_path or helpers.runtime_path(), "--root", str(running.root),
                                 "exec", running.id, "sh", "-c",
                                 'trap "exit 42" TERM; echo ready; while :; do sleep 0.05; done'],
                                stdin=subprocess.DEVNULL, stdout=out_file, stderr=subprocess.DEVNULL,
                                env=helpers.base_env(running.user), **identity)
    try:
        assert wait_for(lambda: out.read_text() == "ready\n"), out.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
