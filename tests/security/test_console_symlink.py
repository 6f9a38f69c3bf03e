"""A /dev/console symlink with process.terminal (CVE-2025-52565): the runtime binds the pty slave onto
/dev/console; following an image's ``/dev/console -> <host file>`` would bind it over (or create) the
target on the host side of the mount namespace. The config has no /dev tmpfs, so the image's /dev is
used. ocirt creates /dev/console through the /dev dirfd with O_NOFOLLOW after removing a symlink, and
binds the slave onto that fd."""

from __future__ import annotations

import array
import os
import select
import socket
import time
from pathlib import Path

import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle, without_mount

PTMX = os.makedev(5, 2)


class ConsoleSocket:
    """The engine's side of ``--console-socket``: receives the pty master."""

    def __init__(self, directory: Path):
        self.path = directory / "console.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o777)
        self.listener.listen(1)
        self.listener.settimeout(10)

    def receive_master(self) -> int:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            _, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
        fds = [fd for level, kind, data in ancdata if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", data[: len(data) - len(data) % 4])]
        for extra in fds[1:]:
            os.close(extra)
        assert len(fds) == 1 and os.fstat(fds[0]).st_rdev == PTMX, "a pty master arrives"
        return fds[0]

    def close(self) -> None:
        self.listener.close()


def read_all(fd: int, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the slave side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("target", ["canary-file", "canary-dir", "climbing"])
def test_a_symlinked_dev_console_never_reaches_the_host(make_bundle, user, canary, target):
    script = "stat -c '%F %t' /dev/console; echo pwned > /dev/console; echo done"
    bundle = own_rootfs_bundle(make_bundle, user, args=["sh", "-c", script], terminal=True)
    without_mount(bundle.config, "/dev")
    bundle.config["root"]["readonly"] = False
    link = {"canary-file": str(canary.file), "canary-dir": str(canary.directory),
            "climbing": "../../../../../.." + str(canary.file)}[target]
    os.symlink(link, bundle.rootfs / "dev" / "console")
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        result = bundle.create("--console-socket", console.path)
        if result.returncode != 0:
            assert_clear_error(result)
        else:
            master = console.receive_master()
            assert bundle.start().returncode == 0
            output = read_all(master).decode(errors="replace")
            assert "pwned" in output and "done" in output, output
            # The slave is bound onto a fresh /dev/console: a pts node (major 136 = 0x88).
            assert "character special file 88" in output, output
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)
    assert_nothing_left(bundle)
