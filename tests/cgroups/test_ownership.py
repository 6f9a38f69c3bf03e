"""What the manager made, what it only joined, and what a saved state may name: tags, parents, verification,
and the checks create() makes before a container joins (a frozen cgroup, an empty cpuset)."""

from __future__ import annotations

import os
import posixpath

import pytest

from ocirt import cgroups
from ocirt.cgroups import fs
from ocirt.errors import CgroupError

from .conftest import candidate_dirs, existing_dirs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

TAG = fs.tag_name(rootless=False)
PURE_V2 = cgroups.detect_mode() == "v2"


def mount_of(controller: str) -> str:
    mount = cgroups.mounts().v1.get(controller)
    if mount is None:
        pytest.skip(f"no v1 {controller} hierarchy")
    return mount.mountpoint


def hierarchy_of(controller: str) -> tuple[str, str]:
    """(the key of manager.paths(), the mount point) that holds `controller`: on a pure v2 host the one tree."""
    if PURE_V2:
        return cgroups.UNIFIED, cgroups.mounts().v2.mountpoint
    return controller, mount_of(controller)


def tree_of(controller: str) -> str:
    return hierarchy_of(controller)[1]


def test_create_tags_what_it_made_and_destroy_removes_those_parents(cgroup_prefix, tmp_path):
    owner = str(tmp_path)
    manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/a/c1", rootless=False, resources=None, owner=owner)
    manager.create()
    key, mountpoint = hierarchy_of("pids")
    pids = manager.paths()[key]
    assert fs.get_tag(pids, TAG) == f"made {owner}"
    assert fs.get_tag(posixpath.dirname(pids), TAG) == f"made {owner}"
    state = manager.to_state()
    assert f"{mountpoint}/{cgroup_prefix}" in state["made"]
    cgroups.load_manager(state, owner=owner).destroy()
    assert existing_dirs(cgroup_prefix) == []


def test_destroy_keeps_a_parent_and_a_cgroup_it_found(cgroup_prefix, tmp_path):
    owner = str(tmp_path)
    found_parent = f"{tree_of('pids')}/{cgroup_prefix}/a"
    found_leaf = f"{tree_of('memory')}/{cgroup_prefix}/a/c1"
    os.makedirs(found_parent)
    os.makedirs(found_leaf)
    manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/a/c1", rootless=False, resources=None, owner=owner)
    manager.create()
    assert fs.get_tag(found_leaf, TAG) == f"joined {owner}"
    assert fs.get_tag(found_parent, TAG) is None
    cgroups.load_manager(manager.to_state(), owner=owner).destroy()
    assert sorted(existing_dirs(cgroup_prefix)) == sorted({f"{tree_of('pids')}/{cgroup_prefix}",
                                                            f"{tree_of('memory')}/{cgroup_prefix}"})
    assert os.path.isdir(found_parent) and os.path.isdir(found_leaf)
    assert fs.get_tag(found_leaf, TAG) is None


def test_a_state_for_another_owner_or_outside_the_hierarchy_is_not_trusted(cgroup_prefix, tmp_path, spawn):
    owner = str(tmp_path / "mine")
    manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/c1", rootless=False, resources=None, owner=owner)
    manager.create()
    state = manager.to_state()
    other = cgroups.load_manager(state, owner=str(tmp_path / "someone-else"))
    assert other.paths() == {}
    pids_key, memory_key = hierarchy_of("pids")[0], hierarchy_of("memory")[0]
    forgeries = [{pids_key: f"{tree_of('pids')}/{cgroup_prefix}/c1/../../{cgroup_prefix}"}, {memory_key: "/tmp"}]
    if not PURE_V2:  # a cgroup of the container, named for another hierarchy (v2 has one)
        forgeries.append({"freezer": f"{tree_of('pids')}/{cgroup_prefix}/c1"})
    for paths in forgeries:
        assert cgroups.load_manager(dict(state, paths=paths), owner=owner).paths() == {}, paths
    # Its live init is the evidence for the cgroups the state no longer names.
    child = spawn("import time\ntime.sleep(30)\n")
    manager.apply(child.pid)
    recovered = cgroups.load_manager(dict(state, paths={}, made=[]), owner=owner, init_pid=child.pid)
    assert recovered.paths() == manager.paths()
    manager.kill_all(9)
    child.process.wait(timeout=10)
    cgroups.load_manager(state, owner=owner).destroy()
    assert existing_dirs(cgroup_prefix) == []


