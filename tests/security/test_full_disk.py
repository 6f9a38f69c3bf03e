"""A full disk under --root (issue 16, item 5).

State is written to a small tmpfs filled to within a few pages of its size. A save that can't be completed
is an error, never a truncated file; a create that fails on it undoes everything it made (directory,
cgroups, the waiting init); `list` still lists the containers it can read; `delete --force` still removes
a container whose state can't be read. runc 1.1.5 on a full --root: `create` fails with "no space left on
device" too, and leaves its half-written state directory behind.
"""

from __future__ import annotations

import json
import os
import subprocess

import helpers
import pytest

from security import assert_clear_error

PAGE = 4096
PAGES = 32


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


@pytest.fixture
def small_root(test_dir, user):
    """A --root on a tmpfs of PAGES pages, and a way to leave only N of them free."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = test_dir / "small-root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={PAGES * PAGE},mode=0700", "tmpfs", str(root)],
                   check=True)
    if user is not None:
        os.chown(root, user.uid, user.gid)
    filler = root / ".filler"

    def leave_free(pages: int) -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * PAGE)
        except OSError:
            pass
        finally:
            os.close(fd)
        used = filler.stat().st_size
        os.truncate(filler, max(0, used - pages * PAGE))

    yield root, leave_free
    subprocess.run(["umount", "-l", str(root)], check=False)


def containers_in(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def assert_nothing_left(bundle: helpers.Bundle) -> None:
    assert containers_in(bundle.root) == []
    assert helpers.wait_for(lambda: not helpers.processes_using([bundle.path, bundle.rootfs]), 5)
    assert helpers.mounts_mentioning([bundle.path, bundle.rootfs]) == []
    assert bundle.cgroup_dirs() == []


def test_a_create_that_cannot_save_its_state_fails_and_undoes_itself(make_bundle, user, small_root):
    root, leave_free = small_root
    failures = 0
    for pages in range(0, 4):
        bundle = make_bundle(user=user, args=["sleep", "60"])
        if user is None:
            bundle.config["linux"]["resources"] = {"pids": {"limit": 64}}
        bundle.root = root
        leave_free(pages)
        result = bundle.create()
        if result.returncode == 0:
            assert bundle.delete(force=True).returncode == 0
        else:
            failures += 1
            assert_clear_error(result, "no space left on device")
        assert_nothing_left(bundle)
    assert failures >= 1
    leave_free(PAGES)
    bundle = make_bundle(user=user, args=["true"])
    bundle.root = root
    assert bundle.create().returncode == 0, "the id and the root are usable again once there is space"
    assert bundle.delete(force=True).returncode == 0


def test_list_and_delete_force_get_past_a_state_they_cannot_read(make_bundle, user, small_root):
    root, _ = small_root
    good = make_bundle(user=user, args=["sleep", "60"])
    broken = make_bundle(user=user, args=["sleep", "60"])
    for bundle in (good, broken):
        bundle.root = root
        assert bundle.create().returncode == 0
    # What a crash of a runtime that wrote in place (or a full disk under one) leaves: a truncated file.
    state = root / broken.id / "state.json"
    text = state.read_text()
    os.truncate(state, len(text) // 2)
    listed = good.runtime(["list", "--format", "json"])
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)] == [good.id]
    assert broken.id in listed.stderr and "\n" == listed.stderr[-1] and listed.stderr.count("\n") == 1
    assert broken.delete(force=True).returncode == 0
    assert broken.id not in containers_in(root)
    assert good.delete(force=True).returncode == 0
    assert containers_in(root) == []
