"""Seccomp through the command line: the profile in config.json reaches the container's process. A
runtime that drops or mis-compiles it leaves the kernel's attack surface open; one that mishandles the
notify listener leaves the container hung or hands the fd to nobody. Blocking mkdir with EPERM,
killing with KILL_PROCESS, and a user-space agent at ``listenerPath`` that receives the notify fd and
the container's state, then answers the container's mkdir with EROFS."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
import threading

import pytest

from security import assert_clear_error, assert_nothing_left

MKDIR_PROBE = "mkdir /tmp/made-by-probe; echo status=$?; [ -d /tmp/made-by-probe ] && echo exists; true"
SIGSYS = 31

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, data.nr, data.arch, data.ip, data.args[6]
NOTIF_RESP = struct.Struct("=QqiI")  # id, val, error, flags


def profile(action: str, **extra) -> dict:
    rule = {"names": ["mkdir", "mkdirat"], "action": action, **extra}
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [rule]}


def writable_tmp(config: dict) -> None:
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]})


def test_a_profile_blocking_mkdir_with_eperm(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh", "-c", MKDIR_PROBE])
    writable_tmp(bundle.config)
    bundle.config["linux"]["seccomp"] = profile("SCMP_ACT_ERRNO", errnoRet=errno.EPERM)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert "status=1" in result.stdout and "exists" not in result.stdout, result.stdout
    assert_nothing_left(bundle)


def test_a_listener_path_without_notify_rules_is_not_waited_for(make_bundle, user, test_dir):
    """listenerPath alone makes no notify fd: create must not wait for one (it used to fail with
    "unexpected message 'ready'")."""
    bundle = make_bundle(user=user, args=["sh", "-c", MKDIR_PROBE])
    writable_tmp(bundle.config)
    bundle.config["linux"]["seccomp"] = dict(profile("SCMP_ACT_ERRNO", errnoRet=errno.EPERM),
                                             listenerPath=str(test_dir / "nobody-listens.sock"))
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert "status=1" in result.stdout and "exists" not in result.stdout, result.stdout
    assert_nothing_left(bundle)


def test_without_the_profile_mkdir_works(make_bundle, user):
    """The control: the probe does create the directory when nothing blocks it."""
    bundle = make_bundle(user=user, args=["sh", "-c", MKDIR_PROBE])
    writable_tmp(bundle.config)
    result = bundle.run()
    assert "status=0" in result.stdout and "exists" in result.stdout, result.stdout
    assert_nothing_left(bundle)


def test_kill_process_kills(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh", "-c", MKDIR_PROBE])
    writable_tmp(bundle.config)
    bundle.config["linux"]["seccomp"] = profile("SCMP_ACT_KILL_PROCESS")
    result = bundle.run()
    # mkdir is busybox's child of sh: it dies of SIGSYS, and sh reports 128 + 31.
    assert f"status={128 + SIGSYS}" in result.stdout and "exists" not in result.stdout, result.stdout
    assert_nothing_left(bundle)


def test_a_profile_that_names_no_known_action_is_refused(make_bundle, user):
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["linux"]["seccomp"] = profile("SCMP_ACT_EXPLODE")
    result = bundle.run()
    assert_clear_error(result, "SCMP_ACT_EXPLODE")
    assert_nothing_left(bundle)


class Agent:
    """A seccomp agent on a unix socket: takes the listener fd and state, answers one mkdir."""

    def __init__(self, path, user, *, ignore_first: int = 0):
        self.path = path
        self.ignore_first = ignore_first
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.socket.bind(str(path))
        if user is not None:
            os.chown(path, user.uid, user.gid)
        self.socket.listen(1)
        self.socket.settimeout(15)
        self.seen: dict = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            for _ in range(self.ignore_first):
                connection, _ = self.socket.accept()
                with connection:
                    _, fds, _, _ = socket.recv_fds(connection, 65536, 4)
                for fd in fds:
                    os.close(fd)
            connection, _ = self.socket.accept()
            with connection:
                message, fds, _, _ = socket.recv_fds(connection, 65536, 4)
                self.seen["trailing"] = connection.recv(1)
            self.seen["state"] = json.loads(message)
            self.seen["fd_count"] = len(fds)
            self.seen["fd_kind"] = os.readlink(f"/proc/self/fd/{fds[0]}")
            with os.fdopen(fds[0], "rb", buffering=0) as notify:
                for extra in fds[1:]:
                    os.close(extra)
                request = bytearray(NOTIF.size)
                fcntl.ioctl(notify.fileno(), SECCOMP_IOCTL_NOTIF_RECV, request, True)
                notif_id, notif_pid, _, nr, *_ = NOTIF.unpack(request)
                self.seen["notified_pid"] = notif_pid
                fcntl.ioctl(notify.fileno(), SECCOMP_IOCTL_NOTIF_SEND,
                            bytearray(NOTIF_RESP.pack(notif_id, 0, -errno.EROFS, 0)), True)
        except BaseException as err:  # noqa: BLE001 - reported by the test, from its own thread
            self.error = err

    def close(self) -> None:
        self.socket.close()
        self.thread.join(timeout=15)


@pytest.mark.parametrize("use_metadata", [False, True])
def test_notify_hands_the_fd_and_the_state_to_the_listener(make_bundle, user, test_dir, use_metadata):
    if os.uname().machine != "x86_64":
        pytest.skip("the profile names x86_64")
    bundle = make_bundle(user=user, args=["sh", "-c", "mkdir /tmp/notified 2>&1; echo status=$?"])
    writable_tmp(bundle.config)
    seccomp = profile("SCMP_ACT_NOTIFY")
    agent_path = test_dir / "agent.sock"
    seccomp["listenerPath"] = str(agent_path)
    if use_metadata:
        seccomp["listenerMetadata"] = "answer=EROFS"
    bundle.config["linux"]["seccomp"] = seccomp
    agent = Agent(agent_path, user)
    try:
        result = bundle.run(timeout=30)
    finally:
        agent.close()
    assert agent.error is None, repr(agent.error)
    assert result.returncode == 0, result.stderr
    assert "Read-only file system" in result.stdout and "status=1" in result.stdout, result.stdout
    seen = agent.seen
    assert seen["fd_count"] == 1 and seen["fd_kind"] == "anon_inode:seccomp notify", seen
    assert seen["trailing"] == b"", "one message, then the runtime closes"
    state = seen["state"]
    assert state["fds"] == ["seccompFd"]
    assert state["state"]["id"] == bundle.id
    assert state["state"]["bundle"] == str(bundle.path)
    assert isinstance(state["pid"], int) and state["pid"] > 0
    assert state.get("metadata") == ("answer=EROFS" if use_metadata else None)
    assert seen["notified_pid"] > 0
    assert_nothing_left(bundle)


def test_notify_without_a_listener_fails_cleanly(make_bundle, user, test_dir):
    bundle = make_bundle(user=user, args=["true"])
    seccomp = profile("SCMP_ACT_NOTIFY")
    seccomp["listenerPath"] = str(test_dir / "nobody-listens.sock")
    bundle.config["linux"]["seccomp"] = seccomp
    result = bundle.run(timeout=30)
    assert_clear_error(result, "nobody-listens.sock")
    assert_nothing_left(bundle)


def test_notify_reaches_the_listener_for_exec_too(make_bundle, user, test_dir):
    if os.uname().machine != "x86_64":
        pytest.skip("the profile names x86_64")
    bundle = make_bundle(user=user, args=["sleep", "600"])
    writable_tmp(bundle.config)
    seccomp = profile("SCMP_ACT_NOTIFY")
    agent_path = test_dir / "agent.sock"
    seccomp["listenerPath"] = str(agent_path)
    bundle.config["linux"]["seccomp"] = seccomp
    # The init's listener comes first (at create) and is dropped; the exec'd process's is answered.
    agent = Agent(agent_path, user, ignore_first=1)
    try:
        assert bundle.run("-d").returncode == 0
        result = bundle.runtime(["exec", bundle.id, "sh", "-c", "mkdir /tmp/notified 2>&1; echo status=$?"])
    finally:
        agent.close()
        bundle.delete(force=True)
    assert agent.error is None, repr(agent.error)
    assert result.returncode == 0, result.stderr
    assert "Read-only file system" in result.stdout, result.stdout
    state = agent.seen["state"]
    assert state["state"]["id"] == bundle.id and state["state"]["status"] == "running"
    assert state["pid"] != state["state"]["pid"], "the pid is the exec'd process's, not the init's"
    assert_nothing_left(bundle)
