"""Terminals: a pty made inside the container's devpts, handed to the caller or relayed.

conmon and containerd's shim pass ``--console-socket``: they expect exactly one fd, the pty master, over
SCM_RIGHTS with a non-empty payload. Without a socket, a foreground ``run``/``exec`` relays the pty to its
own stdio.
"""

from __future__ import annotations

import fcntl
import os
import struct

from ocirt.errors import why

TIOCSCTTY = 0x540E
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCGPTPEER = 0x5441


def open_pty(master: int) -> tuple[int, int]:
    """Unlock a pty from an opened ptmx ``master``; return (master, slave fd).

    The slave is opened through TIOCGPTPEER, not by path, so nothing in the rootfs can swap it.
    """
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave


def connect(socket_path: str, what: str = "console socket"):
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(socket_path)
    except OSError as err:
        sock.close()
        from ocirt.errors import OcirtError

        raise OcirtError(f"cannot connect to {what} {socket_path}: {why(err)}") from None
    return sock


def send_fd(sock, fd: int, name: str = "/dev/ptmx") -> None:
    import _socket

    sock.sendmsg([name.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", fd))])


def recv_fd(sock) -> int:
    import _socket

    _, ancdata, _, _ = sock.recvmsg(4096, _socket.CMSG_SPACE(4))
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            return struct.unpack("i", data[:4])[0]
    raise OSError("no file descriptor received")


def clear_onlcr(fd: int) -> None:
    """Stop the pty turning "\n" into "\r\n" (on by default), as runc does for the pty it relays: the
    caller's own terminal translates once more on output, so relayed text keeps single line ends and a
    file the relay writes to gets what the process wrote."""
    import termios

    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def give_to(slave: int, uid: int) -> None:
    """Make the process's user the owner of its terminal (the group stays devpts's), as runc does.

    By fd: the pty lives in the container's devpts, and no path is looked up that could be the host's /dev.
    A uid the user namespace doesn't map (EINVAL) or an owner it can't change (EPERM) leaves the owner as
    it is, as with runc."""
    try:
        if os.fstat(slave).st_uid != uid:
            os.fchown(slave, uid, -1)
    except OSError as err:
        if err.errno not in (1, 22, 30):  # EPERM, EINVAL, EROFS
            raise


def become_session_leader_on(slave: int) -> None:
    """Make the pty the controlling terminal and the process's stdio."""
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def copy_window_size(src_fd: int, dst_fd: int) -> None:
    try:
        size = fcntl.ioctl(src_fd, TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst_fd, TIOCSWINSZ, size)
    except OSError:
        pass


def relay(master: int, child_pid: int) -> int:
    """Relay stdio to the pty until the child exits and its output is drained; return its wait status."""
    import _signal as signal  # the C module: "signal" pulls in enum (~5 ms)
    import select
    import termios
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None
    if stdin_tty:
        tty.setraw(0)
        # Raw for input only, like runc: the caller's terminal still turns the process's "\n" into
        # "\r\n" (the container's pty no longer does, see clear_onlcr).
        attrs = termios.tcgetattr(0)
        attrs[1] = saved[1]  # type: ignore[index]
        termios.tcsetattr(0, termios.TCSANOW, attrs)
        copy_window_size(0, master)
    signal.signal(signal.SIGWINCH, lambda *_: copy_window_size(0, master) if stdin_tty else None)
    stdin_open = True
    status = None
    try:
        while True:
            # Reaped once: output may still be pending after the exit, and a second waitpid on the
            # reaped child would fail with ECHILD.
            if status is None:
                done, wstatus = os.waitpid(child_pid, os.WNOHANG)
                if done:
                    status = wstatus
            fds = [master] + ([0] if stdin_open else [])
            try:
                readable, _, _ = select.select(fds, [], [], 0.05)
            except InterruptedError:
                continue
            if master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every copy of the pty's other side is closed
                    data = b""
                if data:
                    _write_all(1, data)
                    continue
                if status is None:
                    _, status = os.waitpid(child_pid, 0)
                return status
            if 0 in readable:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if data:
                    _write_all(master, data)
                else:
                    stdin_open = False
                    os.write(master, b"\x04")
            if status is not None and master not in readable:
                return status
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        data = data[written:]
