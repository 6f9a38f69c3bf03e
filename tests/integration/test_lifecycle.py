"""The rootful lifecycle driven through the CLI: create, start, run (and its flags), state, kill, delete,
list; status transitions, the PID-reuse guard, and concurrent commands on one id."""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import helpers
import pytest

wait_for = helpers.wait_for
pid_alive = helpers.pid_alive

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the rootful lifecycle needs root")


def status_of(bundle) -> str:
    return bundle.state()["status"]


def signal_caught(bundle, test_dir: Path, name: str) -> Path:
    """A container that records each signal it gets in a file of a bind-mounted host directory."""
    out = test_dir / f"signals-{name}"
    out.mkdir()
    bundle.config["mounts"].append({"destination": "/out", "type": "bind", "source": str(out),
                                    "options": ["rbind", "rw"]})
    script = ("for s in HUP USR1 USR2 TERM; do trap \"echo $s >> /out/got\" $s; done; "
              "echo ready > /out/ready; while :; do sleep 0.05; done")
    bundle.config["process"]["args"] = ["sh", "-c", script]
    return out


# ---- create / start / state / kill / delete -------------------------------------------------------------

def test_status_moves_created_running_stopped_and_delete_removes_everything(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "sleep 1"])
    result = bundle.create()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    state = bundle.state()
    assert state["status"] == "created"
    pid = state["pid"]
    assert pid_alive(pid)
    assert bundle.start().returncode == 0
    assert status_of(bundle) == "running"
    assert bundle.state()["pid"] == pid
    assert wait_for(lambda: status_of(bundle) == "stopped")
    assert bundle.state()["pid"] == 0
    assert bundle.delete().returncode == 0
    assert not (bundle.root / bundle.id).exists()
    assert not bundle.cgroup_dirs()
    again = bundle.runtime(["state", bundle.id])
    assert again.returncode != 0 and "does not exist" in again.stderr


def test_run_returns_the_exit_code_and_128_plus_signal(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "exit 42"])
    assert bundle.run().returncode == 42
    assert not (bundle.root / bundle.id).exists()
    # In its own pid namespace the shell is pid 1, which the kernel shields from its own SIGKILL.
    killed = make_bundle(args=["sh", "-c", "kill -9 $$"])
    killed.config = helpers.without_namespace(killed.config, "pid")
    assert killed.run().returncode == 137


@pytest.mark.parametrize(("sig", "own_pid_namespace", "code"), [("KILL", True, 137), ("TERM", False, 143)])
def test_foreground_run_killed_from_outside_returns_128_plus_signal(make_bundle, sig, own_pid_namespace, code):
    bundle = make_bundle(args=["sleep", "100"])
    if not own_pid_namespace:
        # A namespace's pid 1 without a handler never sees SIGTERM from outside: run sleep as a plain pid.
        bundle.config = helpers.without_namespace(bundle.config, "pid")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(bundle.run)
        try:
            assert wait_for(lambda: (bundle.root / bundle.id).exists()
                            and bundle.runtime(["state", bundle.id]).stdout.count('"running"') == 1)
            assert bundle.kill(sig).returncode == 0
            result = running.result(timeout=20)
        finally:
            bundle.delete(force=True)
    assert result.returncode == code, result.stderr
    assert not (bundle.root / bundle.id).exists()


def test_run_detached_writes_the_pid_file_and_leaves_a_running_container(make_bundle, test_dir):
    bundle = make_bundle(args=["sleep", "100"])
    pid_file = test_dir / "container.pid"
    result = bundle.run("-d", "--pid-file", str(pid_file))
    try:
        assert result.returncode == 0, result.stderr
        state = bundle.state()
        assert state["status"] == "running"
        assert pid_file.read_text() == str(state["pid"])
        assert Path(f"/proc/{state['pid']}/cmdline").read_bytes() == b"sleep\x00100\x00"
    finally:
        assert bundle.delete(force=True).returncode == 0
    assert not pid_alive(state["pid"])


def test_create_pid_file_names_the_init(make_bundle, test_dir):
    bundle = make_bundle(args=["true"])
    pid_file = test_dir / "sub" / "init.pid"
    pid_file.parent.mkdir()
    assert bundle.create("--pid-file", str(pid_file)).returncode == 0
    try:
        assert int(pid_file.read_text()) == bundle.state()["pid"]
    finally:
        bundle.delete(force=True)


