"""A runtime killed between two steps leaves nothing that `delete --force` can't reclaim (issue 16, item 6).

An OOM kill, a killed shim or a reboot of the engine can stop `create`, `start`, `exec` or `delete` at any
point. ``OCIRT_TEST_CRASH_AT=N`` (ocirt/faults.py) makes the runtime SIGKILL itself at its N-th crash point,
each placed after a step that changes something durable. Every point of every command is hit in turn; after
each, `delete --force` must leave no state directory, process, mount or cgroup, and the id must be usable
again. A second test kills the runtime from outside after a random delay, where no crash point sits.
The last ones kill it from outside at one syscall (strace's fault injection), so they need no crash point
and fail on 10b516e for the reason of the issue: a directory without state.json that blocked the id, and
the cgroups a killed create made.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import helpers
import pytest

CRASH_ENV = "OCIRT_TEST_CRASH_AT"
MAX_POINTS = 60


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


def limited_bundle(make_bundle, user, args):
    bundle = make_bundle(user=user, args=args)
    if user is None:
        # A limit, so that create makes cgroup directories a crash can strand.
        bundle.config["linux"]["resources"] = {"pids": {"limit": 64}}
    return bundle


def assert_reclaimed(bundle: helpers.Bundle, what: str) -> None:
    """delete --force reclaims everything, and the id can be created (and deleted) again."""
    bundle.delete(force=True)
    state_dirs = sorted(p.name for p in bundle.root.iterdir()) if bundle.root.is_dir() else []
    assert state_dirs == [], what
    assert helpers.wait_for(lambda: not helpers.processes_using([bundle.path, bundle.rootfs]), 5), \
        f"{what}: {helpers.processes_using([bundle.path, bundle.rootfs])}"
    assert helpers.mounts_mentioning([bundle.path, bundle.rootfs]) == [], what
    assert bundle.cgroup_dirs() == [], what
    again = bundle.create()
    assert again.returncode == 0, f"{what}: create again: {again.stderr}"
    assert bundle.delete(force=True).returncode == 0, what
    assert bundle.cgroup_dirs() == [], what


def crash_every_point(bundle: helpers.Bundle, command, prepare=None) -> int:
    """Run ``command(env)`` with a crash at point 1, 2, ... until it completes; reclaim after each crash.
    Returns the number of crash points the command passed."""
    for point in range(1, MAX_POINTS + 1):
        if prepare is not None:
            prepare()
        result = command({CRASH_ENV: str(point)})
        if result.returncode != -9:
            assert result.returncode == 0, f"without a crash at point {point}: {result.stderr}"
            bundle.delete(force=True)
            assert_reclaimed(bundle, f"after a full run (point {point} not reached)")
            return point - 1
        assert result.stderr == "", f"point {point}: a killed runtime printed {result.stderr!r}"
        assert_reclaimed(bundle, f"crash at point {point}")
    raise AssertionError(f"more than {MAX_POINTS} crash points: the loop never completed")


def created(bundle: helpers.Bundle) -> None:
    result = bundle.create()
    assert result.returncode == 0, result.stderr


def started(bundle: helpers.Bundle) -> None:
    created(bundle)
    result = bundle.start()
    assert result.returncode == 0, result.stderr


def test_create_killed_at_each_step(make_bundle, user):
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    points = crash_every_point(bundle, lambda env: bundle.create(env=env))
    assert points >= 5


def test_start_killed_at_each_step(make_bundle, user):
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    points = crash_every_point(bundle, lambda env: bundle.start(env=env), prepare=lambda: created(bundle))
    assert points >= 1


def test_exec_killed_at_each_step(make_bundle, user):
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    points = crash_every_point(bundle, lambda env: bundle.runtime(["exec", bundle.id, "true"], env=env),
                               prepare=lambda: started(bundle))
    assert points >= 1


def test_delete_killed_at_each_step(make_bundle, user):
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    points = crash_every_point(bundle, lambda env: bundle.delete(force=True, env=env),
                               prepare=lambda: started(bundle))
    assert points >= 1


def kill_after(bundle: helpers.Bundle, args: list[str], delay: float) -> int | None:
    """Start the runtime with ``args``, SIGKILL it after ``delay`` seconds; its exit code if it ended first."""
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), *args]
    identity = {} if bundle.user is None else {"user": bundle.user.uid, "group": bundle.user.gid,
                                               "extra_groups": []}
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=devnull, stderr=devnull,
                                env=helpers.base_env(bundle.user),
                                cwd=bundle.user.home if bundle.user else None, **identity)
        time.sleep(delay)
        proc.kill()
        return proc.wait(timeout=30)


@pytest.mark.parametrize("command", ["create", "start", "exec", "delete"])
def test_runtime_killed_after_a_random_delay(make_bundle, user, command):
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    bundle.write()
    args = {"create": ["create", "--bundle", str(bundle.path), bundle.id], "start": ["start", bundle.id],
            "exec": ["exec", bundle.id, "true"], "delete": ["delete", "--force", bundle.id]}[command]
    prepare = {"create": None, "start": created, "exec": started, "delete": started}[command]
    rounds = int(os.environ.get("OCIRT_TEST_KILL_ROUNDS", "8"))
    seed = random.randrange(1 << 30)
    chooser = random.Random(seed)
    for round_number in range(rounds):
        if prepare is not None:
            prepare(bundle)
        delay = chooser.uniform(0, 0.12)
        kill_after(bundle, args, delay)
        assert_reclaimed(bundle, f"seed {seed}, round {round_number}, killed after {delay * 1000:.0f} ms")


def kill_at_syscall(test_dir, bundle: helpers.Bundle, syscall: str, path) -> str:
    """A wrapper that runs the runtime under strace, which SIGKILLs it on entering the first ``syscall``
    that names ``path`` (by name or by an fd open on it): a crash at one step of any version of the runtime,
    with no crash point of its own needed."""
    wrapper = test_dir / f"kill-at-{syscall}"
    real = bundle.runtime_path or helpers.runtime_path()
    wrapper.write_text(f"#!/bin/sh\nexec strace -f -qq -o /dev/null -e trace={syscall} "
                       f"-e inject={syscall}:signal=KILL -P '{path}' -- '{real}' \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def assert_half_made(bundle: helpers.Bundle, result: subprocess.CompletedProcess) -> None:
    """The kill landed where the issue saw it: a state directory without state.json."""
    assert result.returncode == -9, (result.returncode, result.stderr)
    directory = bundle.root / bundle.id
    assert directory.is_dir() and not (directory / "state.json").exists(), sorted(os.listdir(directory))


def test_create_killed_right_after_its_mkdir_does_not_block_the_id(make_bundle, user, test_dir):
    """Issue 16 item 6 as it was seen (12 of 200 killed creates): the create dies between making the
    container's directory and writing any state, here on entering its flock of that directory. On 10b516e
    `delete --force` returned 0 and left the directory, and every later create said `already exists`."""
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    bundle.write()
    killer = kill_at_syscall(test_dir, bundle, "flock", bundle.root / bundle.id)
    result = bundle.runtime(["create", "--bundle", bundle.path, bundle.id], runtime=killer)
    assert_half_made(bundle, result)
    assert_reclaimed(bundle, "create killed after its mkdir")


def test_create_of_an_id_a_killed_create_left_reclaims_it(make_bundle, user, test_dir):
    """The same half-made directory, and no `delete --force` in between: create itself reclaims it (by the
    lock: its creator is gone)."""
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    bundle.write()
    killer = kill_at_syscall(test_dir, bundle, "flock", bundle.root / bundle.id)
    assert_half_made(bundle, bundle.runtime(["create", "--bundle", bundle.path, bundle.id], runtime=killer))
    again = bundle.create()
    assert again.returncode == 0, again.stderr
    assert bundle.delete(force=True).returncode == 0
    assert_reclaimed(bundle, "create after a killed create")


def test_delete_force_killed_before_its_rmdir_does_not_block_the_id(make_bundle, user, test_dir):
    """The other case the issue saw (6 of 200 killed `delete --force`): the state is gone but the directory
    is not. On 10b516e the next `delete --force` left it and the id could not be created again."""
    bundle = limited_bundle(make_bundle, user, ["sleep", "60"])
    started(bundle)
    killer = kill_at_syscall(test_dir, bundle, "rmdir", bundle.root / bundle.id)
    result = bundle.runtime(["delete", "--force", bundle.id], runtime=killer)
    assert_half_made(bundle, result)
    assert sorted(os.listdir(bundle.root / bundle.id)) == []
    assert_reclaimed(bundle, "delete --force killed before its rmdir")


def test_create_killed_while_making_its_cgroups_leaves_none(make_bundle, test_dir):
    """The cgroups a killed create made are reclaimed too (runc 1.1.5 leaks them): the create dies on entering
    its mkdir of the container's pids cgroup, after the controllers it made before that one."""
    bundle = limited_bundle(make_bundle, None, ["sleep", "60"])
    bundle.write()
    pids = Path("/sys/fs/cgroup/pids") / bundle.config["linux"]["cgroupsPath"].lstrip("/")
    killer = kill_at_syscall(test_dir, bundle, "mkdir", pids)
    result = bundle.runtime(["create", "--bundle", bundle.path, bundle.id], runtime=killer)
    assert result.returncode == -9, (result.returncode, result.stderr)
    assert not pids.exists()
    assert bundle.cgroup_dirs() != [], "the kill came before any cgroup was made"
    assert_reclaimed(bundle, "create killed while making its cgroups")