def test_without_tag_support_the_fallback_is_the_containers_name(cgroup_prefix, tmp_path, monkeypatch):
    """Kernels that keep xattrs off cgroups: as root a saved cgroup counts when it bears the container's name,
    and a saved parent only as an ancestor of one."""
    owner = str(tmp_path)
    manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/c1", rootless=False, resources=None, owner=owner)
    manager.create()
    state = manager.to_state()
    monkeypatch.setattr(fs, "get_tag", lambda directory, name: fs.UNSUPPORTED)
    elsewhere = dict(state, paths={hierarchy_of("pids")[0]: f"{tree_of('pids')}/{cgroup_prefix}"},
                     made=[f"{tree_of('memory')}/{cgroup_prefix}"])
    loaded = cgroups.load_manager(elsewhere, owner=owner)
    assert loaded.paths() == {} and loaded.to_state()["made"] == []
    loaded = cgroups.load_manager(state, owner=owner)
    assert loaded.paths() == manager.paths()
    monkeypatch.undo()
    loaded.destroy()
    assert existing_dirs(cgroup_prefix) == []


def test_create_refuses_a_frozen_cgroup_and_removes_what_it_made(cgroup_prefix):
    frozen = f"{tree_of('freezer')}/{cgroup_prefix}"
    os.makedirs(frozen)
    freeze_file, frozen_value, thawed_value = (("cgroup.freeze", "1", "0") if PURE_V2
                                               else ("freezer.state", "FROZEN", "THAWED"))
    fs.write(frozen, freeze_file, frozen_value)
    try:
        manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/c1", rootless=False, resources=None)
        with pytest.raises(CgroupError, match=r"is frozen \((by an ancestor|frozen)\); thaw it first"):
            manager.create()
        assert existing_dirs(cgroup_prefix) == [frozen]
    finally:
        fs.write(frozen, freeze_file, thawed_value)


def test_cpuset_levels_are_filled_from_the_top(cgroup_prefix, spawn):
    mount = mount_of("cpuset")
    os.makedirs(f"{mount}/{cgroup_prefix}/empty")
    manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/empty/c1", rootless=False, resources=None)
    manager.create()
    for level in (f"{mount}/{cgroup_prefix}", f"{mount}/{cgroup_prefix}/empty", manager.paths()["cpuset"]):
        assert fs.read(level, "cpuset.cpus") == fs.read(mount, "cpuset.cpus")
        assert fs.read(level, "cpuset.mems") == fs.read(mount, "cpuset.mems")
    child = spawn("import time\ntime.sleep(30)\n")
    manager.apply(child.pid)
    manager.kill_all(9)
    child.process.wait(timeout=10)
    manager.destroy()


@pytest.mark.skipif(PURE_V2, reason="v1 only: a pure v2 host has one hierarchy, so there is none after a refusing one")
def test_apply_joins_every_hierarchy_it_can_and_names_the_ones_it_cannot(cgroup_prefix, spawn):
    manager = cgroups.open_manager("c1", f"/{cgroup_prefix}/c1", rootless=False, resources=None)
    manager.create()
    cpuset = manager.paths()["cpuset"]
    child = spawn("import time\ntime.sleep(30)\n")
    # An emptied cpuset refuses tasks; the hierarchies after it must still get the process.
    os.rmdir(cpuset)
    os.mkdir(cpuset)
    with pytest.raises(CgroupError, match=f"cannot move process {child.pid} into cgroup {cpuset}: "):
        manager.apply(child.pid)
    unified = manager.paths().get(cgroups.UNIFIED)
    if unified:
        assert child.pid in fs.procs_in(unified)
    assert child.pid in fs.procs_in(manager.paths()["pids"])
    manager.kill_all(9)
    child.process.wait(timeout=10)
    manager.destroy()
    assert all(not os.path.exists(path) for path in candidate_dirs(f"{cgroup_prefix}/c1"))


def test_creates_and_deletes_racing_under_a_parent_they_make(cgroup_prefix, tmp_path):
    """One container's delete removes the parent it made as soon as it is empty; another's create, which
    just saw that parent, must make it again rather than fail."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        errors = sum(pool.starmap(_churn, [(cgroup_prefix, str(tmp_path / f"t{n}"), n) for n in range(4)]), [])
    assert errors == []


def _churn(prefix: str, owner: str, number: int) -> list[str]:
    errors = []
    for index in range(150):
        manager = cgroups.open_manager("c", f"/{prefix}/shared/{number}-{index}", rootless=False,
                                       resources={"pids": {"limit": 10}}, owner=owner)
        try:
            manager.create()
            manager.destroy()
        except CgroupError as err:
            errors.append(str(err))
    return errors
