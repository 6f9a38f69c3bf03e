"""/dev/null replaced by a symlink under masked paths (CVE-2025-31133). A runtime that masks files by
bind-mounting the container's /dev/null would follow an image's ``/dev/null -> <anything>`` and bind that
target over the masked path: a host file, or a procfs file such as ``/proc/sys/kernel/core_pattern``
made writable. The config here has no /dev tmpfs, so the image's own /dev is used. ocirt masks with a
clone of the host's /dev/null, checked to be the 1:3 character device before use."""

from __future__ import annotations

import os

import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle, without_mount

PROBE = ("for p in /proc/timer_list /proc/sched_debug /proc/keys; do "
         "[ -e $p ] || continue; stat -c '%n %F %t:%T' $p; echo pwned > $p; head -c 100 $p; done; "
         "stat -c '%n %F %t:%T' /dev/null")


@pytest.mark.parametrize("target", ["host-file", "core_pattern"])
def test_masked_paths_never_use_a_symlinked_dev_null(make_bundle, user, canary, target):
    bundle = own_rootfs_bundle(make_bundle, user, args=["sh", "-c", PROBE])
    without_mount(bundle.config, "/dev")
    bundle.config["root"]["readonly"] = False
    null = bundle.rootfs / "dev" / "null"
    null.unlink(missing_ok=True)
    # The core_pattern target is only stat'ed and read by the probe below if the runtime followed it... and
    # then written: so the probe's write goes to a path that the host's core_pattern can never be.
    link_target = str(canary.file) if target == "host-file" else "/proc/sys/kernel/core_pattern"
    os.symlink(link_target, null)
    with open("/proc/sys/kernel/core_pattern") as f:
        core_pattern = f.read()
    if target == "core_pattern":
        # Never let a vulnerable runtime's mask make the probe write the host's core_pattern: only look.
        bundle.config["process"]["args"] = ["sh", "-c", PROBE.replace("echo pwned > $p; ", "")]
    result = bundle.run()
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read() == core_pattern
    if result.returncode != 0:
        assert_clear_error(result)
    else:
        masked = [line for line in result.stdout.splitlines() if line.startswith("/proc/")]
        assert masked, result.stdout
        for line in masked:
            assert line.endswith("character special file 1:3"), f"masked with something else: {line}"
        assert "pwned" not in result.stdout
        assert "/dev/null character special file 1:3" in result.stdout, "the image's link is replaced"
    assert_nothing_left(bundle)


def test_a_dev_null_that_is_a_regular_file_is_not_used_for_masking(make_bundle, user, canary):
    bundle = own_rootfs_bundle(make_bundle, user, args=["sh", "-c", PROBE])
    without_mount(bundle.config, "/dev")
    bundle.config["root"]["readonly"] = False
    null = bundle.rootfs / "dev" / "null"
    null.unlink(missing_ok=True)
    null.write_text("not a device\n")
    result = bundle.run()
    if result.returncode != 0:
        assert_clear_error(result)
    else:
        masked = [line for line in result.stdout.splitlines() if line.startswith("/proc/")]
        assert masked and all(line.endswith("character special file 1:3") for line in masked), result.stdout
        assert "not a device" not in result.stdout
    assert_nothing_left(bundle)
