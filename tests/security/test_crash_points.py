"""A runtime killed between two steps leaves nothing that `delete --force` can't reclaim (issue 16, item 6).

An OOM kill, a killed shim or a reboot of the engine can stop `create`, `start`, `exec` or `delete` at any
point. ``OCIRT_TEST_CRASH_AT=N`` (ocirt/faults.py) makes the runtime SIGKILL itself at its N-th crash point,
each placed after a step that changes something durable. Every point of every command is hit in turn; after
each, `delete --force` must leave no state directory, process, mount or cgroup, and the id must be usable
again. A second test kills the runtime from outside after a random delay, where no crash point sits.
"""

from __future__ import annotations

import os
import random
import subprocess
import time

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
