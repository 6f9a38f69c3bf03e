"""Delegation by root, then the manager run by a real unprivileged user against the real kernel."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath

import pytest

from ocirt import cgroups
from ocirt.cgroups import delegate as delegation
from ocirt.cgroups import fs, v2
from ocirt.errors import CgroupError

from .conftest import all_hierarchies, force_remove, run_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a user and delegate")

MiB = 1 << 20
MODE = cgroups.detect_mode()

# Runs as the test user: open a rootless manager, optionally create it, join it, read back the
# files and try to fork past the pids limit. Prints one JSON object.
USER_SCRIPT = r"""
import json, os, sys, time
from ocirt import cgroups
from ocirt.errors import CgroupError
args = json.loads(sys.argv[1])
try:
    manager = cgroups.open_manager(args["id"], args.get("path"), rootless=True, resources=args.get("resources"))
    out = {"notices": manager.notices, "paths": manager.paths()}
    if args.get("create"):
        manager.create()
        manager.apply(os.getpid())
        out["files"] = {}
        for controller, name in args.get("read", []):
            with open(os.path.join(manager.paths()[controller], name)) as handle:
                out["files"][name] = handle.read().strip()
        made, failure = [], 0
        for _ in range(10):
            try:
                pid = os.fork()
            except OSError as err:
                failure = err.errno
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            made.append(pid)
        for pid in made:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        out["forked"] = len(made)
        out["fork_errno"] = failure
        out["state"] = manager.to_state()
        if args.get("freeze"):
            try:
                manager.freeze()
            except CgroupError as err:
                out["freeze_error"] = str(err)
        if args.get("destroy"):
            # Step back into the delegated parent (v2: the session it started in), then remove the container's
            # cgroups as the user.
            for directory in set(manager.paths().values()):
                with open(os.path.join(args.get("back") or os.path.dirname(directory), "cgroup.procs"), "w") as handle:
                    handle.write(str(os.getpid()))
            manager.destroy()
            out["left"] = [d for d in manager.paths().values() if os.path.exists(d)]
except CgroupError as err:
    out = {"error": str(err)}
