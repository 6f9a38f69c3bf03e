"""Sandboxes from Python programs: ``import ocirt``.

Two layers over the library the CLI uses:

- `Runtime` owns one helper process (`ocirt.api.server`) that makes every container of this program, so
  a container costs no interpreter start and the caller may have threads. Its methods are runc's commands:
  `create`, `start`, `state`, `kill`, `delete`, plus `wait` for a container's exit code.
- `Sandbox` is one container from a rootfs and a few options (args, env, a read-only rootfs, no network,
  memory and pids limits, read-only binds of host directories, a time limit), with its output captured.
  As a context manager it always deletes the container.

Errors are the `ocirt.errors` exceptions, with the messages the CLI prints. Rootless when the caller is not
root, as the CLI decides it.
"""

from __future__ import annotations

import array
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ocirt import errors

__all__ = ["Runtime", "Sandbox", "Result", "default_runtime"]

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _is_rootless() -> bool:
    from ocirt.state import rootless_by_default

    return rootless_by_default()


class Runtime:
    """One helper process, shared by every container this object creates. Thread-safe: requests from
    several threads are answered one after the other. The containers live no longer than their Runtime:
    `close()`, or the end of the program, deletes those still there and stops the helper.

    ``root`` is the state directory (default: the CLI's, so `ocirt list` shows these containers);
    ``rootless`` defaults to the CLI's choice (true when the caller is not root); ``cgroup_parent`` is the
    cgroup (a linux.cgroupsPath) under which each sandbox gets ``<cgroup_parent>/<id>`` (default: the id,
    beneath the caller's own cgroup). One Runtime serves one process: a forked child makes its own."""

    def __init__(self, root: str | None = None, *, rootless: bool | None = None,
                 cgroup_parent: str | None = None):
        from ocirt.state import default_root

        self.rootless = _is_rootless() if rootless is None else rootless
        self.root = os.path.abspath(root) if root else default_root(self.rootless)
        self.cgroup_parent = cgroup_parent
        self._owner = os.getpid()
        self.notices: list[str] = []
        self._lock = threading.Lock()
        self._pidfds: dict[str, tuple[int, int]] = {}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        interpreter = os.path.realpath(sys.executable)
        copy = _sealed_copy(interpreter)
        code = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); from ocirt.api.server import main; "
                f"main({theirs.fileno()}, {sys.path!r}, {copy})")
        try:
            self._process = subprocess.Popen(
                [interpreter, "-I", "-S", "-c", code], executable=None if copy < 0 else f"/proc/self/fd/{copy}",
                pass_fds=[theirs.fileno()] + ([copy] if copy >= 0 else []), stdin=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            theirs.close()
            if copy >= 0:
                os.close(copy)
        self._sock: socket.socket | None = ours

    # -- runc's commands ---------------------------------------------------------------------------------

    def create(self, container_id: str, bundle: str, *, stdin: int | None = None, stdout: int | None = None,
               stderr: int | None = None) -> int:
        """Create the container from ``bundle`` (its process waits for `start`); its init's host pid.
        ``stdin``/``stdout``/``stderr`` are fds for the container's process (default: /dev/null)."""
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            stdio = [null if fd is None else fd for fd in (stdin, stdout, stderr)]
            pid = int(self._call({"op": "create", "id": container_id, "bundle": os.path.abspath(bundle),
                                  "rootless": self.rootless}, stdio))
        finally:
            os.close(null)
        # Opened while the init waits for start, so it is this process and never a later one with its pid.
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1  # killed already: wait() learns its status from the helper
        with self._lock:
            old = self._pidfds.pop(container_id, None)
            self._pidfds[container_id] = (pid, pidfd)
        if old is not None and old[1] >= 0:
            os.close(old[1])
        return pid

    def start(self, container_id: str) -> None:
        self._call({"op": "start", "id": container_id})

    def state(self, container_id: str) -> dict:
        """The container's state, as `ocirt state` prints it."""
        return self._call({"op": "state", "id": container_id})

    def kill(self, container_id: str, sig: int = signal.SIGTERM, *, all_processes: bool = False) -> None:
        self._call({"op": "kill", "id": container_id, "signal": int(sig), "all": all_processes})

    def delete(self, container_id: str, *, force: bool = False) -> None:
        self._call({"op": "delete", "id": container_id, "force": force})
        with self._lock:
            old = self._pidfds.pop(container_id, None)
        if old is not None and old[1] >= 0:
            os.close(old[1])

    def wait(self, container_id: str, timeout: float | None = None) -> int | None:
        """The exit code of the container's process (128+N if a signal N killed it) once it has exited;
        None if it still runs after ``timeout`` seconds. For containers this Runtime created. The wait
        is here, not in the helper, which stays free for other threads' requests."""
        with self._lock:
            entry = self._pidfds.get(container_id)
        if entry is None:
            raise errors.OcirtError(f"container {container_id!r} was not created by this runtime: wait for it "
                                    "with `ocirt state`")
        pid, pidfd = entry
        if pidfd >= 0:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(None if timeout is None else max(0.0, timeout) * 1000):
                return None
        # The helper reaps it: the init is its child. A moment may pass between the exit and the reparenting.
        deadline = time.monotonic() + 5
        while True:
            reaped = self._call({"op": "reap", "pid": pid})
            if reaped["exited"]:
                return -1 if reaped["code"] is None else int(reaped["code"])
            if time.monotonic() > deadline:
                return -1
            time.sleep(0.001)

    # -- the helper --------------------------------------------------------------------------------------

    def _call(self, request: dict, fds: list[int] | None = None) -> Any:
        request["root"] = self.root
        payload = json.dumps(request).encode()
        with self._lock:
            if self._sock is None:
                raise errors.OcirtError("this ocirt runtime is closed")
            if os.getpid() != self._owner:
                raise errors.OcirtError("this ocirt runtime belongs to the process that made it: a forked "
                                        "child needs a Runtime of its own")
            try:
                if fds:
                    self._sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", fds).tobytes())])
                else:
                    self._sock.send(payload)
                answer = self._sock.recv(1 << 20)
            except OSError as err:
                raise errors.OcirtError(f"the ocirt runtime helper is gone: {errors.why(err)}") from None
            if not answer:
                raise errors.OcirtError("the ocirt runtime helper exited")
            reply = json.loads(answer)
            self.notices.extend(reply.get("notices") or [])
        if "error" in reply:
            raise _rebuild_error(reply)
        return reply.get("ok")

    def close(self) -> None:
        """Delete the containers still there, stop the helper. Safe to call twice."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            pidfds, self._pidfds = self._pidfds, {}
        for _pid, pidfd in pidfds.values():
            if pidfd >= 0:
                os.close(pidfd)
        if self._process.poll() is None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _sealed_copy(path: str) -> int:
    """A sealed in-memory copy of the interpreter for the helper to run from, as runc runs from a copy of
    itself (CVE-2019-5736): the runtime's executable is then no file a container can reach, so a sandbox
    may run the host's Python through a read-only bind of /usr (ocirt refuses to execute the runtime's
    own executable in a container). -1 where memfds can't be made: the helper runs the file itself."""
    import fcntl

    try:
        fd = os.memfd_create("ocirt-api-python", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        return -1
    try:
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, source.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE)
    except OSError:
        os.close(fd)
        return -1
    return fd