def test_run_keep_leaves_the_stopped_container_for_delete(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "exit 3"])
    result = bundle.run("--keep")
    assert result.returncode == 3
    state = bundle.state()
    assert state["status"] == "stopped" and state["pid"] == 0
    assert bundle.delete().returncode == 0
    assert not (bundle.root / bundle.id).exists()


def test_preserve_fds_passes_extra_descriptors(make_bundle, test_dir):
    bundle = make_bundle(args=["sh", "-c", "echo through-fd3 >&3; echo through-fd4 >&4; "
                                           "ls /proc/self/fd | sort -n | tr '\\n' ' '"])
    bundle.write()
    out3, out4 = test_dir / "fd3", test_dir / "fd4"
    command = [helpers.runtime_path(), "--root", str(bundle.root), "run", "--preserve-fds", "2",
               "--bundle", str(bundle.path), bundle.id]
    script = f"exec {shlex.join(command)} 3>{shlex.quote(str(out3))} 4>{shlex.quote(str(out4))} 5</dev/null"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                            env=helpers.base_env())
    assert result.returncode == 0, result.stderr
    assert out3.read_text() == "through-fd3\n"
    assert out4.read_text() == "through-fd4\n"
    # 5 was not preserved; ls itself opens one more descriptor for the directory it lists.
    fds = [int(x) for x in result.stdout.split()]
    assert 5 not in fds[:-1] and fds[:5] == [0, 1, 2, 3, 4]


def test_no_pivot_still_confines_the_container_to_its_rootfs(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "ls -a /; echo ---; ls -a /.."])
    result = bundle.run("--no-pivot")
    assert result.returncode == 0, result.stderr
    top, parent = result.stdout.split("---\n")
    # The root is the rootfs (plus the mount points made for the config's mounts), and `..` leads nowhere.
    expected = set(os.listdir(bundle.rootfs)) | {".", ".."}
    assert set(top.split()) == expected
    assert set(parent.split()) == expected


def test_session_keyring_is_new_unless_no_new_keyring(make_bundle):
    def keyring_names() -> str:
        return Path("/proc/keys").read_text()

    fresh = make_bundle(args=["sleep", "100"])
    created = fresh.create()
    assert created.returncode == 0, created.stderr
    try:
        assert f"_ses.{fresh.id}" in keyring_names()
    finally:
        fresh.delete(force=True)
    inherited = make_bundle(args=["sleep", "100"])
    assert inherited.create("--no-new-keyring").returncode == 0
    try:
        assert f"_ses.{inherited.id}" not in keyring_names()
        assert inherited.state()["status"] == "created"
    finally:
        inherited.delete(force=True)


def test_kill_by_name_and_number(make_bundle, test_dir):
    bundle = make_bundle()
    out = signal_caught(bundle, test_dir, "names")
    assert bundle.run("-d").returncode == 0
    try:
        assert wait_for(lambda: (out / "ready").exists())
        expected = []
        for sig, name in (("HUP", "HUP"), ("SIGUSR1", "USR1"), ("12", "USR2"), ("sigterm", "TERM")):
            assert bundle.kill(sig).returncode == 0, sig
            expected.append(name)
            assert wait_for(lambda e=list(expected): (out / "got").exists()
                            and (out / "got").read_text().split() == e), (sig, expected)
        assert status_of(bundle) == "running"
        bad = bundle.runtime(["kill", bundle.id, "NOSUCHSIG"])
        assert bad.returncode != 0 and "signal" in bad.stderr
        assert bundle.kill("9").returncode == 0
        assert wait_for(lambda: status_of(bundle) == "stopped")
    finally:
        bundle.delete(force=True)


def test_kill_defaults_to_sigterm(make_bundle, test_dir):
    bundle = make_bundle()
    out = signal_caught(bundle, test_dir, "default")
    assert bundle.run("-d").returncode == 0
    try:
        assert wait_for(lambda: (out / "ready").exists())
        assert bundle.runtime(["kill", bundle.id]).returncode == 0
        assert wait_for(lambda: (out / "got").exists() and (out / "got").read_text() == "TERM\n")
    finally:
        bundle.delete(force=True)


