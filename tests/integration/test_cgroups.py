"""Where a container's cgroups go and what becomes of them, through the CLI, as root and rootless.

Each test states one rule and names what runc 1.1.5 does on the same bundle on this (hybrid v1) host:
- the parents a relative cgroupsPath needed are removed with the container, but only those ocirt made
  (runc leaves every parent it made behind);
- rootless, a subtree root delegated beneath the user's own cgroup is used, decided from the target path;
- a frozen cgroup is refused at create (runc: "container's cgroup unexpectedly frozen");
- a cpuset level someone made with a plain mkdir is filled from its parent (runc does the same);
- an exec'd process lands in every cgroup the init is in, the cgroup2 one included;
- rootless, a cgroupsPath the config names and the user can use nowhere is an error (runc: "permission
  denied"); without cgroupsPath and without limits the container runs without cgroups.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from pathlib import Path

import helpers
import pytest

from integration.test_control import delegated

ROOT = helpers.CGROUP_ROOT
V1_DELEGATED = ("memory", "cpu", "blkio", "pids")

# The paths below assume this VM's layout: v1 hierarchies each mounted alone at /sys/fs/cgroup/<name>.
pytestmark = pytest.mark.skipif(not all((ROOT / name / "cgroup.procs").exists()
                                        for name in ("pids", "freezer", "cpuset", "memory", *V1_DELEGATED)),
                                reason="needs the hybrid v1 layout of this VM")


def own_cgroup_path(controller: str) -> str:
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _number, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(","):
                return path.rstrip("/")
    raise AssertionError(f"no {controller!r} line in /proc/self/cgroup")


def own_cgroup(controller: str) -> Path:
    """The test process's own cgroup directory in the hierarchy of ``controller`` ("" for cgroup2)."""
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _number, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(",") or (controller == "" and names == ""):
                mount = ROOT / ("unified" if controller == "" else controller.replace("name=", ""))
                return mount / path.lstrip("/")
    raise AssertionError(f"no {controller!r} line in /proc/self/cgroup")


def dirs_named(name: str) -> list[Path]:
    return sorted(p for p in helpers.find_cgroup_dirs([name]) if p.exists())


