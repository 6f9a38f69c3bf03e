"""The harness checks itself: bundles run under the runtime, users are what they claim, and the leak
checker notices (and removes) each kind of leak. Generic on purpose: they pass with runc, crun and ocirt."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

wait_for = helpers.wait_for
pid_alive = helpers.pid_alive


def test_bundle_runs_in_foreground_with_its_own_pid_and_uts_namespaces(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "echo $(hostname) $(id -u) $$"])
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ocirt 0 1\n"


def test_config_edits_reach_the_container(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "echo $GREETING; exit 3"])
    bundle.config["process"]["env"].append("GREETING=edited")
    bundle.config["hostname"] = "edited-host"
    result = bundle.run()
    assert result.stdout == "edited\n"
    assert result.returncode == 3


def test_lifecycle_and_cgroup_are_visible_then_gone(make_bundle):
    bundle = make_bundle(args=["sleep", "60"])
    created = bundle.create()
    assert created.returncode == 0, created.stderr
    state = bundle.state()
    assert state["id"] == bundle.id and state["status"] == "created"
    assert Path(state["bundle"]) == bundle.path
    assert pid_alive(state["pid"])
    assert bundle.cgroup_dirs(), "a rootful container with a cgroupsPath has cgroup directories"
    assert bundle.start().returncode == 0
    assert bundle.state()["status"] == "running"
    assert bundle.kill("KILL").returncode == 0
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert bundle.delete().returncode == 0
    assert not pid_alive(state["pid"])
    assert not (bundle.root / bundle.id).exists()
    assert wait_for(lambda: not bundle.cgroup_dirs())


def test_container_output_after_start_lands_in_the_kept_stdout_file(make_bundle, test_dir):
    bundle = make_bundle(args=["echo", "after start"])
    out = test_dir / "container.out"
    assert bundle.create(stdout=out).returncode == 0
    assert bundle.start().returncode == 0
    assert wait_for(lambda: out.read_text() == "after start\n")
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert bundle.delete().returncode == 0


def test_unknown_container_is_an_error(runtime, container_id):
    result = runtime(["state", container_id])
    assert result.returncode != 0
    assert "does not exist" in result.stderr or "not exist" in result.stderr


@pytest.mark.rootless
def test_rootless_bundle_maps_the_user_to_root(make_bundle, unprivileged_user):
    bundle = make_bundle(rootless=True, args=["sh", "-c", "echo $(id -u) $(cat /proc/self/uid_map)"])
    assert bundle.path.stat().st_uid == unprivileged_user.uid
    assert bundle.root.stat().st_uid == unprivileged_user.uid
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0", str(unprivileged_user.uid), "1"]


@pytest.mark.rootless
def test_subid_user_gets_a_multi_range_map(make_bundle, subid_user):
    bundle = make_bundle(user=subid_user, args=["cat", "/proc/self/uid_map", "/proc/self/gid_map"])
    helpers.use_subid_maps(bundle.config, subid_user)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    start, count = subid_user.subuid
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [["0", str(subid_user.uid), "1"], ["1", str(start), str(count)],
                    ["0", str(subid_user.gid), "1"], ["1", str(start), str(count)]]


@pytest.mark.rootless
def test_run_runtime_as_user_drops_every_privilege(test_dir, unprivileged_user, runtime_root):
    probe = test_dir / "probe"
    probe.write_text("#!/bin/sh\necho $(id -u) $(id -g) $(id -G) $XDG_RUNTIME_DIR $HOME $(pwd)\n")
    probe.chmod(0o755)
    user = unprivileged_user
    result = helpers.run_runtime(["ignored"], root=runtime_root, user=user, runtime=str(probe), check=True)
    assert result.stdout.split() == [str(user.uid), str(user.gid), str(user.gid), str(user.runtime_dir),
                                     str(user.home), str(user.home)]


@pytest.mark.rootless
def test_users_exist_and_only_the_subid_user_has_ranges(unprivileged_user, subid_user):
    for user in (unprivileged_user, subid_user):
        assert user.name.startswith(helpers.USER_PREFIX)
        assert pwd.getpwnam(user.name).pw_uid == user.uid
        assert user.home.is_dir() and user.home.stat().st_uid == user.uid
        assert user.runtime_dir.stat().st_uid == user.uid
    subuid = Path("/etc/subuid").read_text().splitlines()
    subgid = Path("/etc/subgid").read_text().splitlines()
    assert not any(line.startswith(unprivileged_user.name + ":") for line in subuid + subgid)
    start, count = subid_user.subuid
    assert f"{subid_user.name}:{start}:{count}" in subuid
    assert f"{subid_user.name}:{start}:{count}" in subgid


# ---- the leak checker, driven on a private tracker so the test's own check stays clean ----------------

@pytest.fixture
def private_bundle(test_dir, busybox_rootfs, harness):
    """A bundle the autouse tracker does not know about, with its own --root."""
    if os.geteuid() != 0:
        pytest.skip("runs a rootful container: needs root")
    root = test_dir / "private-root"
    root.mkdir(mode=0o700)
    bundle = helpers.build_bundle(test_dir / "private-bundle", container_id=helpers.new_container_id(),
                                  root=root, rootfs=busybox_rootfs, args=["sleep", "60"])
    bundle.runtime_path = helpers.runtime_path()
    tracker = helpers.LeakTracker()
    tracker.add_bundle(bundle)
    yield bundle, tracker
    assert tracker.check_and_clean() == [], "the leak checker left something behind"


def test_leak_checker_is_silent_when_nothing_leaked(private_bundle):
    bundle, tracker = private_bundle
    assert bundle.run("--detach").returncode == 0
    assert bundle.delete(force=True).returncode == 0
    assert tracker.check_and_clean() == []


def test_leak_checker_catches_a_state_dir(private_bundle):
    bundle, tracker = private_bundle
    (bundle.root / "ocirt-test-fake").mkdir()
    leaks = tracker.check_and_clean()
    assert leaks == [f"state dir {bundle.root / 'ocirt-test-fake'} remains"]
    assert not (bundle.root / "ocirt-test-fake").exists()


def test_leak_checker_deletes_a_container_left_running(private_bundle):
    bundle, tracker = private_bundle
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    leaks = tracker.check_and_clean()
    assert leaks == [f"state dir {bundle.root / bundle.id} remains"]
    assert not pid_alive(pid)
    assert not bundle.cgroup_dirs()


def test_kept_container_is_deleted_without_a_complaint(private_bundle):
    bundle, tracker = private_bundle
    bundle.keep = True
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    assert tracker.check_and_clean() == []
    assert not pid_alive(pid)


def test_leak_checker_finds_a_container_the_runtime_forgot(private_bundle):
    bundle, tracker = private_bundle
    assert bundle.create().returncode == 0
    pid = bundle.state()["pid"]
    subprocess.run(["rm", "-rf", str(bundle.root / bundle.id)], check=True)
    leaks = tracker.check_and_clean()
    assert f"process {pid} ({helpers.describe_pid(pid)}) survives: root is {bundle.rootfs}" in leaks \
        or any(line.startswith(f"process {pid} ") for line in leaks), leaks
    assert any(line.startswith("cgroup ") and bundle.id in line for line in leaks), leaks
    assert not pid_alive(pid)
    assert not bundle.cgroup_dirs()


def test_leak_checker_catches_a_cgroup_dir_with_a_process(private_bundle):
    bundle, tracker = private_bundle
    cgroup = helpers.CGROUP_ROOT / "pids" / helpers.CGROUP_PARENT / bundle.id
    cgroup.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (cgroup / "cgroup.procs").write_text(str(sleeper.pid))
        leaks = tracker.check_and_clean()
        assert leaks == [f"cgroup {cgroup} remains"]
        assert not cgroup.exists()
        assert not pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_leak_checker_catches_a_mount_in_the_bundle(private_bundle):
    bundle, tracker = private_bundle
    target = bundle.path / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    leaks = tracker.check_and_clean()
    assert leaks == [f"mount {target} remains"]
    assert not helpers.mounts_mentioning([bundle.path])


def test_leak_checker_catches_a_process_working_in_the_bundle(private_bundle):
    bundle, tracker = private_bundle
    sleeper = subprocess.Popen(["sleep", "60"], cwd=bundle.path)
    try:
        leaks = tracker.check_and_clean()
        assert leaks == [f"process {sleeper.pid} (sleep 60) survives: cwd is {bundle.path}"]
        assert not pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_leak_check_runs_after_every_harness_test(harness, make_bundle):
    """The autouse fixture tracks what ``make_bundle`` made; a container left behind would fail this test
    at teardown, so here the tracker is asked directly while the container still exists."""
    bundle = make_bundle(args=["sleep", "60"])
    assert bundle.create().returncode == 0
    assert harness.tracker.check_and_clean() == [f"state dir {bundle.root / bundle.id} remains"]


def test_state_json_is_what_the_runtime_wrote(make_bundle):
    bundle = make_bundle(args=["true"])
    assert bundle.create().returncode == 0
    assert json.loads(bundle.runtime(["state", bundle.id]).stdout) == bundle.state()
    assert bundle.delete(force=True).returncode == 0
    assert not os.path.exists(bundle.root / bundle.id)


LEAKY_TEST = '''
def test_leaves_a_container_behind(make_bundle):
    bundle = make_bundle(args=["sleep", "60"])
    assert bundle.create().returncode == 0

def test_cleans_up(make_bundle):
    bundle = make_bundle(args=["true"])
    assert bundle.run().returncode == 0
'''


@helpers.needs_root("the inner session's leaky test runs a rootful container")
def test_autouse_leak_check_fails_a_leaky_test(test_dir):
    """Runs a two-test session in a child pytest: the leaky test passes its body but errors at teardown,
    naming the state dir; the tidy one just passes."""
    tests_dir = Path(__file__).resolve().parents[1]
    inner = test_dir / "inner"
    inner.mkdir()
    for name in ("conftest.py", "helpers.py"):
        (inner / name).write_text((tests_dir / name).read_text())
    (inner / "test_leaky.py").write_text(LEAKY_TEST)
    env = dict(os.environ, PYTHONPATH=str(helpers.REPO), OCIRT_RUNTIME=helpers.runtime_path())
    env.pop("OCIRT_TEST_STRICT_CGROUPS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(inner)]
    result = subprocess.run(command, cwd=inner, env=env, capture_output=True, text=True, timeout=120)
    assert "2 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert "ERROR at teardown of test_leaves_a_container_behind" in result.stdout
    assert "the test leaked:" in result.stdout and "state dir" in result.stdout


STRAY_CGROUP_TEST = '''
from pathlib import Path

def test_leaves_a_cgroup_nobody_tracks():
    Path("{path}").mkdir()
'''


@helpers.needs_root("makes a cgroup in the host's pids hierarchy")
def test_strict_mode_fails_a_session_that_leaves_a_cgroup(test_dir):
    stray = helpers.CGROUP_ROOT / "pids" / f"{helpers.CGROUP_PARENT}-strict-{helpers.secrets.token_hex(4)}"
    inner = test_dir / "inner"
    inner.mkdir()
    tests_dir = Path(__file__).resolve().parents[1]
    for name in ("conftest.py", "helpers.py"):
        (inner / name).write_text((tests_dir / name).read_text())
    (inner / "test_stray.py").write_text(STRAY_CGROUP_TEST.format(path=stray))
    env = dict(os.environ, PYTHONPATH=str(helpers.REPO), OCIRT_TEST_STRICT_CGROUPS="1")
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
                                cwd=inner, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "1 passed" in result.stdout
        assert f"  {stray}\n" in result.stderr
    finally:
        stray.rmdir()


@helpers.needs_root("makes a cgroup in the host's pids hierarchy")
def test_a_dead_session_is_reaped_and_a_live_one_is_not(busybox_rootfs):
    token = "dead" + helpers.secrets.token_hex(1)
    directory = helpers.session_dir(token)
    directory.mkdir()
    (directory / helpers.SESSION_PID_FILE).write_text("1:0")  # pid 1 did not start at tick 0
    cgroup = helpers.CGROUP_ROOT / "pids" / f"{helpers.ID_PREFIX}{token}0123"
    cgroup.mkdir()
    try:
        assert token not in helpers.live_session_tokens()
        assert token in helpers.reap_stale_sessions()
        assert not directory.exists()
        assert not cgroup.exists()
        assert helpers.SESSION_TOKEN not in helpers.reap_stale_sessions()
        assert helpers.session_dir().exists()
    finally:
        if cgroup.exists():
            cgroup.rmdir()
        helpers.shutil.rmtree(directory, ignore_errors=True)
