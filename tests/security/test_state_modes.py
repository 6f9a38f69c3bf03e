"""The state of a container is private to the runtime's user (issue 16, item 4).

state.json and the saved config hold the container's whole config (env values, hook arguments); the exec
fifo, opened for writing, would run the container's process before the engine asked. runc 1.1.5 makes the
container directory 0711, state.json 0600 and exec.fifo 0622, and relies on its 0700 root. ocirt makes the
directory 0700, the files 0600, and the fifo 0600, or 0620 for the process's own group when the process runs
as another host uid (a subordinate uid, rootless): never writable by others, even inside the private
directory.
"""

from __future__ import annotations

import os
import stat
import subprocess

import helpers
import pytest

FILES = ("state.json", "config.json")


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_state_directory_and_its_container_are_private(make_bundle, user, test_dir):
    bundle = make_bundle(user=user, args=["sleep", "600"])
    parent = test_dir / "parent-of-a-fresh-root"
    parent.mkdir(mode=0o755)
    if user is not None:
        os.chown(parent, user.uid, user.gid)
    fresh_root = parent / "ocirt"
    bundle.root = fresh_root
    assert bundle.create().returncode == 0
    try:
        assert mode(fresh_root) == 0o700
        directory = fresh_root / bundle.id
        assert mode(directory) == 0o700
        for name in FILES:
            assert mode(directory / name) == 0o600, name
        fifo = directory / "exec.fifo"
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert mode(fifo) == 0o600, oct(mode(fifo))
        owner = user.uid if user else 0
        assert {os.lstat(p).st_uid for p in [directory, fifo, *(directory / n for n in FILES)]} == {owner}
        assert bundle.start().returncode == 0
    finally:
        assert bundle.delete(force=True).returncode == 0


def test_other_users_cannot_open_roots_exec_fifo_or_state(make_bundle, unprivileged_user):
    bundle = make_bundle(args=["sleep", "600"])
    assert bundle.create().returncode == 0
    directory = bundle.root / bundle.id
    # Even with the directory (or an fd of it) in reach, the files themselves refuse another user.
    os.chmod(bundle.root, 0o711)
    os.chmod(directory, 0o711)
    try:
        probe = ("import os, sys\n"
                 "for path, flags in ((sys.argv[1], os.O_WRONLY | os.O_NONBLOCK), (sys.argv[2], os.O_RDONLY)):\n"
                 "    try:\n"
                 "        os.open(path, flags)\n"
                 "    except PermissionError:\n"
                 "        print('denied')\n"
                 "    except OSError as err:\n"
                 "        print(err.strerror)\n")
        result = subprocess.run(
            ["/usr/bin/python3", "-c", probe, str(directory / "exec.fifo"), str(directory / "state.json")],
            user=unprivileged_user.uid, group=unprivileged_user.gid, extra_groups=[], capture_output=True,
            text=True, check=False)
        assert result.stdout.split() == ["denied", "denied"], result
    finally:
        os.chmod(directory, 0o700)
        os.chmod(bundle.root, 0o700)
        assert bundle.delete(force=True).returncode == 0


@pytest.mark.parametrize("as_root", [False, True], ids=["rootless", "root"])
def test_a_process_of_another_host_uid_still_starts_through_a_fifo_others_cannot_write(
        make_bundle, subid_user, as_root):
    """The process runs as a subordinate uid and gid: the fifo goes to its group (the rootless runtime may
    not chgrp to a subordinate gid: the init, root of the new user namespace, does), mode 0620."""
    bundle = make_bundle(user=None if as_root else subid_user, args=["sh", "-c", "echo started as $(id -u)"])
    helpers.use_subid_maps(bundle.config, subid_user)
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    namespaces = bundle.config["linux"]["namespaces"]
    if not any(ns["type"] == "user" for ns in namespaces):
        namespaces.append({"type": "user"})
    out = bundle.path / "out"
    assert bundle.create(stdout=out).returncode == 0, bundle.runtime(["state", bundle.id]).stderr
    try:
        fifo = bundle.root / bundle.id / "exec.fifo"
        assert mode(fifo) == 0o620, oct(mode(fifo))
        assert os.lstat(fifo).st_gid == subid_user.subgid[0] + 999
        assert os.lstat(fifo).st_uid == (0 if as_root else subid_user.uid)
        started = bundle.start()
        assert started.returncode == 0, started.stderr
        assert helpers.wait_for(lambda: "started as 1000" in out.read_text()), out.read_text()
    finally:
        assert bundle.delete(force=True).returncode == 0