def init_cgroups(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {names: path for _number, names, path in (line.split(":", 2) for line in lines)}


def chown_cgroup(path: Path, user: helpers.UnprivilegedUser) -> None:
    """What root hands a user to delegate a cgroup: the directory and the files that move tasks."""
    os.chown(path, user.uid, user.gid)
    for name in ("cgroup.procs", "tasks", "cgroup.threads", "cgroup.subtree_control"):
        if (path / name).exists():
            os.chown(path / name, user.uid, user.gid)


@contextlib.contextmanager
def made_by_test(*paths: Path):
    """Cgroup directories the test makes itself (someone else's, for the runtime), removed afterwards with
    every parent it had to make for them."""
    made: list[Path] = []
    try:
        for path in paths:
            for directory in [*reversed(path.parents), path]:
                if not directory.exists():
                    directory.mkdir()
                    made.append(directory)
        yield paths
    finally:
        for directory in sorted(made, key=lambda p: len(p.parts), reverse=True):
            if directory.exists() and not helpers.remove_cgroup(directory):
                raise AssertionError(f"could not remove {directory}")


def state_pid(bundle: helpers.Bundle) -> int:
    return int(bundle.state()["pid"])


# ---- issue 14 item 9: the parents of a relative cgroupsPath ----------------------------------------------

def test_failed_create_removes_the_parent_cgroups_it_made(make_bundle):
    bundle = make_bundle()
    bundle.config["linux"]["cgroupsPath"] = f"{bundle.id}/testdir/cgrouptest"
    bundle.config["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    result = bundle.create()
    assert result.returncode != 0
    assert dirs_named(bundle.id) == []


def test_delete_removes_the_parents_it_made_and_keeps_what_it_found(make_bundle):
    bundle = make_bundle(args=["cat", "/proc/self/cgroup"])
    bundle.config["linux"]["cgroupsPath"] = f"{bundle.id}/testdir/cgrouptest"
    bundle.config["linux"]["namespaces"] = [n for n in bundle.config["linux"]["namespaces"]
                                            if n["type"] != "cgroup"]
    # Someone else made the parent in pids, and the whole path in freezer.
    pids_parent = own_cgroup("pids") / bundle.id / "testdir"
    freezer_leaf = own_cgroup("freezer") / bundle.id / "testdir" / "cgrouptest"
    with made_by_test(pids_parent, freezer_leaf):
        result = bundle.run()
        assert result.returncode == 0, result.stderr
        assert f"pids:{own_cgroup_path('pids')}/{bundle.id}/testdir/cgrouptest" in result.stdout.replace("//", "/")
        assert pids_parent.is_dir() and not (pids_parent / "cgrouptest").exists()
        # spec (runtime.md, delete): resources not created by the container MUST NOT be deleted.
        assert freezer_leaf.is_dir()
        assert [p for p in dirs_named(bundle.id) if "/pids/" not in str(p) and "/freezer/" not in str(p)] == []


@pytest.mark.rootless
def test_rootless_delete_removes_the_parents_it_made(make_bundle, runtime, unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, "memory,pids") as made:
        bundle = make_bundle(user=user, args=["true"])
        bundle.config["linux"]["cgroupsPath"] = f"{bundle.id}/testdir/c1"
        bundle.config["linux"]["resources"] = {"pids": {"limit": 30}}
        result = bundle.run()
        assert result.returncode == 0, result.stderr
        assert [path / bundle.id for path in made if (path / bundle.id).exists()] == []


# ---- issue 14 item 10: a subtree root delegated beneath the user's own cgroup --------------------------

@pytest.mark.rootless
def test_rootless_subtree_delegated_beneath_the_users_own_cgroup_is_used(make_bundle, unprivileged_user):
    user = unprivileged_user
    sandbox = f"{helpers.ID_PREFIX}{helpers.SESSION_TOKEN}sandbox{secrets.token_hex(3)}"
    roots = {controller: own_cgroup(controller) / sandbox for controller in V1_DELEGATED}
    with made_by_test(*roots.values()):
        for path in roots.values():
            chown_cgroup(path, user)
        bundle = make_bundle(user=user, args=["sleep", "60"])
        bundle.config["linux"]["cgroupsPath"] = f"{sandbox}/c1"
        bundle.config["linux"]["resources"] = {"pids": {"limit": 20}, "memory": {"limit": 64 << 20}}
        result = bundle.run("--detach")
        assert result.returncode == 0, result.stderr
        pid = state_pid(bundle)
        cgroups = init_cgroups(pid)
        for controller, path in roots.items():
            assert ROOT / controller / cgroups[controller].lstrip("/") == path / "c1", cgroups
        assert (roots["pids"] / "c1" / "pids.max").read_text().strip() == "20"
        assert (roots["memory"] / "c1" / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        assert bundle.delete(force=True).returncode == 0
        # The container's cgroup goes; the subtree root, which root made, stays.
        assert all(path.is_dir() and not (path / "c1").exists() for path in roots.values())


def run_in_cgroup(bundle: helpers.Bundle, procs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The runtime as ``bundle.user``, started by root inside the cgroup2 cgroup whose procs file is given,
    as a login manager would place a user's session."""
    user = bundle.user
    assert user is not None
    wrapper = bundle.path / "in-cgroup.sh"
    wrapper.write_text(f'#!/bin/sh\necho $$ > {procs} || exit 97\n'
                       f'exec setpriv --reuid={user.uid} --regid={user.gid} --clear-groups -- '
                       f'{bundle.runtime_path or helpers.runtime_path()} "$@"\n')
    wrapper.chmod(0o755)
    return helpers.run_runtime(args, root=bundle.root, runtime=str(wrapper), env=user.env(), cwd=user.home)


@pytest.mark.rootless
def test_rootless_cgroup2_subtree_is_joined_by_the_init_and_by_exec(make_bundle, unprivileged_user):
    """Issue 14 item 10 (cgroup2) and issue 15 item 19: on a hybrid host, a user who lives in a cgroup2
    subtree it owns gets the container's cgroup2 directory for the init and for every exec'd process."""
    if not (ROOT / "unified" / "cgroup.procs").exists():
        pytest.skip("no hybrid cgroup2 mount")
    user = unprivileged_user
    session = ROOT / "unified" / f"{helpers.ID_PREFIX}{helpers.SESSION_TOKEN}session{secrets.token_hex(3)}"
    with made_by_test(session):
        chown_cgroup(session, user)
        bundle = make_bundle(user=user, args=["sleep", "60"])
        result = run_in_cgroup(bundle, session / "cgroup.procs", "run", "--detach", "--bundle", str(bundle.path),
                               bundle.id)
        assert result.returncode == 0, result.stderr
        expected = f"/{session.name}/{bundle.id}"
        assert init_cgroups(state_pid(bundle))[""] == expected
        result = run_in_cgroup(bundle, session / "cgroup.procs", "exec", "--detach", bundle.id, "sleep", "61")
        assert result.returncode == 0, result.stderr
        pids = (session / bundle.id / "cgroup.procs").read_text().split()
        assert len(pids) == 2, pids
        assert {init_cgroups(int(pid))[""] for pid in pids} == {expected}
        assert run_in_cgroup(bundle, session / "cgroup.procs", "delete", "--force", bundle.id).returncode == 0
        assert not (session / bundle.id).exists()


# ---- issue 15 item 17: a frozen cgroup ---------------------------------------------------------------------

def test_run_into_a_frozen_cgroup_is_refused(make_bundle):
    bundle = make_bundle(args=["true"])
    bundle.config["linux"]["cgroupsPath"] = f"/{bundle.id}"
    freezer = ROOT / "freezer" / bundle.id
    with made_by_test(freezer):
        (freezer / "freezer.state").write_text("FROZEN")
        try:
            result = bundle.run("--detach", timeout=15)
        finally:
            (freezer / "freezer.state").write_text("THAWED")
        assert result.returncode == 1
        assert "frozen" in result.stderr.splitlines()[-1], result.stderr
        assert freezer.is_dir()
        assert not (bundle.root / bundle.id).exists()
        assert [p for p in dirs_named(bundle.id) if p != freezer] == []


@pytest.mark.rootless
def test_rootless_run_into_a_frozen_cgroup_is_refused(make_bundle, runtime, unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, "freezer,pids") as made:
        freezer = next(path for path in made if path.parent.parent.name == "freezer") / "frozen"
        freezer.mkdir()
        try:
            chown_cgroup(freezer, user)
            (freezer / "freezer.state").write_text("FROZEN")
            bundle = make_bundle(user=user, args=["true"])
            bundle.config["linux"]["cgroupsPath"] = "frozen"
            try:
                result = bundle.run("--detach", timeout=15)
            finally:
                (freezer / "freezer.state").write_text("THAWED")
            assert result.returncode == 1
            assert "frozen" in result.stderr.splitlines()[-1], result.stderr
            assert not (bundle.root / bundle.id).exists()
        finally:
            helpers.remove_cgroup(freezer)


# ---- issue 15 item 18: cpuset levels made by a plain mkdir -------------------------------------------------

def test_cpuset_levels_made_by_someone_else_are_filled_from_the_parent(make_bundle):
    bundle = make_bundle(args=["true"])
    bundle.config["linux"]["cgroupsPath"] = f"/{bundle.id}/c1"
    parent = ROOT / "cpuset" / bundle.id
    with made_by_test(parent):
        assert (parent / "cpuset.cpus").read_text().strip() == ""
        result = bundle.run()
        assert result.returncode == 0, result.stderr
        assert (parent / "cpuset.cpus").read_text() == (ROOT / "cpuset" / "cpuset.cpus").read_text()
        assert (parent / "cpuset.mems").read_text() == (ROOT / "cpuset" / "cpuset.mems").read_text()


@pytest.mark.rootless
def test_rootless_cpuset_level_made_by_the_user_is_filled(make_bundle, runtime, unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, "cpuset") as made:
        level = made[0] / "level"
        subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
                        "mkdir", str(level)], check=True)
        try:
            bundle = make_bundle(user=user, args=["true"])
            bundle.config["linux"]["cgroupsPath"] = "level/c1"
            bundle.config["linux"]["resources"] = {"cpu": {"cpus": "0"}}
            result = bundle.run()
            assert result.returncode == 0, result.stderr
            assert (level / "cpuset.cpus").read_text() == (made[0] / "cpuset.cpus").read_text()
        finally:
            helpers.remove_cgroup(level)


# ---- issue 15 item 19: exec joins every cgroup of the init -----------------------------------------------

def test_exec_lands_in_every_cgroup_the_init_is_in(make_bundle):
    bundle = make_bundle(args=["sleep", "60"])
    result = bundle.run("--detach")
    assert result.returncode == 0, result.stderr
    init = init_cgroups(state_pid(bundle))
    assert init[""].endswith(bundle.id)
    result = bundle.runtime(["exec", "--detach", bundle.id, "sleep", "61"])
    assert result.returncode == 0, result.stderr
    pids = [int(pid) for pid in Path(ROOT / "pids" / init["pids"].lstrip("/") / "cgroup.procs").read_text().split()]
    assert len(pids) == 2
    assert all(init_cgroups(pid) == init for pid in pids)
    assert bundle.delete(force=True).returncode == 0


def test_exec_that_cannot_join_the_containers_cgroup_fails_as_root(make_bundle):
    """As runc does: as root, an exec'd process that can't be moved into one of the container's cgroups
    would run outside its limits, so the exec fails and leaves no process. The kernel refuses the move
    here because the container's cpuset lost its cpus (the init was moved aside first, as the kernel
    won't empty a cpuset that has tasks)."""
    bundle = make_bundle(args=["sleep", "60"])
    assert bundle.run("--detach").returncode == 0
    init_pid = state_pid(bundle)
    init = init_cgroups(init_pid)
    cpuset = ROOT / "cpuset" / init["cpuset"].lstrip("/")
    aside = cpuset.parent / f"{cpuset.name}-aside"
    try:
        aside.mkdir()
        for name in ("cpuset.cpus", "cpuset.mems"):
            (aside / name).write_text((cpuset / name).read_text())
        (aside / "cgroup.procs").write_text(str(init_pid))
        (cpuset / "cpuset.cpus").write_text("\n")
        result = bundle.runtime(["exec", "--detach", bundle.id, "sleep", "61"])
        assert result.returncode == 255, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "cannot move process" in result.stderr and "no space left on device" in result.stderr, result.stderr
        pids_dir = ROOT / "pids" / init["pids"].lstrip("/")
        assert (pids_dir / "cgroup.procs").read_text().split() == [str(init_pid)]
    finally:
        assert bundle.delete(force=True).returncode == 0
        helpers.remove_cgroup(aside)


@pytest.mark.rootless
def test_rootless_exec_that_cannot_join_an_undelegated_cgroup_runs(make_bundle, runtime, unprivileged_user):
    """Rootless, as runc: a hierarchy the user may not write to (here root took the container's pids
    cgroup back) is one its exec'd process can't join; the exec runs in the others, quietly."""
    user = unprivileged_user
    with delegated(runtime, user, "memory,pids"):
        bundle = make_bundle(user=user, args=["sleep", "60"])
        bundle.config["linux"]["cgroupsPath"] = f"{bundle.id}/c1"
        assert bundle.run("--detach").returncode == 0
        init = init_cgroups(state_pid(bundle))
        pids_dir = ROOT / "pids" / init["pids"].lstrip("/")
        os.chown(pids_dir / "cgroup.procs", 0, 0)
        result = bundle.runtime(["exec", "--detach", bundle.id, "sleep", "61"])
        assert result.returncode == 0 and result.stderr == "", result.stderr
        memory_dir = ROOT / "memory" / init["memory"].lstrip("/")
        assert len((memory_dir / "cgroup.procs").read_text().split()) == 2
        assert len((pids_dir / "cgroup.procs").read_text().split()) == 1
        assert bundle.delete(force=True).returncode == 0


# ---- issue 15 item 20: a named cgroupsPath the rootless user can't use --------------------------------------

@pytest.mark.rootless
def test_rootless_unusable_cgroups_path_named_in_the_config_is_an_error(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.config["linux"]["cgroupsPath"] = f"/{bundle.id}"
    result = bundle.run()
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert f"cannot use cgroupsPath '/{bundle.id}'" in last and "ocirt cgroup delegate" in last, result.stderr
    assert not (bundle.root / bundle.id).exists()
    assert dirs_named(bundle.id) == []


@pytest.mark.rootless
def test_rootless_default_path_without_limits_runs_without_cgroups(make_bundle, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    assert "cgroupsPath" not in bundle.config["linux"]
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
