"""Whose state the runtime trusts (issue 16, item 3).

A forged ``state.json`` names the process that `kill` signals, the namespaces `exec` joins and the
cgroups `delete` removes. As root, a state directory that someone other than its owner can write (itself
or through a parent) would let that someone aim root at any process of the host: it is refused. A state
directory that belongs to a user is legitimate (Slurm runs `state`, `kill` and `delete` as root on its
users' containers), but root then acts with that user's authority only, so a state forged by the user
reaches nothing the user couldn't reach. State files are opened without following symlinks.
runc 1.1.5 uses such a directory as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import helpers
import pytest

from security import assert_clear_error


@pytest.fixture
def victim():
    """A process of root's that a forged state will name: it must survive every attempt."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def forge_container(root, container_id: str, pid: int, owner: helpers.UnprivilegedUser) -> None:
    """What another user can plant in a directory it may write: a container whose init is ``pid``."""
    directory = root / container_id
    directory.mkdir(mode=0o700)
    state = {"ociVersion": "1.3.0", "id": container_id, "status": "running", "pid": pid, "bundle": "/",
             "rootfs": "/", "created": "2024-01-01T00:00:00Z", "owner": owner.name,
             "ocirt": {"start_time": start_time(pid), "creator_pid": 1}}
    (directory / "state.json").write_text(json.dumps(state))
    helpers.chown_tree(directory, owner.uid, owner.gid)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o703], ids=oct)
def test_root_refuses_a_state_directory_others_can_write(test_dir, make_bundle, runtime, unprivileged_user,
                                                         victim, mode):
    root = test_dir / "shared-root"
    root.mkdir()
    os.chmod(root, mode)
    forge_container(root, "forged", victim.pid, unprivileged_user)
    for args in (["kill", "forged", "KILL"], ["delete", "--force", "forged"], ["state", "forged"], ["list"]):
        result = runtime(args, root=root)
        assert_clear_error(result, str(root), "writable by")
    bundle = make_bundle()
    result = runtime(["create", "--bundle", bundle.path, bundle.id], root=root)
    assert_clear_error(result, "writable by")
    assert not (root / bundle.id).exists()
    assert victim.poll() is None, "root signalled the process a forged state named"
    shutil.rmtree(root / "forged")


def test_root_refuses_a_state_directory_whose_parent_others_can_write(test_dir, make_bundle, runtime,
                                                                       unprivileged_user, victim):
    parent = test_dir / "open-parent"
    parent.mkdir()
    os.chmod(parent, 0o777)
    root = parent / "root"
    root.mkdir(mode=0o700)
    # The parent's other users may rename root away and put their own directory, with a forged state, there.
    forge_container(root, "forged", victim.pid, unprivileged_user)
    result = runtime(["kill", "forged", "KILL"], root=root)
    assert_clear_error(result, f"its parent {parent} is writable by everyone")
    bundle = make_bundle()
    result = runtime(["create", "--bundle", bundle.path, bundle.id], root=parent / "new-root")
    assert_clear_error(result, "writable by everyone")
    assert not (parent / "new-root").exists(), "the refused create left the state directory it made"
    assert victim.poll() is None
    shutil.rmtree(root / "forged")


def test_root_refuses_a_state_directory_whose_parent_belongs_to_another_user(test_dir, runtime,
                                                                              unprivileged_user):
    parent = test_dir / "users-parent"
    parent.mkdir(mode=0o755)
    os.chown(parent, unprivileged_user.uid, unprivileged_user.gid)
    result = runtime(["list"], root=parent / "root")
    assert result.returncode == 0, "a state directory that does not exist holds no container"
    (parent / "root").mkdir(mode=0o700)
    result = runtime(["list"], root=parent / "root")
    assert_clear_error(result, f"belongs to uid {unprivileged_user.uid}")


def test_a_sticky_root_owned_parent_such_as_tmp_is_fine(test_dir, make_bundle, runtime):
    parent = test_dir / "sticky"
    parent.mkdir()
    os.chmod(parent, 0o1777)
    root = parent / "root"
    bundle = make_bundle(args=["true"])
    created = runtime(["create", "--bundle", bundle.path, bundle.id], root=root)
    assert created.returncode == 0, created.stderr
    assert (root / bundle.id).is_dir()
    deleted = runtime(["delete", "--force", bundle.id], root=root)
    assert deleted.returncode == 0, deleted.stderr
    assert not (root / bundle.id).exists()


def test_in_a_users_state_directory_root_acts_with_the_users_authority(make_bundle, runtime,
                                                                       unprivileged_user, victim):
    """The Slurm pattern: the user creates and starts, root asks and cleans up."""
    user = unprivileged_user
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    as_root = {"root": bundle.root, "user": None}
    state = json.loads(runtime(["state", bundle.id], **as_root).stdout)
    assert state["status"] == "running"
    assert runtime(["kill", bundle.id, "KILL"], **as_root).returncode == 0
    assert helpers.wait_for(lambda: json.loads(runtime(["state", bundle.id], **as_root).stdout)["status"]
                            == "stopped")
    deleted = runtime(["delete", bundle.id], **as_root)
    assert deleted.returncode == 0, deleted.stderr
    assert not (bundle.root / bundle.id).exists()

    # The user forges a container whose init is root's process: root's kill and delete can't reach it.
    forge_container(bundle.root, "forged", victim.pid, user)
    killed = runtime(["kill", "forged", "KILL"], **as_root)
    assert_clear_error(killed, "operation not permitted")
    deleted = runtime(["delete", "--force", "forged"], **as_root)
    assert deleted.returncode == 0, deleted.stderr
    assert not (bundle.root / "forged").exists()
    time.sleep(0.1)
    assert victim.poll() is None, "root signalled a process the state's owner could not"

    other = make_bundle(args=["true"])
    created = runtime(["create", "--bundle", other.path, other.id], **as_root)
    assert_clear_error(created, f"belongs to uid {user.uid}")


def test_state_files_are_opened_without_following_symlinks(make_bundle, user, test_dir):
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.create().returncode == 0
    state_file = bundle.root / bundle.id / "state.json"
    genuine = state_file.read_bytes()
    decoy = test_dir / "decoy.json"
    forged = json.loads(genuine)
    forged["pid"] = 1
    decoy.write_text(json.dumps(forged))
    state_file.unlink()
    state_file.symlink_to(decoy)
    try:
        result = bundle.runtime(["state", bundle.id])
        assert_clear_error(result, "state is unreadable")
        result = bundle.runtime(["kill", bundle.id, "KILL"])
        assert_clear_error(result, "state is unreadable")
    finally:
        state_file.unlink()
        state_file.write_bytes(genuine)
        if user is not None:
            os.chown(state_file, user.uid, user.gid)
    assert bundle.delete(force=True).returncode == 0
    assert json.loads(decoy.read_text())["pid"] == 1


def test_rootless_refuses_a_state_directory_of_someone_else(make_bundle, test_dir, unprivileged_user):
    foreign = test_dir / "roots-dir"
    foreign.mkdir(mode=0o755)
    bundle = make_bundle(user=unprivileged_user)
    result = bundle.runtime(["create", "--bundle", bundle.path, bundle.id], root=foreign)
    assert_clear_error(result, "owned by uid 0, not by you")
    assert list(foreign.iterdir()) == []
