"""The on-disk state of a container and the status machine.

``<root>/<id>/state.json`` holds the spec's state fields plus what ocirt needs to find the container again
(the init's start time, its cgroups, the hooks to run later). It is written atomically (a temp file then
rename) and every command on an id holds an exclusive flock on the container's directory, so commands on
one id serialize. Creating the directory with mkdir is what makes concurrent creates of one id let exactly
one win.

The status is never trusted from the file alone: it is derived from the live process, and the init's start
time (field 22 of /proc/<pid>/stat) guards against a recycled PID.
"""

from __future__ import annotations

import fcntl
import os

from ocirt import OCI_VERSION
from ocirt.errors import ContainerExists, ContainerNotFound, InvalidState, OcirtError, why

STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def validate_id(container_id: str) -> None:
    if not container_id:
        raise OcirtError("container id cannot be empty")
    if container_id in (".", "..") or not set(container_id) <= _ID_CHARS or len(container_id) > 1024:
        raise OcirtError(f"invalid container id {container_id!r}: use letters, digits, '_', '+', '-' and '.'")


_in_userns: bool | None = None


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the initial one, whose map is the identity."""
    global _in_userns
    if _in_userns is None:
        try:
            with open("/proc/self/uid_map", "rb") as f:
                _in_userns = f.read().split() != [b"0", b"0", b"4294967295"]
        except OSError:
            _in_userns = False
    return _in_userns


def default_root(rootless: bool) -> str:
    if not rootless or (os.geteuid() == 0 and not os.environ.get("XDG_RUNTIME_DIR")):
        return "/run/ocirt"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "ocirt")
    # No XDG_RUNTIME_DIR: a private directory of the user's own, never a shared, guessable one it does not own.
    return f"/tmp/ocirt-{os.geteuid()}"


def ensure_root(root: str, rootless: bool) -> None:
    try:
        os.makedirs(root, mode=0o700 if rootless else 0o711, exist_ok=True)
    except OSError as err:
        raise OcirtError(f"cannot create state directory {root}: {why(err)}") from None
    st = os.lstat(root)
    if rootless and st.st_uid != os.geteuid():
        raise OcirtError(f"state directory {root} is owned by uid {st.st_uid}, not by you")
    if rootless and st.st_mode & 0o077:
        # Others must not reach the state (the exec fifo, the saved config) of a user's containers.
        os.chmod(root, 0o700)


def process_start_time(pid: int) -> int | None:
    """The start time in clock ticks, or None when the pid doesn't exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: the fields start after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


class Container:
    """One container's directory and state, opened under its lock."""

    def __init__(self, root: str, container_id: str, lock_fd: int, data: dict):
        self.root = root
        self.id = container_id
        self.dir = os.path.join(root, container_id)
        self._lock_fd = lock_fd
        self.data = data

    # -- opening -----------------------------------------------------------------------------------------
    @classmethod
    def new(cls, root: str, container_id: str) -> Container:
        validate_id(container_id)
        path = os.path.join(root, container_id)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise ContainerExists(container_id) from None
        except OSError as err:
            raise OcirtError(f"cannot create {path}: {why(err)}") from None
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(root, container_id, fd, {})

    @classmethod
    def load(cls, root: str, container_id: str, *, shared: bool = False) -> Container:
        validate_id(container_id)
        path = os.path.join(root, container_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ContainerNotFound(container_id) from None
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            with open(os.path.join(path, STATE_FILE), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            # Deleted while we waited for the lock, or a create that has not written its state yet.
            os.close(fd)
            raise ContainerNotFound(container_id) from None
        from ocirt.fastjson import loads

        return cls(root, container_id, fd, loads(raw))  # type: ignore[arg-type]

    @property
    def lock_fd(self) -> int:
        return self._lock_fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- persistence -------------------------------------------------------------------------------------
    def save(self) -> None:
        from ocirt.fastjson import dumps

        tmp = os.path.join(self.dir, f".{STATE_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, dumps(self.data).encode())
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.dir, STATE_FILE))

    def remove(self) -> None:
        """Remove the directory; the lock stays held on the (now unlinked) directory until close()."""
        for name in os.listdir(self.dir):
            try:
                os.unlink(os.path.join(self.dir, name))
            except IsADirectoryError:
                import shutil

                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except FileNotFoundError:
            pass

    # -- fields ------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return int(self.data.get("pid") or 0)

    @property
    def fifo_path(self) -> str:
        return os.path.join(self.dir, EXEC_FIFO)

    @property
    def runtime(self) -> dict:
        """ocirt's own bookkeeping inside state.json, kept apart from the spec's fields."""
        return self.data.setdefault("ocirt", {})

    def init_alive(self) -> bool:
        pid = self.pid
        if pid <= 0:
            return False
        start = process_start_time(pid)
        return start is not None and start == self.runtime.get("start_time")

    def status(self) -> str:
        stored = self.data.get("status")
        if stored == CREATING:
            creator = self.runtime.get("creator_pid", 0)
            return CREATING if creator and process_start_time(creator) is not None else STOPPED
        if not self.init_alive():
            return STOPPED
        if os.path.exists(self.fifo_path):
            return CREATED
        if self._frozen():
            return PAUSED
        return RUNNING

    def _frozen(self) -> bool:
        freezer = self.runtime.get("freezer_path")
        if not freezer:
            return False
        try:
            if freezer.endswith("cgroup.freeze"):
                with open(freezer, "rb") as f:
                    return f.read().strip() == b"1"
            with open(freezer, "rb") as f:
                return f.read().strip() in (b"FROZEN", b"FREEZING")
        except OSError:
            return False

    def spec_state(self) -> dict:
        """The state object of the runtime spec, as `ocirt state` prints it and hooks read it."""
        status = self.status()
        state = {
            "ociVersion": self.data.get("ociVersion", OCI_VERSION),
            "id": self.id,
            "status": status,
            "pid": self.pid if status != STOPPED else 0,
            "bundle": self.data.get("bundle", ""),
            "rootfs": self.data.get("rootfs", ""),
            "created": self.data.get("created", ""),
            "owner": self.data.get("owner", ""),
        }
        annotations = self.data.get("annotations")
        if annotations:
            state["annotations"] = annotations
        return state

    def require(self, *allowed: str, action: str) -> str:
        status = self.status()
        if status not in allowed:
            if status == STOPPED and RUNNING in allowed:
                from ocirt.errors import NotRunning

                raise NotRunning(self.id)
            raise InvalidState(f"cannot {action} container {self.id!r} in status {status}")
        return status


def list_containers(root: str) -> list[Container]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    containers = []
    for name in names:
        try:
            containers.append(Container.load(root, name, shared=True))
        except OcirtError:
            continue
    return containers
