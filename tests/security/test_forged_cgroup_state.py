"""A forged state.json names someone else's cgroups (issue 16 item 2).

At 10b516e `pause`, `update`, `kill --all` and `delete --force` acted on whatever cgroup paths the state
file named: pointed at another cgroup with a process in it, `delete --force` killed the process and removed
the cgroup. runc 1.1.5 left it alone. Now every cgroup a command acts on must be verifiably the
container's: tagged by the create that made or joined it for this state directory, or (where the kernel
keeps tags off cgroups) the live init's own. The victim here is a cgroup the test makes, under
/ocirt-test-*, holding a process of the same user, so only the runtime's own check can protect it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from integration.test_control import delegated

from security import assert_nothing_left

ROOT = helpers.CGROUP_ROOT
FORGED = ("pids", "freezer", "memory")

pytestmark = pytest.mark.skipif(not all((ROOT / name / "cgroup.procs").exists() for name in FORGED),
                                reason="needs the v1 pids, freezer and memory hierarchies")


@contextlib.contextmanager
def victim_cgroups(base: dict[str, Path], user: helpers.UnprivilegedUser | None) -> Iterator[tuple[dict, int]]:
    """A cgroup in each hierarchy of ``base`` with a sleeping process of ``user`` (or root) inside."""
    name = f"{helpers.ID_PREFIX}{helpers.SESSION_TOKEN}victim{secrets.token_hex(3)}"
    dirs = {key: path / name for key, path in base.items()}
    identity = {"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}
    process = subprocess.Popen(["sleep", "300"], **identity)
    try:
        for directory in dirs.values():
            directory.mkdir()
            if user is not None:
                os.chown(directory, user.uid, user.gid)
            (directory / "cgroup.procs").write_text(str(process.pid))
        yield dirs, process.pid
    finally:
        # A task frozen by a runtime that was fooled only dies once thawed.
        with contextlib.suppress(OSError):
            (dirs["freezer"] / "freezer.state").write_text("THAWED")
        process.kill()
        process.wait()
        for directory in dirs.values():
            helpers.remove_cgroup(directory)


def forge(bundle: helpers.Bundle, victim: dict[str, Path]) -> None:
    """Point the state's cgroup paths (and its list of what create made) at the victim's cgroups."""
    path = bundle.root / bundle.id / "state.json"
    owner = path.stat()
    data = json.loads(path.read_text())
    saved = data["ocirt"]["cgroup"]
    for key, directory in victim.items():
        assert key in saved["paths"], f"the container has no {key} cgroup to forge"
        saved["paths"][key] = str(directory)
    saved["made"] = [*saved.get("made", []), *map(str, victim.values())]
    data["ocirt"]["freezer_path"] = str(victim["freezer"] / "freezer.state")
    path.write_text(json.dumps(data))
    os.chown(path, owner.st_uid, owner.st_gid)


def assert_victim_untouched(victim: dict[str, Path], pid: int) -> None:
    assert helpers.pid_alive(pid), "the victim's process was killed"
    for key, directory in victim.items():
        assert directory.is_dir(), f"the victim's {key} cgroup was removed"
        assert (directory / "cgroup.procs").read_text().split() == [str(pid)]
    assert (victim["freezer"] / "freezer.state").read_text().strip() == "THAWED"
    assert (victim["pids"] / "pids.max").read_text().strip() == "max"


def attack(bundle: helpers.Bundle, victim: dict[str, Path], pid: int) -> None:
    result = bundle.run("--detach")
    assert result.returncode == 0, result.stderr
    forge(bundle, victim)
    for command in (["pause", bundle.id], ["resume", bundle.id], ["update", "--pids-limit", "7", bundle.id],
                    ["kill", "--all", bundle.id, "KILL"]):
        bundle.runtime(command)
        assert_victim_untouched(victim, pid)
    result = bundle.delete(force=True)
    assert result.returncode == 0, result.stderr
    assert "not verifiably the container's" in result.stderr, result.stderr
    assert_victim_untouched(victim, pid)
    # The container's own cgroups, which the forged state no longer names, are found through its init.
    assert_nothing_left(bundle)


def test_a_forged_state_cannot_make_root_act_on_another_cgroup(make_bundle):
    bundle = make_bundle(args=["sleep", "60"])
    with victim_cgroups({key: ROOT / key for key in FORGED}, None) as (victim, pid):
        attack(bundle, victim, pid)


@pytest.mark.rootless
def test_a_forged_state_cannot_make_a_rootless_runtime_act_on_another_cgroup(make_bundle, runtime,
                                                                           unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, ",".join(FORGED)) as made:
        base = {path.parent.parent.name: path for path in made}
        bundle = make_bundle(user=user, args=["sleep", "60"])
        bundle.config["linux"]["cgroupsPath"] = bundle.id
        with victim_cgroups(base, user) as (victim, pid):
            attack(bundle, victim, pid)
