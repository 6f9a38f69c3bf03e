"""A rootfs whose /dev is a symlink: followed on the host, the runtime's device nodes, /dev/console,
/dev/pts and /dev/shm would be created in (or mounted over) the link's target. ocirt refuses a /dev
mount destination that is a symlink, and a symlinked /dev when it makes the devices itself."""

from __future__ import annotations

import os

import helpers
import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle, without_mount


def _host_dev() -> tuple[list[str], list[str]]:
    mounts = [point for point, _, _ in helpers.mountinfo() if point.startswith("/dev")]
    return sorted(os.listdir("/dev")), sorted(mounts)


@pytest.mark.parametrize("dev_mount", [True, False], ids=["dev-tmpfs", "image-dev"])
@pytest.mark.parametrize("target", ["canary", "host-dev", "climbing"])
def test_a_symlinked_dev_never_reaches_the_host(make_bundle, user, canary, dev_mount, target):
    bundle = own_rootfs_bundle(make_bundle, user, args=["sh", "-c", "ls -la /dev; echo pwned > /dev/x"])
    if not dev_mount:
        without_mount(bundle.config, "/dev")
    bundle.config["root"]["readonly"] = False
    (bundle.rootfs / "dev").rmdir()
    link = {"canary": str(canary.directory), "host-dev": "/dev",
            "climbing": "../../../../../../.." + str(canary.directory)}[target]
    os.symlink(link, bundle.rootfs / "dev")
    host_dev_before = _host_dev()
    result = bundle.run()
    assert _host_dev() == host_dev_before, "the host's /dev changed"
    if result.returncode != 0:
        assert_clear_error(result, "/dev")
    else:
        # Resolved inside the rootfs: the devices went to the link's target within the image.
        assert "null" in result.stdout
        assert canary.secret not in result.stdout
    assert_nothing_left(bundle)
