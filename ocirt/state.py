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
import stat

from ocirt.errors import ContainerExists, ContainerNotFound, InvalidState, OcirtError, why
from ocirt.files import Unreadable, read_all, write_file_atomic
from ocirt.version import OCI_VERSION

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


def rootless_by_default() -> bool:
    """runc's --rootless auto: unprivileged, or uid 0 inside a user namespace someone else made (rootless
    podman runs the runtime so), unless the caller says it is really root (USER=root)."""
    if os.geteuid() != 0:
        return True
    return in_user_namespace() and os.environ.get("USER") != "root"


def default_root(rootless: bool) -> str:
    if not rootless or (os.geteuid() == 0 and not os.environ.get("XDG_RUNTIME_DIR")):
        return "/run/ocirt"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "ocirt")
    # No XDG_RUNTIME_DIR: a private directory of the user's own, never a shared, guessable one it does not own.
    return f"/tmp/ocirt-{os.geteuid()}"


_DIR_MODE = 0o700
# No state file of ocirt's comes near this; a bigger one was not written by ocirt, and reading it whole
# could take the memory of the host.
STATE_MAX_BYTES = 16 << 20

# The real path of each state directory already checked by this process, and whose authority it carries
# (see open_root): None when the caller's own permissions apply.
_opened: dict[str, int | None] = {}


def open_root(root: str, *, create: bool = False, rootless: bool = False) -> str:
    """The real path of the state directory ``root``, once it can be trusted; ``create`` makes it if missing.

    Rootless, the directory must be the caller's own, and private. As root (the real one, outside a user
    namespace), a forged state.json would make root signal, join or remove whatever it names, so the
    directory, and every directory above it, must be writable by no one but its owner (a sticky, root-owned
    parent such as /tmp excepted), and each parent must belong to root or to that owner. A state directory
    owned by a user is legitimate (Slurm runs `state`, `kill` and `delete` as root on its users' containers),
    but then the command runs with that user's authority only: root drops to the owner's uid and groups
    before it reads any state, so the kernel allows exactly what the owner could do. Containers of root's
    own are never created in a user's state directory.
    """
    real = os.path.realpath(root)
    if real in _opened and not create:
        return real
    made = _make_dirs(real) if create else []
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return real  # nothing is stored there: every lookup finds no container
    except OSError as err:
        raise OcirtError(f"cannot use state directory {root}: {why(err)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OcirtError(f"state directory {root} is not a directory")
    owner = None
    if os.geteuid() == 0 and not in_user_namespace():
        try:
            owner = _trusted_owner(real, st)
            if owner != 0 and create:
                raise OcirtError(f"state directory {real} belongs to uid {owner}: as root, ocirt creates "
                                 "containers only in a state directory of root's own")
        except OcirtError:
            for directory in reversed(made):
                try:
                    os.rmdir(directory)
                except OSError:
                    break
            raise
        if owner != 0:
            _act_as(owner, st.st_gid)
    elif create and rootless:
        if st.st_uid != os.geteuid():
            raise OcirtError(f"state directory {real} is owned by uid {st.st_uid}, not by you")
        if st.st_mode & 0o077:
            # Others must not reach the state (the exec fifo, the saved config) of a user's containers.
            os.chmod(real, _DIR_MODE)
    _opened[real] = owner
    return real


def _make_dirs(path: str) -> list[str]:
    """mkdir -p with explicit modes (private leaf, 0755 parents), so a umask of 0 makes nothing writable.
    Returns the directories it made, top first."""
    missing = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    made = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, _DIR_MODE if directory == path else 0o755)
            made.append(directory)
        except FileExistsError:
            pass
        except OSError as err:
            raise OcirtError(f"cannot create state directory {path}: {why(err)}") from None
    return made


def _writers(st: os.stat_result) -> str:
    return "everyone" if st.st_mode & 0o002 else f"group {st.st_gid}"


def _trusted_owner(real: str, st: os.stat_result) -> int:
    if st.st_mode & 0o022:
        raise OcirtError(f"state directory {real} is writable by {_writers(st)}: as root, ocirt uses only a "
                         "state directory that no one but its owner can write")
    owner = st.st_uid
    path = real
    while path != "/":
        path = os.path.dirname(path)
        parent = os.lstat(path)
        if parent.st_uid not in (0, owner):
            raise OcirtError(f"state directory {real}: its parent {path} belongs to uid {parent.st_uid}, "
                             "who could replace it")
        if parent.st_mode & 0o022 and not (parent.st_mode & stat.S_ISVTX and parent.st_uid == 0):
            raise OcirtError(f"state directory {real}: its parent {path} is writable by {_writers(parent)}, "
                             "who could replace it")
    return owner


