"""The helper process behind `ocirt.api`: one interpreter that creates every container of its client.

A client with threads can't unshare or setns, and an interpreter start per container costs more than the
container. So the client starts this process once (`ocirt.api.Runtime`), single-threaded, and sends it one
request at a time over a SOCK_SEQPACKET socket: a JSON object, with the container's stdin, stdout and stderr
as SCM_RIGHTS fds on `create`. It answers each with a JSON object: the result, or the error's class, message
exit code and fields (op, path, errno, hint), which the client raises again as the same `ocirt.errors` exception.

It is a child subreaper: the init of each container it creates becomes its child when the intermediate
exits, so it reaps the init and keeps its exit status for the client (`reap`). When the client's end of the
socket closes (the client closed its Runtime, or died), it deletes the containers it made that are still
there, and exits.
"""

from __future__ import annotations

import array
import io
import json
import os
import socket
import sys

MAX_MESSAGE = 1 << 20
# Exit statuses of inits nobody asked for yet; the oldest go first past this many.
MAX_STATUSES = 4096


class Helper:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.statuses: dict[int, int] = {}
        # (root, id) of the containers this helper created and nobody deleted yet.
        self.made: set[tuple[str, str]] = set()

    def serve(self) -> None:
        from ocirt import log
        from ocirt import syscalls as sc

        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        log.configure(None)
        try:
            while True:
                try:
                    data, fds = _receive(self.sock)
                except OSError:
                    return
                if not data:
                    return
                self.sock.send(json.dumps(self.answer(data, fds)).encode())
        finally:
            self.delete_leftovers()

    def answer(self, data: bytes, fds: list[int]) -> dict:
        notices = io.StringIO()
        sys.stderr = notices
        try:
            self.collect()
            result = {"ok": self.handle(json.loads(data), fds)}
            self.collect()  # the init a delete or kill just ended
        except Exception as err:  # noqa: BLE001 - every failure goes back to the client as an answer
            result = _error(err)
        finally:
            sys.stderr = sys.__stderr__
            for fd in fds:
                os.close(fd)
        result["notices"] = [line for line in notices.getvalue().splitlines() if line]
        return result

    def handle(self, request: dict, fds: list[int]):
        from ocirt import container

        op = request["op"]
        root = str(request["root"])
        if op == "create":
            pid = _create(request, fds)
            self.made.add((root, request["id"]))
            return pid
        if op == "start":
            container.start(root, request["id"])
            return None
        if op == "state":
            return container.state(root, request["id"])
        if op == "kill":
            container.kill(root, request["id"], int(request["signal"]), all_processes=bool(request.get("all")))
            return None
        if op == "delete":
            container.delete(root, request["id"], force=bool(request.get("force")))
            self.made.discard((root, request["id"]))
            return None
        if op == "reap":
            return self.reap(int(request["pid"]))
        raise ValueError(f"unknown request {op!r}")

    def collect(self) -> None:
        """Reap every init that has exited, so none stays a zombie that state, kill or delete see alive."""
        while True:
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if child == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            self.statuses[child] = 128 - code if code < 0 else code
            while len(self.statuses) > MAX_STATUSES:
                del self.statuses[next(iter(self.statuses))]

    def reap(self, pid: int) -> dict:
        """Whether the init ``pid`` has exited and its exit code (128+N for a signal N); the code is None for
        a process that is not this helper's child (its status went to another process)."""
        if pid in self.statuses:
            return {"exited": True, "code": self.statuses.pop(pid)}
        try:
            child, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return {"exited": True, "code": None}
        if child == 0:
            return {"exited": False, "code": None}
        code = os.waitstatus_to_exitcode(status)
        return {"exited": True, "code": 128 - code if code < 0 else code}

    def delete_leftovers(self) -> None:
        from ocirt import container
        from ocirt.errors import OcirtError

        sys.stderr = io.StringIO()  # no client is left to read the notices
        for root, container_id in sorted(self.made):
            try:
                container.delete(root, container_id, force=True)
            except OcirtError:
                pass
            self.collect()
        sys.stderr = sys.__stderr__


def _error(err: Exception) -> dict:
    from ocirt.errors import OcirtError

    if isinstance(err, OcirtError):
        return {"error": type(err).__name__, "message": str(err), "exit_code": err.exit_code,
                "fields": err.fields()}
    return {"error": "OcirtError", "message": f"internal error: {type(err).__name__}: {err}", "exit_code": 1}


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _create(request: dict, fds: list[int]) -> int:
    """create, with the container's stdio on fds 0-2 for as long as the init is being made (it inherits them)."""
    from ocirt.container import CreateOptions, create

    options = CreateOptions(root=request["root"], container_id=request["id"], bundle=request["bundle"],
                            rootless=bool(request["rootless"]), detach=True)
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        return create(options).pid
    finally:
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)


def main(fd: int, path: list[str], executable_fd: int = -1) -> None:
    if executable_fd >= 0:
        os.close(executable_fd)  # the copy of the interpreter this process runs from: no container's to inherit
    # The client's import path (its venv, Debian's bindings), after the standard library's.
    sys.path += [entry for entry in path if entry and entry not in sys.path]
    # Nothing of the client's reaches a container through this process's own stdio.
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1):
        os.dup2(null, target)
    os.close(null)
    Helper(socket.socket(fileno=fd)).serve()