def _rebuild_error(reply: dict) -> errors.OcirtError:
    """The helper's exception, as the same class where ocirt.errors has it, with the same message, code and
    fields."""
    cls = getattr(errors, str(reply.get("error")), errors.OcirtError)
    if not (isinstance(cls, type) and issubclass(cls, errors.OcirtError)):
        cls = errors.OcirtError
    fields = reply.get("fields")
    return cls.rebuilt(str(reply.get("message")), int(reply.get("exit_code", 1)),
                       fields if isinstance(fields, dict) else None)


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The Runtime sandboxes use unless given one: made on first use, shared by the whole program."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Runtime()
        return _default


# -- sandboxes ----------------------------------------------------------------------------------------------

@dataclass
class Result:
    """How a sandbox's program ended: its exit code (128+N for a signal N), its output, and whether the time
    limit ended it."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


@dataclass
class Sandbox:
    """One container: ``args`` run in ``rootfs`` (default: a busybox rootfs made once per user).

    The rootfs is read-only unless ``readonly`` is false; there is no network unless ``network`` is true
    (a private network namespace with only loopback); ``memory`` (bytes) and ``pids`` become cgroup limits
    (rootless, they need a cgroup that root delegated: `ocirt cgroup delegate`); ``binds`` maps container
    paths to host directories, mounted read-only; ``timeout`` (seconds) ends the program with SIGKILL.
    ``cgroups_path`` is the config's linux.cgroupsPath (default: the Runtime's ``cgroup_parent``/id).
    """

    args: list[str]
    rootfs: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    readonly: bool = True
    network: bool = False
    memory: int | None = None
    pids: int | None = None
    binds: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    cgroups_path: str | None = None
    runtime: Runtime | None = None
    id: str = field(default_factory=lambda: f"sandbox-{uuid.uuid4().hex[:16]}")

    def __post_init__(self) -> None:
        self._dir: str | None = None
        self.pid = 0  # the init's host pid, once created
        self._created = False

    # -- one call ----------------------------------------------------------------------------------------

    def run(self, stdin: bytes = b"") -> Result:
        """Create, start, wait (within ``timeout``), collect the output, delete."""
        with self:
            self.start(stdin)
            return self.wait(self.timeout)

    # -- step by step ------------------------------------------------------------------------------------

    def start(self, stdin: bytes = b"") -> None:
        """Create the container and start its process, with ``stdin`` as its input."""
        if self._dir is not None:
            raise errors.InvalidState(f"sandbox {self.id!r} was started already")
        runtime = self._runtime()
        self._dir = tempfile.mkdtemp(prefix="ocirt-sandbox-")
        config = self.config(runtime.rootless)
        with open(os.path.join(self._dir, "config.json"), "w") as f:
            json.dump(config, f)
        stdio = [self._file("stdin", stdin), self._file("stdout"), self._file("stderr")]
        try:
            self.pid = runtime.create(self.id, self._dir, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        finally:
            for fd in stdio:
                os.close(fd)
        self._created = True
        runtime.start(self.id)

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the process to exit; after ``timeout`` seconds SIGKILL ends it (``timed_out``)."""
        runtime = self._runtime()
        code = runtime.wait(self.id, timeout)
        timed_out = code is None
        if timed_out:
            self.signal(signal.SIGKILL)
            code = runtime.wait(self.id, 10)
        return Result(exit_code=-1 if code is None else code, stdout=self._read("stdout"),
                      stderr=self._read("stderr"), timed_out=timed_out)

    def signal(self, sig: int = signal.SIGTERM, *, all_processes: bool = False) -> None:
        """Send ``sig`` to the sandbox's process (its pid namespace's init: SIGKILL ends every process of
        the sandbox), or with ``all_processes`` to each process of its cgroup. Nothing if it has exited."""
        try:
            self._runtime().kill(self.id, sig, all_processes=all_processes)
        except errors.NotRunning:
            pass

    def state(self) -> dict:
        return self._runtime().state(self.id)

    def delete(self) -> None:
        """Remove the container (killing what still runs) and its files; safe to call twice."""
        try:
            if self._created:
                self._created = False
                self._runtime().delete(self.id, force=True)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc) -> None:
        self.delete()

    # -- the bundle --------------------------------------------------------------------------------------

    def config(self, rootless: bool) -> dict:
        """The OCI config this sandbox runs with."""
        from ocirt.spec.default import default_config

        config = default_config(rootless=rootless, args=list(self.args), terminal=False)
        process = config["process"]
        process["env"] = process["env"] + [f"{key}={value}" for key, value in self.env.items()]
        process["cwd"] = self.cwd
        config["root"] = {"path": self.rootfs or sandbox_rootfs(), "readonly": self.readonly}
        namespaces = config["linux"]["namespaces"]
        has_network = any(ns["type"] == "network" for ns in namespaces)
        if self.network and has_network:
            config["linux"]["namespaces"] = [ns for ns in namespaces if ns["type"] != "network"]
        elif not self.network and not has_network:
            namespaces.append({"type": "network"})
        resources = config["linux"].setdefault("resources", {})
        if self.memory is not None:
            resources["memory"] = {"limit": int(self.memory), "swap": int(self.memory)}
        if self.pids is not None:
            resources["pids"] = {"limit": int(self.pids)}
        cgroups_path = self.cgroups_path
        if cgroups_path is None and self.runtime is not None and self.runtime.cgroup_parent:
            cgroups_path = f"{self.runtime.cgroup_parent.rstrip('/')}/{self.id}"
        if cgroups_path is not None:
            config["linux"]["cgroupsPath"] = cgroups_path
        for destination, source in self.binds.items():
            config["mounts"].append({"destination": destination, "type": "bind", "source": source,
                                     "options": ["rbind", "ro", "nosuid", "nodev"]})
        return config

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            self.runtime = default_runtime()
        return self.runtime

    def _file(self, name: str, content: bytes = b"") -> int:
        assert self._dir is not None
        fd = os.open(os.path.join(self._dir, name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        if content:
            os.write(fd, content)
            os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def _read(self, name: str) -> bytes:
        if self._dir is None:
            return b""
        with open(os.path.join(self._dir, name), "rb") as f:
            return f.read()


def sandbox_rootfs() -> str:
    """A busybox rootfs for sandboxes, made once per user (under the user's cache directory). Its /lib and
    /lib64 point into /usr, so a read-only bind of the host's /usr brings the host's programs with it."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    rootfs = os.path.join(cache, "ocirt", "sandbox-rootfs")
    if os.path.isfile(os.path.join(rootfs, "bin", "busybox")):
        return rootfs
    from ocirt.bundle import build_rootfs

    building = tempfile.mkdtemp(prefix="sandbox-rootfs.", dir=os.path.dirname(rootfs) if os.path.isdir(
        os.path.dirname(rootfs)) else _made(os.path.dirname(rootfs)))
    build_rootfs(building)
    for name in ("lib", "lib64"):
        if not os.path.lexists(os.path.join(building, name)):
            os.symlink(f"usr/{name}", os.path.join(building, name))
    os.chmod(building, 0o755)
    try:
        os.rename(building, rootfs)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)  # another process made it first
    return rootfs


def _made(directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    return directory
