"""``exec --cgroup [CONTROLLER[,CONTROLLER]:]PATH`` puts the process in an existing sub-cgroup of the
container's, as runc 1.1.5 does on the same bundle (checked on this host: `memory:sub` moves only the memory
hierarchy, `memory,pids:sub --cgroup cpu:sub` those three, `/` is the container's own cgroup; `../x`, an
unknown controller and a missing sub-cgroup are errors, exit 255). It was accepted and ignored before.
Rootful: the sub-cgroups are made by the test, as an engine would make them."""

from __future__ import annotations

import os
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes sub-cgroups in the host's hierarchies")


def own_cgroups(output: str) -> dict[str, str]:
    """``/proc/self/cgroup`` of the exec'd process as controller -> path (namespaced: / is the container's)."""
    lines = {}
    for line in output.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") or [""]:
            lines[name] = path
    return lines


@pytest.fixture
def running(make_bundle):
    bundle = make_bundle(args=["sleep", "300"])
    assert bundle.run("--detach").returncode == 0
    made: list[Path] = []
    for directory in bundle.cgroup_dirs():
        sub = directory / "sub"
        sub.mkdir()
        made.append(sub)
    yield bundle
    bundle.delete(force=True)
    for sub in made:
        if sub.exists():
            sub.rmdir()


def exec_cgroups(bundle, *flags: str):
    return bundle.runtime(["exec", *flags, bundle.id, "cat", "/proc/self/cgroup"])


def test_a_controller_s_sub_cgroup_moves_only_that_hierarchy(running):
    result = exec_cgroups(running, "--cgroup", "memory:sub")
    assert result.returncode == 0, result.stderr
    moved = {name for name, path in own_cgroups(result.stdout).items() if path != "/"}
    assert moved == {"memory"}


def test_several_controllers_and_repeated_flags(running):
    result = exec_cgroups(running, "--cgroup", "memory,pids:sub", "--cgroup", "cpu:sub")
    assert result.returncode == 0, result.stderr
    cgroups = own_cgroups(result.stdout)
    assert {name for name, path in cgroups.items() if path != "/"} >= {"memory", "pids", "cpu"}
    assert cgroups["memory"] == cgroups["pids"] == "/sub"
    assert cgroups["freezer"] == "/"


def test_slash_is_the_container_s_own_cgroup(running):
    result = exec_cgroups(running, "--cgroup", "/")
    assert result.returncode == 0, result.stderr
    assert set(own_cgroups(result.stdout).values()) == {"/"}


@pytest.mark.parametrize(("flag", "message"), [
    ("../x", "ocirt: --cgroup ../x: ../x is not a sub-cgroup path"),
    ("nope:sub", "ocirt: cannot exec in the container: --cgroup: the container has no nope cgroup (it has "),
    ("memory:nosuch", "ocirt: cannot exec in the container: cannot join sub-cgroup "),
])
def test_bad_sub_cgroups_are_one_line_errors_and_run_nothing(running, flag, message):
    before = set(helpers.processes_using([running.rootfs]))
    result = running.runtime(["exec", "--cgroup", flag, running.id, "sh", "-c", "sleep 300"])
    assert result.returncode == 255
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert "internal error" not in result.stderr
    assert set(helpers.processes_using([running.rootfs])) == before, "no exec'd process is left running"
    assert running.state()["status"] == "running"
