"""A symlinked /proc (CVE-2019-16884, CVE-2019-19921, CVE-2023-27561): an image (or a volume shared with
another container) whose /proc is a symlink makes a careless runtime mount procfs somewhere else, or
write LSM labels and sysctls into files the container controls. ocirt refuses a symlinked /proc
destination and writes procfs files only through its private procfs instance."""

from __future__ import annotations

import os
import shutil

import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle


@pytest.mark.parametrize("target", ["host", "inside"])
def test_a_symlinked_proc_is_refused(make_bundle, user, canary, target):
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    (bundle.rootfs / "proc").rmdir()
    if target == "host":
        os.symlink(str(canary.directory), bundle.rootfs / "proc")
    else:
        # CVE-2019-19921 / CVE-2023-27561: /proc points into a directory the container itself controls.
        (bundle.rootfs / "fakeproc").mkdir()
        os.symlink("/fakeproc", bundle.rootfs / "proc")
    result = bundle.run()
    assert_clear_error(result, "/proc", "symlink")
    assert_nothing_left(bundle)


def test_a_proc_symlink_through_a_volume_is_refused(make_bundle, user, canary, test_dir):
    """/proc resolves through a bind-mounted volume whose content another container could change."""
    volume = test_dir / "volume"
    volume.mkdir()
    os.symlink(str(canary.directory), volume / "proc")
    os.chmod(volume, 0o777)
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    shutil.rmtree(bundle.rootfs / "proc")
    os.symlink("/vol/proc", bundle.rootfs / "proc")
    (bundle.rootfs / "vol").mkdir()
    mounts = bundle.config["mounts"]
    mounts.insert(0, {"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]})
    result = bundle.run()
    assert_clear_error(result, "/proc")
    assert_nothing_left(bundle)


@pytest.mark.parametrize("destination", ["/proc/self/attr", "/proc/sys/kernel", "/proc/self/attr/exec"])
def test_a_mount_over_proc_files_is_refused(make_bundle, user, canary, destination):
    """What the LSM-label write (CVE-2019-16884) relied on: a mount the container controls over the
    /proc files the runtime writes."""
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    bundle.config["mounts"].append({"destination": destination, "type": "bind", "source": str(canary.directory),
                                    "options": ["rbind"]})
    result = bundle.run()
    assert_clear_error(result, destination)
    assert_nothing_left(bundle)


def test_a_volume_symlinked_into_proc_is_refused(make_bundle, user, canary):
    """``/data -> /proc/self/attr`` in the image: a volume at /data would cover the LSM attribute files."""
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    os.symlink("/proc/self/attr", bundle.rootfs / "data")
    bundle.config["mounts"].append({"destination": "/data", "type": "bind", "source": str(canary.directory),
                                    "options": ["rbind"]})
    result = bundle.run()
    assert_clear_error(result, "/data")
    assert_nothing_left(bundle)
