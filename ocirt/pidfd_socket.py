"""``--pidfd-socket``: hand the caller a pidfd of the container's process (runc 1.2's flag).

An engine that holds a pidfd can signal and wait for the process without racing pid reuse. The fd goes
over the AF_UNIX stream socket the caller listens on, as SCM_RIGHTS with the payload ``pidfd``, the way a
terminal's master goes over ``--console-socket``. The socket is checked before anything is made, so a
wrong path fails with nothing to undo; the pidfd is sent once the process exists and its pid is saved."""

from __future__ import annotations

import os
import stat

from ocirt.errors import OcirtError, why


def check(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as err:
        raise OcirtError(f"cannot use pidfd socket {path}: {why(err)}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise OcirtError(f"cannot use pidfd socket {path}: not a socket")


def send(path: str, pid: int) -> None:
    from ocirt.console import connect, send_fd

    try:
        pidfd = os.pidfd_open(pid)
    except OSError as err:
        raise OcirtError(f"cannot open a pidfd of process {pid}: {why(err)}") from None
    try:
        sock = connect(path, "pidfd socket")
        try:
            send_fd(sock, pidfd, "pidfd")
        except OSError as err:
            raise OcirtError(f"cannot send a pidfd over {path}: {why(err)}") from None
        finally:
            sock.close()
    finally:
        os.close(pidfd)
