"""Terminals: the pty master handed over ``--console-socket`` (what conmon and containerd's shim expect),
and the relay a foreground ``run -t``/``exec -t`` does without a socket. Root and rootless.

Every test talks to a real shell through the pty it got: it waits for output before typing, and checks the
answer of a command it typed.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import termios
import time
from pathlib import Path

import helpers
import pytest

wait_for = helpers.wait_for

PTMX = os.makedev(5, 2)


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


# -- the console socket ----------------------------------------------------------------------------------------
class ConsoleSocket:
    """A listening unix socket, as an engine makes one for ``--console-socket``."""

    def __init__(self, directory: Path):
        self.path = directory / "console.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o777)  # a rootless runtime connects as its user
        self.listener.listen(1)
        self.listener.settimeout(10)

    def receive(self) -> tuple[bytes, list[int]]:
        """Accept one connection; return its one message's payload and every fd it carried, and check
        that nothing else follows."""
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            payload, ancdata, flags, _ = conn.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            assert not flags & socket.MSG_CTRUNC
            fds: list[int] = []
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
            rest = conn.recv(4096)
        for fd in fds:
            os.set_inheritable(fd, False)
        assert rest == b"", f"more data after the fd message: {rest!r}"
        return payload, fds

    def receive_master(self) -> int:
        payload, fds = self.receive()
        for fd in fds[1:]:
            os.close(fd)
        assert len(fds) == 1, f"expected exactly one fd, got {len(fds)}"
        assert payload, "the message carrying the fd has a non-empty payload"
        assert os.fstat(fds[0]).st_rdev == PTMX, "the fd is a pty master"
        return fds[0]

    def close(self) -> None:
        self.listener.close()


def read_until(fd: int, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read from ``fd`` until ``marker`` shows up; fail with what arrived if it doesn't in time."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"{marker!r} did not arrive; got {data!r}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the pty is gone
            chunk = b""
        if not chunk:
            pytest.fail(f"end of output before {marker!r}; got {data!r}")
        data += chunk
    return data


def read_to_end(fd: int, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def talk_to_shell(master: int) -> None:
    """Wait for the shell's prompt, type a command, read its answer, and leave the shell."""
    read_until(master, b"# ")
    os.write(master, b"tty; echo ab$((6*7))cd\n")
    answer = read_until(master, b"ab42cd\r\n")
    assert b"/dev/pts/" in answer, answer
    os.write(master, b"exit\n")


def test_exec_hands_a_working_pty_master_to_the_console_socket(make_bundle, user):
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        pid_file = bundle.path / "exec.pid"
        result = bundle.runtime(["exec", "-t", "-d", "--console-socket", console.path, "--pid-file", pid_file,
                                 bundle.id, "sh"])
        assert result.returncode == 0, result.stderr
        # Written before the detached exec returned.
        pid = int(pid_file.read_text())
        assert os.readlink(f"/proc/{pid}/fd/0").startswith("/dev/pts/")
        master = console.receive_master()
        talk_to_shell(master)
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}/cmdline") or
                        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)


def test_exec_with_terminal_from_the_process_file_uses_the_console_socket(make_bundle, user):
    # containerd's shim passes no --tty: the terminal comes from process.terminal.
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        process = dict(bundle.config["process"], args=["sh"], terminal=True)
        process_file = bundle.path / "process.json"
        process_file.write_text(json.dumps(process))
        pid_file = bundle.path / "exec.pid"
        result = bundle.runtime(["exec", "--process", process_file, "--console-socket", console.path,
                                 "--detach", "--pid-file", pid_file, bundle.id])
        assert result.returncode == 0, result.stderr
        assert pid_file.read_text().isdigit()
        master = console.receive_master()
        talk_to_shell(master)
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)


def test_create_hands_the_init_pty_master_to_the_console_socket(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh"], terminal=True)
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        pid_file = bundle.path / "init.pid"
        result = bundle.create("--console-socket", console.path, "--pid-file", pid_file)
        assert result.returncode == 0, result.stderr
        assert pid_file.read_text().isdigit()
        master = console.receive_master()
        assert bundle.start().returncode == 0
        talk_to_shell(master)
        assert wait_for(lambda: bundle.state()["status"] == "stopped")
        assert bundle.delete().returncode == 0
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)


