"""Symlinked mount destinations (CVE-2021-30465 class): a path of the image that is, or becomes while the
runtime works, a symlink to a host directory. A runtime that follows it on the host would create the
mount point there (a new entry in the host canary) or mount onto the host path. ocirt resolves every
destination inside the rootfs (openat2 RESOLVE_IN_ROOT) and mounts onto the fd it got."""

from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle

AT_FDCWD = -100
RENAME_EXCHANGE = 2


@pytest.mark.parametrize("link_kind", ["absolute", "climbing"])
def test_a_symlinked_destination_lands_inside_the_rootfs(make_bundle, user, canary, link_kind):
    bundle = own_rootfs_bundle(make_bundle, user, args=[
        "sh", "-c", "echo pwned > /mnt/x/file; echo pwned > /mnt/x/made/new; cat /mnt/x/made/new"])
    target = str(canary.directory) if link_kind == "absolute" else "../../../../../../.." + str(canary.directory)
    os.symlink(target, bundle.rootfs / "mnt" / "x")
    # The first mount creates its missing mount point below the link; the second writes through it.
    bundle.config["mounts"] += [
        {"destination": "/mnt/x/made", "type": "tmpfs", "source": "tmpfs", "options": ["mode=777"]},
    ]
    bundle.config["root"]["readonly"] = False
    result = bundle.run()
    if result.returncode != 0:
        assert_clear_error(result)
    else:
        assert result.stdout == "pwned\n"
        # Followed inside the rootfs: the mount point and the file exist in the image, not on the host.
        inside = bundle.rootfs / str(canary.directory).lstrip("/")
        assert (inside / "made").is_dir()
        assert (inside / "file").read_text() == "pwned\n"
    assert_nothing_left(bundle)


def test_a_symlinked_bind_file_destination_is_created_inside_the_rootfs(make_bundle, user, canary, test_dir):
    source = test_dir / "volume-file"
    source.write_text("from the volume\n")
    os.chmod(source, 0o644)
    bundle = own_rootfs_bundle(make_bundle, user, args=["cat", "/mnt/x/volume-file"])
    os.symlink(str(canary.directory), bundle.rootfs / "mnt" / "x")
    bundle.config["mounts"].append({"destination": "/mnt/x/volume-file", "type": "bind", "source": str(source),
                                    "options": ["bind", "ro"]})
    result = bundle.run()
    if result.returncode != 0:
        assert_clear_error(result)
    else:
        assert result.stdout == "from the volume\n"
        assert (bundle.rootfs / str(canary.directory).lstrip("/") / "volume-file").is_file()
    assert_nothing_left(bundle)


def _exchange(a: str, b: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_a_destination_flipped_to_a_host_symlink_during_create_stays_inside(make_bundle, user, canary):
    """A host thread atomically swaps ``/mnt/race`` of the image between a directory and a symlink to the
    canary while containers are created over and over. Whichever the runtime sees, the mount point it
    creates (``/mnt/race/point``) and the file the container writes must stay inside the rootfs."""
    bundle = own_rootfs_bundle(make_bundle, user, args=["sh", "-c", "echo pwned > /mnt/race/point/f"])
    bundle.config["root"]["readonly"] = False
    bundle.config["mounts"].append({"destination": "/mnt/race/point", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["mode=777"]})
    race = bundle.rootfs / "mnt" / "race"
    link = bundle.rootfs / "mnt" / "race-link"
    race.mkdir()
    os.symlink(str(canary.directory), link)
    if user is not None:
        os.lchown(race, user.uid, user.gid)
        os.lchown(link, user.uid, user.gid)

    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            _exchange(str(race), str(link))
            flips += 1
            time.sleep(0.0005)

    flipper = threading.Thread(target=flip, daemon=True)
    outcomes = {"ran": 0, "refused": 0}
    deadline = time.monotonic() + 60
    flipper.start()
    try:
        for _ in range(30):
            if time.monotonic() > deadline:
                break
            # ``run`` deletes the container when it exits, so the same id serves every attempt.
            result = bundle.run()
            if result.returncode == 0:
                outcomes["ran"] += 1
            else:
                outcomes["refused"] += 1
                assert_clear_error(result)
            assert_nothing_left(bundle)
            canary.assert_untouched()
    finally:
        stop.set()
        flipper.join()
    assert flips > 30, "the race never ran"
    assert outcomes["ran"] + outcomes["refused"] >= 10, outcomes