def test_kill_all_reaches_every_process_in_the_cgroup(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "sleep 100 & sleep 100 & wait"])
    assert bundle.run("-d").returncode == 0
    try:
        pid = bundle.state()["pid"]
        cgroup = helpers.CGROUP_ROOT / "pids" / _cgroup_of(pid, "pids").lstrip("/")
        assert wait_for(lambda: len((cgroup / "cgroup.procs").read_text().split()) == 3)
        members = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        assert bundle.runtime(["kill", "--all", bundle.id, "KILL"]).returncode == 0
        assert wait_for(lambda: not any(pid_alive(p) for p in members))
        assert wait_for(lambda: status_of(bundle) == "stopped")
    finally:
        bundle.delete(force=True)


def _cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def test_delete_force_kills_a_running_container_and_its_cgroup(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.run("-d").returncode == 0
    pid = bundle.state()["pid"]
    assert bundle.cgroup_dirs()
    refused = bundle.delete()
    assert refused.returncode != 0
    assert pid_alive(pid)
    assert bundle.delete(force=True).returncode == 0
    assert not pid_alive(pid)
    assert not (bundle.root / bundle.id).exists()
    assert not bundle.cgroup_dirs()


def test_delete_of_a_created_container_needs_force(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    # runtime.md: deleting a container that is not stopped is an error (runc makes an exception here).
    refused = bundle.delete()
    assert refused.returncode != 0 and "created" in refused.stderr
    assert pid_alive(pid) and bundle.state()["status"] == "created"
    assert bundle.delete(force=True).returncode == 0
    assert not pid_alive(pid)
    assert not (bundle.root / bundle.id).exists()


# ---- state ----------------------------------------------------------------------------------------------

def test_state_has_the_spec_fields_and_the_annotations(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    bundle.config["annotations"] = {"org.example.key": "value", "other": ""}
    assert bundle.create().returncode == 0
    try:
        raw = bundle.runtime(["state", bundle.id], check=True).stdout
        state = json.loads(raw)
        assert state["ociVersion"] == bundle.config["ociVersion"]
        assert state["id"] == bundle.id
        assert state["status"] == "created"
        assert isinstance(state["pid"], int) and state["pid"] > 0
        assert state["bundle"] == str(bundle.path)
        assert state["annotations"] == {"org.example.key": "value", "other": ""}
        from ocirt.spec.validate import validate_state

        assert validate_state(state) == []
    finally:
        bundle.delete(force=True)


def test_state_has_runc_shape(make_bundle, test_dir):
    """Same key set and the same two-space indentation as `runc state`."""
    ours = make_bundle(args=["sleep", "100"])
    theirs = make_bundle(args=["sleep", "100"])
    runc_root = test_dir / "runc-root"
    assert ours.create().returncode == 0
    theirs.write()
    created = helpers.run_runtime(["create", "--bundle", theirs.path, theirs.id], root=runc_root,
                                  runtime="/usr/sbin/runc")
    try:
        assert created.returncode == 0, created.stderr
        runc_text = helpers.run_runtime(["state", theirs.id], root=runc_root, runtime="/usr/sbin/runc",
                                        check=True).stdout
        our_text = ours.runtime(["state", ours.id], check=True).stdout
        runc_state, our_state = json.loads(runc_text), json.loads(our_text)
        assert set(our_state) == set(runc_state)

        def indents(text: str) -> set[str]:
            return {line[:len(line) - len(line.lstrip())] for line in text.splitlines()}

        assert indents(our_text) == indents(runc_text) == {"", "  "}
        assert our_text.startswith("{\n  \"ociVersion\": ")
        assert runc_state["status"] == our_state["status"] == "created"
    finally:
        helpers.run_runtime(["delete", "--force", theirs.id], root=runc_root, runtime="/usr/sbin/runc")
        ours.delete(force=True)


def test_a_container_whose_init_died_reads_stopped(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.run("-d").returncode == 0
    pid = bundle.state()["pid"]
    os.kill(pid, 9)
    assert wait_for(lambda: status_of(bundle) == "stopped")
    assert bundle.state()["pid"] == 0
    killed = bundle.kill("TERM")
    assert killed.returncode != 0 and "container not running" in killed.stderr
    assert bundle.delete().returncode == 0


def test_pid_reuse_guard_reads_stopped_when_the_start_time_differs(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.run("-d").returncode == 0
    state_file = bundle.root / bundle.id / "state.json"
    saved = state_file.read_text()
    try:
        data = json.loads(saved)
        pid = bundle.state()["pid"]
        data["ocirt"]["start_time"] += 1
        state_file.write_text(json.dumps(data))
        assert bundle.state()["status"] == "stopped"
        # The live process at that pid is someone else's now: kill must not reach it.
        killed = bundle.kill("KILL")
        assert killed.returncode != 0 and "container not running" in killed.stderr
        assert pid_alive(pid)
    finally:
        state_file.write_text(saved)
        assert bundle.state()["status"] == "running"
        assert bundle.delete(force=True).returncode == 0


# ---- list -----------------------------------------------------------------------------------------------

def test_list_in_every_format(make_bundle, runtime):
    empty = runtime(["list", "-q"])
    assert empty.returncode == 0 and empty.stdout == ""
    first = make_bundle(args=["sleep", "100"])
    second = make_bundle(args=["sh", "-c", "exit 0"])
    assert first.create().returncode == 0
    assert second.run("--keep").returncode == 0
    try:
        quiet = runtime(["list", "-q"], check=True).stdout.split()
        assert sorted(quiet) == sorted([first.id, second.id])
        listed = json.loads(runtime(["list", "--format", "json"], check=True).stdout)
        by_id = {entry["id"]: entry for entry in listed}
        assert set(by_id) == {first.id, second.id}
        assert by_id[first.id]["status"] == "created" and by_id[first.id]["pid"] > 0
        assert by_id[second.id]["status"] == "stopped" and by_id[second.id]["pid"] == 0
        assert by_id[first.id]["bundle"] == str(first.path)
        for entry in listed:
            assert {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"} <= set(entry)
            assert entry["owner"] == "root"
        table = runtime(["list", "--format", "table"], check=True).stdout.splitlines()
        assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        rows = {line.split()[0]: line.split() for line in table[1:]}
        assert rows[first.id][1:4] == [str(by_id[first.id]["pid"]), "created", str(first.path)]
        assert rows[second.id][1:3] == ["0", "stopped"]
        assert runtime(["list"], check=True).stdout == "\n".join(table) + "\n"
        bad = runtime(["list", "--format", "yaml"])
        assert bad.returncode != 0 and "yaml" in bad.stderr
    finally:
        first.delete(force=True)
        second.delete(force=True)


# ---- concurrency ----------------------------------------------------------------------------------------

def test_parallel_creates_of_one_id_let_exactly_one_win(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    bundle.write()

    def create_once(_):
        return bundle.runtime(["create", "--bundle", bundle.path, bundle.id])

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(create_once, range(10)))
    try:
        winners = [r for r in results if r.returncode == 0]
        losers = [r for r in results if r.returncode != 0]
        assert len(winners) == 1, [r.stderr for r in results]
        for loser in losers:
            assert "already exists" in loser.stderr, loser.stderr
            assert loser.stderr.count("\n") == 1
        assert bundle.state()["status"] == "created"
        assert len(bundle.cgroup_dirs()) > 0
    finally:
        assert bundle.delete(force=True).returncode == 0
    assert not bundle.cgroup_dirs()


def test_commands_on_one_id_wait_for_each_other(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.create().returncode == 0
    directory = os.open(bundle.root / bundle.id, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Holding the container's lock as another command would: delete must wait for it.
        fcntl.flock(directory, fcntl.LOCK_EX)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(bundle.delete, force=True)
            time.sleep(0.5)
            assert not pending.done()
            assert (bundle.root / bundle.id / "state.json").exists()
            fcntl.flock(directory, fcntl.LOCK_UN)
            assert pending.result(timeout=20).returncode == 0
    finally:
        os.close(directory)
        bundle.delete(force=True)
    assert not (bundle.root / bundle.id).exists()


def test_parallel_kill_and_delete_on_one_container_stay_consistent(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.run("-d").returncode == 0
    pid = bundle.state()["pid"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(bundle.kill, "KILL") for _ in range(3)]
        futures += [pool.submit(bundle.delete, force=True) for _ in range(3)]
        results = [f.result(timeout=30) for f in futures]
    deletes = results[3:]
    assert all(r.returncode == 0 for r in deletes), [r.stderr for r in deletes]
    for kill in results[:3]:
        assert kill.returncode == 0 or "not running" in kill.stderr or "does not exist" in kill.stderr, kill.stderr
    assert not pid_alive(pid)
    assert not (bundle.root / bundle.id).exists()
