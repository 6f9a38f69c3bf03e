"""``--pidfd-socket`` (runc 1.2's flag) on create, run -d and exec: the caller receives a pidfd of the
process, and it is that process's (the pid in /proc/self/fdinfo, a signal through it reaches it).
A path that is not a socket fails before anything is made. Root and rootless."""

from __future__ import annotations

import array
import os
import signal
import socket
from pathlib import Path

import helpers
import pytest


@pytest.fixture(params=["root", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


class PidfdSocket:
    """The engine's side: listens, then takes one pidfd."""

    def __init__(self, directory: Path):
        self.path = directory / "pidfd.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o777)
        self.listener.listen(2)
        self.listener.settimeout(10)

    def receive(self) -> tuple[int, bytes]:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            payload, ancdata, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(4 * 4))
        fds = [fd for level, kind, data in ancdata if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in array.array("i", data[: len(data) - len(data) % 4])]
        for extra in fds[1:]:
            os.close(extra)
        assert len(fds) == 1, f"one fd arrives, not {len(fds)}"
        return fds[0], payload

    def close(self) -> None:
        self.listener.close()


def pid_of_pidfd(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("Pid:"):
            return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a pidfd (no Pid: in its fdinfo)")


@pytest.mark.parametrize("command", ["create", "run-detached"])
def test_the_init_s_pidfd_arrives_and_kills_it(make_bundle, user, test_dir, command):
    bundle = make_bundle(user=user, args=["sleep", "300"])
    receiver = PidfdSocket(helpers.world_reachable_dir(test_dir / "sock"))
    pidfd = -1
    try:
        if command == "create":
            result = bundle.create("--pidfd-socket", str(receiver.path))
        else:
            result = bundle.run("--detach", "--pidfd-socket", str(receiver.path))
        assert result.returncode == 0, result.stderr
        pidfd, payload = receiver.receive()
        assert payload == b"pidfd"
        state = bundle.state()
        assert pid_of_pidfd(pidfd) == state["pid"]
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        assert helpers.wait_for(lambda: bundle.state()["status"] == "stopped", 5)
    finally:
        receiver.close()
        if pidfd >= 0:
            os.close(pidfd)
        bundle.delete(force=True)


def test_exec_sends_the_exec_process_s_pidfd(make_bundle, user, test_dir):
    bundle = make_bundle(user=user, args=["sleep", "300"])
    receiver = PidfdSocket(helpers.world_reachable_dir(test_dir / "sock"))
    pids = helpers.world_reachable_dir(test_dir / "pids")
    if user is not None:
        os.chown(pids, user.uid, user.gid)
    pid_file = pids / "exec.pid"
    pidfd = -1
    try:
        assert bundle.run("--detach").returncode == 0
        result = bundle.runtime(["exec", "--detach", "--pid-file", str(pid_file), "--pidfd-socket",
                                 str(receiver.path), bundle.id, "sleep", "300"])
        assert result.returncode == 0, result.stderr
        pidfd, _ = receiver.receive()
        exec_pid = int(pid_file.read_text())
        assert pid_of_pidfd(pidfd) == exec_pid != bundle.state()["pid"]
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        assert helpers.wait_for(lambda: not helpers.pid_alive(exec_pid), 5)
        assert bundle.state()["status"] == "running", "only the exec'd process was killed"
    finally:
        receiver.close()
        if pidfd >= 0:
            os.close(pidfd)
        bundle.delete(force=True)


@pytest.mark.parametrize("what", ["missing", "a-file"])
def test_a_path_that_is_not_a_socket_fails_before_anything_is_made(make_bundle, user, test_dir, what):
    bundle = make_bundle(user=user, args=["true"])
    path = helpers.world_reachable_dir(test_dir / "sock") / "pidfd.sock"
    if what == "a-file":
        path.write_text("")
    result = bundle.create("--pidfd-socket", str(path))
    assert result.returncode == 1
    reason = "no such file or directory" if what == "missing" else "not a socket"
    assert result.stderr == f"ocirt: cannot use pidfd socket {path}: {reason}\n"
    assert not (bundle.root / bundle.id).exists()
    assert bundle.cgroup_dirs() == []