print(json.dumps(out))
"""


def run_manager_as(user, cgroup: str | None = None, **args) -> dict:
    result = run_as(user, USER_SCRIPT, json.dumps(args), cgroup=cgroup)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def delegated_dirs(path: str) -> list[str]:
    return [posixpath.join(mount.mountpoint, path) for _key, mount in all_hierarchies()
            if os.path.isdir(posixpath.join(mount.mountpoint, path))]


@pytest.fixture
def delegate_for(test_user):
    """delegate(...) for the test user, with everything under the delegated path removed afterwards."""
    made: list[str] = []

    def make(controllers: list[str] | None = None, path: str | None = None) -> list[str]:
        directories = delegation.delegate(test_user.name, controllers, path)
        made.append(path or delegation.default_path(test_user.name))
        return directories

    yield make
    for path in made:
        for directory in delegated_dirs(path):
            force_remove(directory)
        for directory in delegated_dirs("ocirt"):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if no other delegation remains under it


def test_without_delegation_the_manager_opens_with_notices(test_user):
    out = run_manager_as(test_user, id="c1", resources=None, create=False)
    assert "error" not in out, out
    assert out["paths"] == {}
    text = "\n".join(out["notices"])
    if MODE == "v2":
        assert f"no cgroup is delegated to user {test_user.name}: cgroup limits are not applied" in text
    else:
        assert f"not delegated to user {test_user.name}" in text
    if "devices" in cgroups.mounts().v1:
        assert cgroups.DEVICES_ROOTLESS_NOTICE in out["notices"]
        assert out["notices"].count(cgroups.DEVICES_ROOTLESS_NOTICE) == 1


def test_limit_on_an_undelegated_controller_names_the_controller_and_the_fix(test_user, delegate_for):
    (delegated, *_) = delegate_for(["memory"])
    session = None
    if MODE == "v2":
        # v2 lets a process join only a delegated subtree it already runs in: start the user inside it.
        session = posixpath.join(delegated, "session")
        os.mkdir(session)
    out = run_manager_as(test_user, session, id="c1", resources={"pids": {"limit": 5}}, create=False)
    fix = f"run `ocirt cgroup delegate --user {test_user.name} --controllers pids` as root"
    if MODE == "v2":
        assert out["error"] == (f"cannot apply pids limits: user {test_user.name} was not given the pids "
                                f"controller in {delegated}; {fix}")
    else:
        assert out["error"] == (
            f"cannot apply pids limits: the pids cgroup is not delegated to user {test_user.name}; {fix}")
    # Memory is delegated, so the same user can limit memory; unrelated controllers never fail it.
    out = run_manager_as(test_user, session, id="c1", resources={"memory": {"limit": 64 * MiB}}, create=False)
    assert "error" not in out, out
    assert set(out["paths"]) == {cgroups.UNIFIED if MODE == "v2" else "memory"}


def test_delegated_user_creates_limits_joins_and_is_limited(test_user, delegate_for):
    (delegated, *_) = delegate_for(["memory", "pids", "cpu", "blkio"])
    resources = {"memory": {"limit": 64 * MiB, "swap": 64 * MiB}, "pids": {"limit": 5},
                 "cpu": {"shares": 512, "quota": 20000, "period": 100000}, "blockIO": {"weight": 200},
                 "devices": [{"allow": False, "access": "rwm"}]}
    session = None
    if MODE == "v2":
        # v2 lets a process join only a delegated subtree it already runs in: start the user inside it.
        session = posixpath.join(delegated, "session")
        os.mkdir(session)
        io_weight = "io.bfq.weight" if fs.exists(delegated, "io.bfq.weight") else "io.weight"
        read = [(cgroups.UNIFIED, name) for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.weight",
                                                     "cpu.max", io_weight)]
        expected = {"memory.max": str(64 * MiB), "memory.swap.max": "0", "pids.max": "5",
                    "cpu.weight": str(v2.shares_to_weight(512)), "cpu.max": "20000 100000",
                    io_weight: "200" if io_weight == "io.bfq.weight" else str(v2.blkio_weight_to_io_weight(200))}
    else:
        blkio_weight = "blkio.weight" if fs.exists("/sys/fs/cgroup/blkio", "blkio.weight") else "blkio.bfq.weight"
        read = [("memory", "memory.limit_in_bytes"), ("memory", "memory.memsw.limit_in_bytes"),
                ("pids", "pids.max"), ("cpu", "cpu.shares"), ("cpu", "cpu.cfs_quota_us"), ("blkio", blkio_weight)]
        expected = {"memory.limit_in_bytes": str(64 * MiB), "memory.memsw.limit_in_bytes": str(64 * MiB),
                    "pids.max": "5", "cpu.shares": "512", "cpu.cfs_quota_us": "20000", blkio_weight: "200"}
    out = run_manager_as(test_user, session, id="c1", resources=resources, create=True, read=read)
    assert "error" not in out, out
    manager = cgroups.load_manager(out["state"])
    try:
        assert {name: value.split()[-1] if "weight" in name else value
                for name, value in out["files"].items()} == expected
        # The script itself is one task: four forks fit under pids.max=5, the fifth gets EAGAIN.
        assert out["forked"] == 4
        assert out["fork_errno"] == errno.EAGAIN
        paths = manager.paths()
        assert "devices" not in paths
        assert cgroups.DEVICES_ROOTLESS_NOTICE in out["notices"]
        if MODE == "v2":
            assert paths == {cgroups.UNIFIED: posixpath.join(delegated, "c1")}
            assert os.stat(paths[cgroups.UNIFIED]).st_uid == test_user.uid
        for controller in ("memory", "pids", "cpu", "cpuacct", "blkio"):
            if controller in cgroups.mounts().v1:
                expected_dir = posixpath.join(cgroups.mounts().v1[controller].mountpoint, "ocirt", test_user.name,
                                              "c1")
                assert paths[controller] == expected_dir
                assert os.stat(expected_dir).st_uid == test_user.uid  # made by the user, not by root
    finally:
        manager.destroy()
    assert not any(os.path.exists(path) for path in manager.paths().values())


def test_delegate_chowns_what_the_kernel_needs(test_user, delegate_for):
    directories = delegate_for(["memory", "cpu", "pids"])
    table = cgroups.mounts()
    if MODE == "v2":
        # The kernel's v2 contract: the directory and its cgroup.procs/threads/subtree_control, with the
        # controllers on in the (root-owned) parent.
        (directory,) = directories
        assert directory == posixpath.join(table.v2.mountpoint, "ocirt", test_user.name)
        for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
            assert os.stat(posixpath.join(directory, name)).st_uid == test_user.uid, name
        for name in ("cgroup.controllers", "cgroup.events", "memory.stat"):
            assert os.stat(posixpath.join(directory, name)).st_uid == 0, name
        assert os.stat(posixpath.dirname(directory)).st_uid == 0
        assert {"memory", "cpu", "pids"} <= set(fs.read(posixpath.dirname(directory), "cgroup.subtree_control").split())
        return
    expected = {posixpath.join(table.v1[c].mountpoint, "ocirt", test_user.name)
                for c in ("memory", "cpu", "cpuacct", "pids") if c in table.v1}
    assert set(directories) == expected
    memory = posixpath.join(table.v1["memory"].mountpoint, "ocirt", test_user.name)
    for name in ("", "cgroup.procs", "tasks", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        assert os.stat(posixpath.join(memory, name)).st_uid == test_user.uid, name
    for name in ("notify_on_release", "cgroup.clone_children", "memory.stat"):
        assert os.stat(posixpath.join(memory, name)).st_uid == 0, name
    # The shared parent stays root's.
    assert os.stat(posixpath.dirname(memory)).st_uid == 0


def test_undelegate_refuses_while_in_use_then_removes(test_user, delegate_for):
    directories = delegate_for(["pids"])
    child = posixpath.join(directories[0], "busy")
    os.mkdir(child)
    with pytest.raises(CgroupError, match=r"still holds child cgroups \(busy\)"):
        delegation.undelegate(test_user.name, ["pids"], None)
    assert os.path.isdir(directories[0])
    os.rmdir(child)
    assert delegation.undelegate(test_user.name, ["pids"], None) == directories
    assert not os.path.exists(directories[0])


def test_delegate_refuses_unknown_users_and_controllers(test_user):
    with pytest.raises(CgroupError, match="no user named 'no-such-user-ocirt'"):
        delegation.delegate("no-such-user-ocirt", ["memory"], None)
    table = cgroups.mounts()
    v2_controllers = (fs.read_or_none(table.v2.mountpoint, "cgroup.controllers") or "").split() if table.v2 else []
    missing = next(c for c in ("net_cls", "perf_event", "rdma", "misc") if c not in table.v1 and c not in v2_controllers)
    with pytest.raises(CgroupError, match=f"cannot delegate the {missing} controller: it is not mounted"):
        delegation.delegate(test_user.name, [missing], None)
    assert not delegated_dirs(delegation.default_path(test_user.name))


def test_delegate_a_custom_path_used_through_an_absolute_cgroups_path(test_user, delegate_for, cgroup_prefix):
    path = f"{cgroup_prefix}/{test_user.name}"
    (delegated, *_) = delegate_for(["pids"], path)
    session = None
    if MODE == "v2":
        session = posixpath.join(delegated, "session")
        os.mkdir(session)
        # The user steps back into it before removing c1: its cgroup.procs must be the user's, as in a
        # session cgroup the user's manager made.
        os.chown(session, test_user.uid, test_user.gid)
        os.chown(posixpath.join(session, "cgroup.procs"), test_user.uid, test_user.gid)
    out = run_manager_as(test_user, session, id="c1", path=f"/{path}/c1", resources={"pids": {"limit": 3}},
                         create=True, read=[(cgroups.UNIFIED if MODE == "v2" else "pids", "pids.max")],
                         freeze=MODE != "v2", destroy=True, back=session)
    assert "error" not in out, out
    manager = cgroups.load_manager(out["state"])
    try:
        assert out["files"]["pids.max"] == "3"
        assert out["forked"] == 2
        if MODE != "v2":  # (on v2 cgroup.freeze is in every cgroup: the script would freeze itself)
            assert out["freeze_error"] == (
                "cannot freeze container c1: no freezer cgroup; "
                f"run `ocirt cgroup delegate --user {test_user.name} --controllers freezer` as root")
        assert out["left"] == []
    finally:
        manager.destroy()


def test_delegate_cgroup2_only_controller(test_user, unified_root_restored, delegate_for):
    table = cgroups.mounts()
    available = (fs.read_or_none(table.v2.mountpoint, "cgroup.controllers") or "").split()
    if cgroups.detect_mode() != "hybrid" or "hugetlb" in table.v1 or "hugetlb" not in available:
        pytest.skip("hugetlb is not cgroup2-only here")
    (directory,) = delegate_for(["hugetlb"])
    assert directory == posixpath.join(table.v2.mountpoint, "ocirt", test_user.name)
    for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        assert os.stat(posixpath.join(directory, name)).st_uid == test_user.uid, name
    assert "hugetlb" in fs.read(posixpath.dirname(directory), "cgroup.subtree_control").split()