def _act_as(uid: int, gid: int) -> None:
    """Become ``uid`` for good, with its groups: what follows may do only what that user may."""
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        groups = []
    else:
        gid = entry.pw_gid
        groups = os.getgrouplist(entry.pw_name, gid)
    from ocirt import log

    log.debug(f"the state directory belongs to uid {uid}: acting with its authority")
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _root_owner(real: str) -> int | None:
    return _opened.get(real)


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
    """One container's directory and state, opened under its lock.

    The lock is an flock on the directory: exclusive for commands that change the container, shared for
    those that only read it. `create` holds it exclusively from the moment the directory exists until the
    state says "created", so a directory that can be locked while it has no state, or a state still saying
    "creating", was left by a create that died; such a directory is reclaimed (see ``new``), never guessed
    at from pids.
    """

    def __init__(self, root: str, container_id: str, lock_fd: int, data: dict, problem: str | None = None):
        self.root = root
        self.id = container_id
        self.dir = os.path.join(root, container_id)
        self._lock_fd = lock_fd
        self.data = data
        # Why the state could not be read (a half-made directory, a damaged file), for commands that act
        # on such a container anyway (delete --force, the reclaim in new()).
        self.problem = problem

    # -- opening -----------------------------------------------------------------------------------------
    @classmethod
    def new(cls, root: str, container_id: str, *, rootless: bool, reclaim) -> Container:
        """Make and lock the container's directory. An existing directory that a dead create left behind
        is handed, locked, to ``reclaim(container)``, which cleans up after it and removes it; then the id
        is free again. Any other existing directory means the id is taken."""
        validate_id(container_id)
        root = open_root(root, create=True, rootless=rootless)
        for _attempt in range(3):
            root_fd = _lock_root(root)
            try:
                try:
                    os.mkdir(container_id, _DIR_MODE, dir_fd=root_fd)
                except FileExistsError:
                    stale = cls._open_stale(root, container_id)
                except OSError as err:
                    raise OcirtError(f"cannot create {os.path.join(root, container_id)}: {why(err)}") from None
                else:
                    fd = _open_dir(root, container_id)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    return cls(root, container_id, fd, {})
            finally:
                os.close(root_fd)
            if stale is None:
                raise ContainerExists(container_id)
            try:
                reclaim(stale)
            finally:
                stale.close()
        raise ContainerExists(container_id)

    @classmethod
    def _open_stale(cls, root: str, container_id: str) -> Container | None:
        """The existing directory, locked, if a dead create left it (called under the root's lock, so no
        live create can be between its mkdir and its flock); None if the id belongs to a container."""
        try:
            fd = _open_dir(root, container_id)
        except ContainerNotFound:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        container = cls._read(root, container_id, fd, partial=True)
        if container.problem == NO_STATE or (container.problem is None and container.data.get("status") == CREATING):
            return container
        container.close()
        return None

    @classmethod
    def load(cls, root: str, container_id: str, *, shared: bool = False, partial: bool = False) -> Container:
        """Open the container's state under its lock. With ``partial``, a directory without a readable
        state is opened too (its ``problem`` says why), for the commands that clean such a one up."""
        validate_id(container_id)
        root = open_root(root)
        fd = _open_dir(root, container_id)
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        return cls._read(root, container_id, fd, partial=partial)

    @classmethod
    def _read(cls, root: str, container_id: str, fd: int, *, partial: bool) -> Container:
        try:
            data = _read_state(fd, container_id, _root_owner(root))
        except Unreadable as err:
            if os.fstat(fd).st_nlink == 0:
                # Deleted while we waited for the lock.
                os.close(fd)
                raise ContainerNotFound(container_id) from None
            if partial:
                return cls(root, container_id, fd, {}, problem=str(err))
            os.close(fd)
            if str(err) == NO_STATE:
                # A create that died before it wrote any state: only delete --force (or a new create of
                # the id) sees such a directory.
                raise ContainerNotFound(container_id) from None
            raise OcirtError(f"container {container_id!r}: its state is unreadable: {err}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(root, container_id, fd, data)

    @property
    def lock_fd(self) -> int:
        return self._lock_fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- persistence -------------------------------------------------------------------------------------
    def save(self) -> None:
        """Replace state.json as one step: the new state goes to a temporary file, which is synced and
        then renamed over the old one, so a crash or a full disk leaves either state, never half of one."""
        from ocirt.fastjson import dumps

        write_file_atomic(self._lock_fd, STATE_FILE, dumps(self.data).encode(), what=f"the state of {self.id!r}")

    def remove(self) -> None:
        """Remove the directory, state.json last: until the end the state says what is left to clean up.
        The lock stays held on the (now unlinked) directory until close()."""
        fd = self._lock_fd
        try:
            names = os.listdir(fd)
        except FileNotFoundError:
            return
        for name in sorted(names, key=lambda n: n == STATE_FILE):
            if name == STATE_FILE:
                from ocirt.faults import crash_point

                crash_point()
            try:
                os.unlink(name, dir_fd=fd)
            except IsADirectoryError:
                import shutil

                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise OcirtError(f"cannot remove {os.path.join(self.dir, name)}: {why(err)}") from None
        try:
            os.rmdir(self.dir)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise OcirtError(f"cannot remove {self.dir}: {why(err)}") from None

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
        if stored == CREATING and self.runtime.get("creator_pid") != os.getpid():
            # The creator holds the lock until the state says "created", and we hold it now: the create
            # died. What it left (an init, cgroups) is for delete --force to reclaim.
            return STOPPED
        if stored == CREATING:
            return CREATING
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
            # Non-blocking: whatever the path names, reading it must not hang the command.
            fd = os.open(freezer, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            value = os.read(fd, 64).strip()
        except OSError:
            return False
        finally:
            os.close(fd)
        if freezer.endswith("cgroup.freeze"):
            return value == b"1"
        return value in (b"FROZEN", b"FREEZING")

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
    """Every container under ``root`` whose state can be read, each opened with a shared lock. One whose
    state is damaged is reported (a warning) and left out; a directory without state is a create that is
    still running or died (delete --force reclaims it), and is left out silently."""
    root = open_root(root)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise OcirtError(f"cannot read state directory {root}: {why(err)}") from None
    containers = []
    for name in names:
        try:
            containers.append(Container.load(root, name, shared=True))
        except ContainerNotFound:
            continue
        except OcirtError as err:
            from ocirt import log

            log.warning(str(err))
    return containers


# -- the files ---------------------------------------------------------------------------------------------
NO_STATE = "no state file"


def _lock_root(root: str) -> int:
    """The state directory's own lock, held only around making a container directory and locking it, and
    around deciding that an existing one is stale: so a reclaim never sees a create between those steps."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise OcirtError(f"cannot open state directory {root}: {why(err)}") from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _open_dir(root: str, container_id: str) -> int:
    try:
        fd = os.open(os.path.join(root, container_id), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContainerNotFound(container_id) from None
    except OSError as err:
        if err.errno in (20, 40):  # ENOTDIR, ELOOP: a file or a symlink where a directory should be
            raise OcirtError(f"container {container_id!r}: {os.path.join(root, container_id)} is not a "
                             "directory") from None
        raise OcirtError(f"cannot open the state of container {container_id!r} in {root}: {why(err)}") from None
    owner = _root_owner(root)
    if owner is not None:
        st = os.fstat(fd)
        if st.st_uid != owner or st.st_mode & 0o022:
            os.close(fd)
            raise OcirtError(f"container {container_id!r}: {os.path.join(root, container_id)} is not private to "
                             f"uid {owner}, the owner of the state directory: refusing it")
    return fd


def _read_state(dir_fd: int, container_id: str, owner: int | None) -> dict:
    try:
        fd = os.open(STATE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Unreadable(NO_STATE) from None
    except OSError as err:
        raise Unreadable(f"{STATE_FILE}: {why(err)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"{STATE_FILE} is not a regular file")
        if owner is not None and (st.st_uid != owner or st.st_mode & 0o022):
            raise Unreadable(f"{STATE_FILE} is not private to uid {owner}, the owner of the state directory")
        if st.st_size > STATE_MAX_BYTES:
            raise Unreadable(f"{STATE_FILE} is {st.st_size} bytes, more than ocirt ever writes")
        raw = read_all(fd, STATE_MAX_BYTES)
    except OSError as err:
        raise Unreadable(f"{STATE_FILE}: {why(err)}") from None
    finally:
        os.close(fd)
    from ocirt.fastjson import JSONError, loads

    try:
        data = loads(raw)
    except (JSONError, UnicodeDecodeError) as err:
        raise Unreadable(f"{STATE_FILE} is not valid JSON ({err})") from None
    problem = _state_shape_problem(data, container_id)
    if problem:
        raise Unreadable(f"{STATE_FILE}: {problem}")
    return data  # type: ignore[return-value]


# Fields whose type the commands rely on; anything else in the file is only ever printed back.
_STATE_TYPES: dict[str, type | tuple] = {"status": str, "pid": int, "bundle": str, "rootfs": str, "created": str,
                                         "owner": str, "ociVersion": str, "annotations": dict, "ocirt": dict}
_RUNTIME_TYPES: dict[str, type | tuple] = {"creator_pid": int, "start_time": int, "rootless": bool,
                                           "cgroup": dict, "resources": dict, "hooks": dict,
                                           "freezer_path": (str, type(None)), "net_devices": (list, dict)}
PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT


def _state_shape_problem(data: object, container_id: str) -> str | None:
    if not isinstance(data, dict):
        return "the top level is not an object"
    if data.get("id", container_id) != container_id:
        return f"it names container {data.get('id')!r}"
    for fields, types, where in ((data, _STATE_TYPES, ""), (data.get("ocirt") or {}, _RUNTIME_TYPES, "ocirt.")):
        for key, kind in types.items():
            value = fields.get(key)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                return f"{where}{key} has the wrong type"
    runtime = data.get("ocirt") or {}
    for key, value, highest in (("pid", data.get("pid"), PID_MAX), ("ocirt.creator_pid", runtime.get("creator_pid"),
                                PID_MAX), ("ocirt.start_time", runtime.get("start_time"), 1 << 64)):
        if value is not None and not 0 <= value <= highest:
            return f"{key} {value} is out of range"
    return None