def test_a_detached_terminal_without_a_console_socket_is_refused(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh"], terminal=True)
    result = bundle.create()
    assert result.returncode != 0
    assert "--console-socket" in result.stderr
    running = make_bundle(user=user, args=["sleep", "600"])
    assert running.run("-d").returncode == 0
    try:
        result = running.runtime(["exec", "-t", "-d", running.id, "sh"])
        assert result.returncode != 0
        assert "--console-socket" in result.stderr
    finally:
        running.delete(force=True)


def test_an_unreachable_console_socket_is_an_error_that_leaves_nothing(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh"], terminal=True)
    missing = bundle.path / "nobody-listens.sock"
    result = bundle.create("--console-socket", missing)
    assert result.returncode != 0
    assert f"cannot connect to console socket {missing}: no such file or directory" in result.stderr
    assert not (bundle.root / bundle.id).exists()


# -- the relay of a foreground run -t / exec -t ------------------------------------------------------------------
def start_on_pty(bundle: helpers.Bundle, args: list[str | os.PathLike], *, rows: int = 33, cols: int = 77):
    """Start the runtime with a new pty as its stdio (as a terminal session would); return it and the
    pty's master."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), *map(str, args)]
    identity: dict = {}
    if bundle.user is not None:
        identity = {"user": bundle.user.uid, "group": bundle.user.gid, "extra_groups": [],
                    "cwd": bundle.user.home}
    try:
        proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=helpers.base_env(bundle.user),
                                start_new_session=True, **identity)
    finally:
        os.close(slave)
    return proc, master


# A script rather than an interactive shell: busybox's line editor queries the cursor position when it
# starts, and a line typed before it gives up on the answer can be lost on a loaded machine.
CONVERSATION = ["sh", "-c", "stty size; tty; echo ready; read n; echo ab${n}cd; exit 3"]


def relay_conversation(proc: subprocess.Popen, master: int) -> tuple[int, bytes]:
    try:
        seen = read_until(master, b"ready")
        os.write(master, b"42\n")
        seen += read_until(master, b"ab42cd")
        seen += read_to_end(master)
        return proc.wait(timeout=10), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_foreground_run_with_a_terminal_relays_the_pty(make_bundle, user):
    bundle = make_bundle(user=user, args=CONVERSATION, terminal=True)
    bundle.write()
    proc, master = start_on_pty(bundle, ["run", "--bundle", bundle.path, bundle.id])
    code, output = relay_conversation(proc, master)
    assert code == 3, output
    assert b"33 77\r\n" in output, "the window size of the caller's terminal reaches the container"
    assert b"/dev/pts/0\r\n" in output
    assert b"ab42cd\r\n" in output
    assert not (bundle.root / bundle.id).exists(), "run removes the container after it exits"


def test_foreground_exec_with_tty_relays_the_pty(make_bundle, user):
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    try:
        proc, master = start_on_pty(bundle, ["exec", "-t", bundle.id, *CONVERSATION], rows=21, cols=99)
        code, output = relay_conversation(proc, master)
        assert code == 3, output
        assert b"21 99\r\n" in output
        assert b"ab42cd\r\n" in output
        assert bundle.state()["status"] == "running"
    finally:
        bundle.delete(force=True)


def test_the_relay_restores_the_callers_terminal_mode(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh", "-c", "exit 0"], terminal=True)
    bundle.write()
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), "run", "--bundle",
               str(bundle.path), bundle.id]
    identity: dict = {}
    if bundle.user is not None:
        identity = {"user": bundle.user.uid, "group": bundle.user.gid, "extra_groups": [],
                    "cwd": bundle.user.home}
    try:
        proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave,
                                env=helpers.base_env(bundle.user), start_new_session=True, **identity)
        read_to_end(master, timeout=5)
        assert proc.wait(timeout=10) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(slave)
        os.close(master)


# -- the relay against runc's: exit with output pending, line ends, the owner of the pty ----------------------
def test_the_relay_drains_output_still_pending_when_the_process_exits(make_bundle, user):
    # The process exits while most of its output is still in the pty: the relay reaps it once and keeps
    # reading until the pty is empty (a second waitpid was an ECHILD "internal error", by timing).
    lines = 20000
    bundle = make_bundle(user=user, args=["sh", "-c", f"seq {lines}; exit 7"], terminal=True)
    bundle.write()
    for attempt in range(4):
        proc, master = start_on_pty(bundle, ["run", "--bundle", bundle.path, f"{bundle.id}"])
        try:
            output = read_to_end(master, timeout=30)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        assert b"internal error" not in output, output[-300:]
        assert code == 7, (attempt, output[-300:])
        assert output.endswith(f"{lines}\r\n".encode()), (attempt, output[-100:])
        assert output.count(b"\n") == lines, attempt


def test_the_relay_reaps_once_when_the_process_exits_with_a_full_pty(make_bundle, user):
    # Deterministic form of the race above: the caller's terminal is not read, so the relay blocks writing
    # to it, the process fills the container's pty behind it and exits; only then is the caller's side read.
    # The relay then sees the exit with several reads of output still pending in the container's pty.
    lines = 5000  # ~24 KB: more than the caller's pty takes, less than it, the relay and the container's pty hold
    bundle = make_bundle(user=user, args=["sh", "-c", f"seq {lines}; exit 7"], terminal=True)
    bundle.write()
    proc, master = start_on_pty(bundle, ["run", "--bundle", bundle.path, bundle.id])
    try:
        stopped = wait_for(lambda: '"stopped"' in bundle.runtime(["state", bundle.id]).stdout, timeout=30)
        assert stopped, "the process did not finish writing into the container's pty"
        output = read_to_end(master, timeout=30)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"internal error" not in output, output[-300:]
    assert code == 7, output[-300:]
    assert output.endswith(f"{lines}\r\n".encode()), output[-100:]
    assert output.count(b"\n") == lines


def test_the_relay_leaves_line_ends_to_the_callers_terminal(make_bundle, user, test_dir):
    # runc clears ONLCR on the pty it relays: what the process writes arrives unchanged, and the caller's
    # own terminal (still translating on output) shows it with one "\r\n".
    bundle = make_bundle(user=user, args=["sh", "-c", "printf 'a\\nb\\n'; stty -a"], terminal=True)
    bundle.write()
    proc, master = start_on_pty(bundle, ["run", "--bundle", bundle.path, bundle.id])
    code, on_terminal = proc.wait(timeout=20), read_to_end(master, timeout=10)
    os.close(master)
    assert code == 0, on_terminal
    assert on_terminal.startswith(b"a\r\nb\r\n"), on_terminal
    assert b"-onlcr" in on_terminal, "the container's pty does not translate line ends"

    # With the output going to a file and only the input a terminal, the file gets the bytes as written.
    bundle.delete(force=True)
    out = test_dir / "relayed.out"
    master, slave = pty.openpty()
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), "run", "--bundle",
               str(bundle.path), bundle.id]
    identity: dict = {}
    if bundle.user is not None:
        identity = {"user": bundle.user.uid, "group": bundle.user.gid, "extra_groups": [], "cwd": bundle.user.home}
    with open(out, "wb") as sink:
        if bundle.user is not None:
            os.fchown(sink.fileno(), bundle.user.uid, bundle.user.gid)
        try:
            code = subprocess.run(command, stdin=slave, stdout=sink, stderr=sink, env=helpers.base_env(bundle.user),
                                  start_new_session=True, timeout=20, **identity).returncode
        finally:
            os.close(slave)
            os.close(master)
    assert code == 0, out.read_bytes()
    assert out.read_bytes().startswith(b"a\nb\n"), out.read_bytes()


def test_a_pty_handed_to_the_console_socket_keeps_onlcr(make_bundle, user):
    # As with runc and crun: the engine that receives the master decides how to read it.
    bundle = make_bundle(user=user, args=["sh", "-c", "printf 'a\\n'"], terminal=True)
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        assert bundle.create("--console-socket", console.path).returncode == 0
        master = console.receive_master()
        assert termios.tcgetattr(master)[1] & termios.ONLCR
        assert bundle.start().returncode == 0
        assert read_until(master, b"a\r\n")
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)


OWNER_OF_THE_TERMINAL = ["sh", "-c", "stat -c owner=%u:%g $(tty)"]


@pytest.fixture(params=["root", "rootless-subids"])
def mapped_user(request) -> helpers.UnprivilegedUser | None:
    """Root, or a rootless user whose subordinate ids give the container a uid 1000 to switch to."""
    if request.param == "rootless-subids":
        return request.getfixturevalue("subid_user")
    return None


def test_the_init_pty_belongs_to_the_process_user(make_bundle, mapped_user):
    bundle = make_bundle(user=mapped_user, args=OWNER_OF_THE_TERMINAL, terminal=True)
    if mapped_user is not None:
        helpers.use_subid_maps(bundle.config, mapped_user)
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        result = bundle.create("--console-socket", console.path)
        assert result.returncode == 0, result.stderr
        master = console.receive_master()
        assert bundle.start().returncode == 0
        seen = read_until(master, b"\r\n")
        assert b"owner=1000:" in seen, "runc gives the pty to process.user"
        if mapped_user is None:
            # devpts's group (tty, gid 5, as the config mounts it) stays: runc changes only the owner.
            assert b"owner=1000:5\r\n" in seen, seen
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)


def test_an_exec_pty_belongs_to_the_exec_user(make_bundle, mapped_user):
    bundle = make_bundle(user=mapped_user, args=["sleep", "600"])
    if mapped_user is not None:
        helpers.use_subid_maps(bundle.config, mapped_user)
    assert bundle.run("-d").returncode == 0
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        result = bundle.runtime(["exec", "-t", "-d", "--console-socket", console.path, "--user", "1000:1000",
                                 bundle.id, *OWNER_OF_THE_TERMINAL])
        assert result.returncode == 0, result.stderr
        master = console.receive_master()
        assert b"owner=1000:" in read_until(master, b"owner=1000:")
    finally:
        if master is not None:
            os.close(master)
        console.close()
        bundle.delete(force=True)
