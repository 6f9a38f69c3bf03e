"""The other face of CVE-2019-5736: the container *executing* the runtime's binary.

runc's init is runc; ocirt's init is the host's Python until it calls execve. A container whose process is
/proc/self/exe (or a symlink to it in the image) would start the host's interpreter inside the container,
and could later reopen that file for writing through its own /proc/self/exe. ocirt resolves the process's
executable before the handshake and refuses one that is the interpreter running the runtime. Until execve,
the init of a container without a user namespace (whose root is the host's root) is not dumpable, so
another process in the container can't open its /proc entries either.
"""

from __future__ import annotations

import os

import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle


@pytest.mark.parametrize("how", ["proc-self-exe", "symlink-in-image"])
def test_the_runtime_interpreter_is_never_executed_in_the_container(make_bundle, user, how):
    bundle = own_rootfs_bundle(make_bundle, user, args=["/proc/self/exe", "-c", "print('escaped')"])
    if how == "symlink-in-image":
        link = bundle.rootfs / "bin" / "innocent"
        link.symlink_to("/proc/self/exe")
        if user is not None:
            os.lchown(link, user.uid, user.gid)
        bundle.config["process"]["args"] = ["innocent", "-c", "print('escaped')"]
    result = bundle.run()
    assert "escaped" not in result.stdout
    assert_clear_error(result, "the runtime's own interpreter", "refused")
    assert result.returncode == 1  # runc's code for a run whose process can't start
    assert_nothing_left(bundle)


def test_a_rootful_init_is_not_dumpable_until_execve(make_bundle):
    """Between create and start the init is the host's Python running as the host's root. A process
    exec'd into the created container, root too but without CAP_SYS_PTRACE, must not be able to open the
    init's exe (the kernel allows a same-uid open only while the target is dumpable)."""
    bundle = make_bundle(args=["true"])
    assert bundle.create().returncode == 0
    try:
        pid = bundle.state()["pid"]
        assert os.path.realpath(f"/proc/{pid}/exe").startswith("/usr/bin/python3"), "the init is Python"
        probe = bundle.runtime(["exec", bundle.id, "sh", "-c",
                                "readlink /proc/1/exe && echo opened || echo denied"])
        assert probe.returncode == 0, probe.stderr
        assert "denied" in probe.stdout and "python" not in probe.stdout, probe.stdout
    finally:
        bundle.delete(force=True)
