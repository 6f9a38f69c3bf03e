"""A writable /sys/fs/cgroup in rootless mode (CVE-2023-25809): runc bound the host's cgroup hierarchy
into rootless containers read-write when it had no cgroup of its own to give, so the container's root
could write host cgroup files its user happened to own (and escape limits, or move processes). In
ocirt's rootless containers every open for writing and every mkdir under /sys/fs/cgroup fails.

The probe only opens for appending and never writes a byte, so a successful open changes nothing."""

from __future__ import annotations

import pytest

from security import assert_clear_error, assert_nothing_left

PROBE = r"""
found=0; writable=0
for f in $(find /sys/fs/cgroup -maxdepth 4 -type f 2> /dev/null); do
  found=$((found + 1))
  if ( : >> "$f" ) 2> /dev/null; then echo "writable $f"; writable=$((writable + 1)); fi
done
# /sys/fs/cgroup itself may be the container's own tmpfs holding the v1 hierarchies: only those count.
for d in $(find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d 2> /dev/null); do
  if mkdir "$d/ocirt-test-probe" 2> /dev/null; then echo "mkdir $d"; rmdir "$d/ocirt-test-probe"; fi
done
echo "files=$found writable=$writable"
"""


@pytest.mark.parametrize("cgroup_mount", ["spec-rootless", "sysfs-rw", "cgroup-rw"])
def test_rootless_cgroupfs_is_not_writable(make_bundle, unprivileged_user, cgroup_mount):
    bundle = make_bundle(user=unprivileged_user, args=["sh", "-c", PROBE])
    mounts = bundle.config["mounts"]
    if cgroup_mount == "sysfs-rw":
        # The config itself asks for a writable /sys: the host's cgroup files still refuse the user.
        for mount in mounts:
            if mount["destination"] == "/sys":
                mount["options"] = ["rbind", "nosuid", "noexec", "nodev"]
    elif cgroup_mount == "cgroup-rw":
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime"]})
    result = bundle.run()
    if result.returncode != 0 and cgroup_mount != "spec-rootless":
        assert_clear_error(result)
    else:
        assert result.returncode == 0, result.stderr
        assert "writable " not in result.stdout and "mkdir " not in result.stdout, result.stdout
        assert "writable=0" in result.stdout and "files=0 " not in result.stdout, result.stdout
    assert_nothing_left(bundle)
