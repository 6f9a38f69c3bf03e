"""The shared integration-test harness: run the runtime under test, build bundles, create unprivileged
users, and find (then clean up) whatever a test leaked.

Test modules import this as ``helpers`` (pytest puts ``tests/`` on ``sys.path``); the fixtures that wrap it
live in ``tests/conftest.py``. Everything here runs real processes against the real kernel.

The runtime under test is ``$OCIRT_RUNTIME`` (default ``<repo>/bin/ocirt``), so the same suite runs
against runc or crun: ``OCIRT_RUNTIME=/usr/sbin/runc pytest tests/integration``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Everything the suite names starts with one of these, so cleanup can tell its own objects from the
# machine's. The session token keeps two concurrent pytest sessions from touching each other's objects.
ID_PREFIX = "ocirt-test-"
CGROUP_PARENT = "ocirt-test"
USER_PREFIX = "ocirt-t"
SESSION_TOKEN = secrets.token_hex(3)


# ---- the runtime -----------------------------------------------------------------------------------

def runtime_path() -> str:
    """The runtime binary under test: ``$OCIRT_RUNTIME``, else ``<repo>/bin/ocirt``."""
    return os.environ.get("OCIRT_RUNTIME") or str(REPO / "bin" / "ocirt")


def runtime_name() -> str:
    """``ocirt``, ``runc``, ``crun``…: for the rare test that must know whose behaviour it is checking."""
    return Path(runtime_path()).name


def new_container_id() -> str:
    return f"{ID_PREFIX}{SESSION_TOKEN}{secrets.token_hex(5)}"


def cgroups_path(container_id: str, *, absolute: bool = False) -> str:
    """A ``linux.cgroupsPath`` unique to this container, under a parent the session cleanup knows.

    Relative paths are resolved by the runtime (runc puts them below its own cgroup, which for the
    memory controller here is the machinery's ``process_api/...`` cgroup: harmless, as only the child
    is created and removed)."""
    relative = f"{CGROUP_PARENT}/{container_id}"
    return "/" + relative if absolute else relative


@dataclass(frozen=True)
class UnprivilegedUser:
    """A throwaway account created for the test session."""

    name: str
    uid: int
    gid: int
    home: Path
    runtime_dir: Path  # XDG_RUNTIME_DIR, owned by the user, mode 0700
    subuid: tuple[int, int] | None = None  # (first host id, count) from /etc/subuid
    subgid: tuple[int, int] | None = None

    def env(self) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                "XDG_RUNTIME_DIR": str(self.runtime_dir)}


def base_env(user: UnprivilegedUser | None = None) -> dict[str, str]:
    """A small, predictable environment (engines call runtimes with little more than this)."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    if user is not None:
        env.update(user.env())
    return env


def run_runtime(args: Sequence[str | os.PathLike], *, root: str | os.PathLike,
                user: UnprivilegedUser | None = None, env: Mapping[str, str | None] | None = None,
                input: str | None = None, timeout: float = 30, check: bool = False,
                cwd: str | os.PathLike | None = None, runtime: str | None = None,
                global_args: Sequence[str] = (), stdout: str | os.PathLike | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """Run ``<runtime> --root ROOT [global_args] ARGS`` and return its exit code and output (text).

    Output goes through files, never pipes: a container started by ``create`` or ``run -d`` inherits
    the runtime's stdio, and a pipe would keep us waiting until the container exits. ``stdout`` names a
    file to keep (the container's output keeps arriving there after ``start``). With ``user`` the runtime
    runs as that user (uid, gid, no supplementary groups) in the user's home with its XDG_RUNTIME_DIR.
    ``env`` entries are added to a minimal environment; a ``None`` value removes a variable.
    """
    runtime = runtime or runtime_path()
    command = [runtime, "--root", str(root), *global_args, *(str(a) for a in args)]
    full_env = base_env(user)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    _record_root(Path(root))
    with contextlib.ExitStack() as stack:
        stdin_file = stack.enter_context(tempfile.TemporaryFile("w+"))
        if input is not None:
            stdin_file.write(input)
            stdin_file.seek(0)
        if stdout is not None:
            out_file = stack.enter_context(open(stdout, "w+"))  # noqa: SIM115
            if user is not None:
                os.fchown(out_file.fileno(), user.uid, user.gid)
        else:
            out_file = stack.enter_context(tempfile.TemporaryFile("w+"))
        err_file = stack.enter_context(tempfile.TemporaryFile("w+"))
        identity: dict = {}
        if user is not None:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": []}
            cwd = cwd or user.home
        try:
            proc = subprocess.run(command, stdin=stdin_file, stdout=out_file, stderr=err_file, env=full_env,
                                  cwd=cwd, timeout=timeout, check=False, **identity)
        except subprocess.TimeoutExpired as exc:
            err_file.seek(0)
            raise AssertionError(f"{' '.join(command)} did not finish within {timeout} s (killed); "
                                 f"stderr so far: {err_file.read()!r}") from exc
        out_file.seek(0)
        err_file.seek(0)
        result = subprocess.CompletedProcess(command, proc.returncode, out_file.read(), err_file.read())
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\nstdout: {result.stdout}"
                             f"\nstderr: {result.stderr}")
    return result


def can_reach(path: str | os.PathLike, uid: int, gid: int) -> bool:
    """Whether ``uid`` can read and run ``path`` through every parent directory, judged by mode bits."""
    def allowed(st: os.stat_result, want: int) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & (want << 6))
        if st.st_gid == gid:
            return bool(st.st_mode & (want << 3))
        return bool(st.st_mode & want)

    target = Path(os.path.realpath(path))
    for parent in reversed(target.parents):
        if not allowed(os.stat(parent), 0o1):
            return False
    return allowed(os.stat(target), 0o5)


# ---- bundles -------------------------------------------------------------------------------------

@dataclass
class Bundle:
    """A bundle directory with its config as a dict: change ``config`` freely, then run; ``write()`` (and
    every helper that starts a container) saves it to ``config.json`` first."""

    path: Path
    id: str
    config: dict
    root: Path  # the --root this bundle's container uses
    rootfs: Path
    user: UnprivilegedUser | None = None
    keep: bool = False  # set when the test deliberately leaves the container for the harness to delete
    runtime_path: str | None = None

    @property
    def rootless(self) -> bool:
        return self.user is not None

    def write(self) -> Path:
        path = self.path / "config.json"
        path.write_text(json.dumps(self.config, indent=2))
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)
        return path

    def runtime(self, args: Sequence[str | os.PathLike], **kwargs) -> subprocess.CompletedProcess[str]:
        """``run_runtime`` with this bundle's root, user and runtime."""
        kwargs.setdefault("root", self.root)
        kwargs.setdefault("user", self.user)
        kwargs.setdefault("runtime", self.runtime_path)
        return run_runtime(args, **kwargs)

    def run(self, *extra: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """``run [extra] --bundle PATH ID`` in the foreground: the result holds the container's output."""
        self.write()
        return self.runtime(["run", *extra, "--bundle", self.path, self.id], **kwargs)

    def create(self, *extra: str, **kwargs) -> subprocess.CompletedProcess[str]:
        self.write()
        return self.runtime(["create", *extra, "--bundle", self.path, self.id], **kwargs)

    def start(self, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.runtime(["start", self.id], **kwargs)

    def kill(self, sig: str = "KILL", **kwargs) -> subprocess.CompletedProcess[str]:
        return self.runtime(["kill", self.id, sig], **kwargs)

    def delete(self, *, force: bool = False, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.runtime(["delete", *(["--force"] if force else []), self.id], **kwargs)

    def state(self) -> dict:
        """The parsed ``state`` output; fails the test when the runtime refuses."""
        result = self.runtime(["state", self.id], check=True)
        return json.loads(result.stdout)

    def cgroup_dirs(self) -> list[Path]:
        """Every cgroup directory on the host named for this container."""
        return find_cgroup_dirs([self.id])


def build_bundle(directory: Path, *, container_id: str, root: Path, rootfs: Path, args: list[str] | None = None,
                 user: UnprivilegedUser | None = None, terminal: bool = False, own_rootfs: bool = False,
                 cgroups: bool = True) -> Bundle:
    """A fresh bundle at ``directory`` whose config (``default_config``) points at ``rootfs``.

    ``own_rootfs`` builds a private rootfs in the bundle for tests that modify it. Rootful bundles get a
    unique ``cgroupsPath`` unless ``cgroups`` is false; rootless ones (``user`` given) get the user's id
    maps, and the bundle directory belongs to that user."""
    from ocirt.bundle import build_rootfs
    from ocirt.spec.default import default_config

    directory.mkdir(parents=True)
    if own_rootfs:
        rootfs = build_rootfs(directory / "rootfs")
    config = default_config(rootless=user is not None, uid=user.uid if user else None,
                            gid=user.gid if user else None, args=args or ["true"], terminal=terminal)
    config["root"]["path"] = "rootfs" if own_rootfs else str(rootfs)
    if user is None and cgroups:
        config["linux"]["cgroupsPath"] = cgroups_path(container_id)
    if user is not None:
        os.chown(directory, user.uid, user.gid)
    bundle = Bundle(path=directory, id=container_id, config=config, root=root, rootfs=rootfs, user=user)
    bundle.write()
    return bundle


# ---- users -------------------------------------------------------------------------------------------

def _read_subid_ranges(path: str) -> list[tuple[str, int, int]]:
    ranges = []
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ranges.append((parts[0], int(parts[1]), int(parts[2])))
    return ranges


def free_subid_start(count: int = 65536) -> int:
    """The lowest start (a multiple of ``count``, >= 100000-ish) free in both /etc/subuid and /etc/subgid."""
    taken = _read_subid_ranges("/etc/subuid") + _read_subid_ranges("/etc/subgid")
    start = 2 * count  # 131072: clear of the ids regular accounts use
    while any(start < s + n and s < start + count for _, s, n in taken):
        start += count
    return start


def create_user(*, subids: int = 0) -> UnprivilegedUser:
    """A new account ``ocirt-t<hex>`` with a home and an XDG_RUNTIME_DIR, and with ``subids`` subordinate
    uids and gids (none unless asked: useradd's automatic ranges are switched off, so the test decides)."""
    name = f"{USER_PREFIX}{SESSION_TOKEN}{secrets.token_hex(2)}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group",
                    "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                   check=True, capture_output=True, text=True)
    import pwd

    entry = pwd.getpwnam(name)
    subuid = subgid = None
    if subids:
        start = free_subid_start(subids)
        span = f"{start}-{start + subids - 1}"
        subprocess.run(["usermod", "--add-subuids", span, "--add-subgids", span, name],
                       check=True, capture_output=True, text=True)
        subuid = subgid = (start, subids)
    runtime_dir = Path(f"/run/user/{entry.pw_uid}")
    runtime_dir.mkdir(parents=True, exist_ok=True)
    os.chown(runtime_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(runtime_dir, 0o700)
    return UnprivilegedUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=Path(entry.pw_dir),
                            runtime_dir=runtime_dir, subuid=subuid, subgid=subgid)


def remove_user(user: UnprivilegedUser) -> None:
    """Kill the user's leftover processes (by pid), delete the account, its home, runtime dir and
    subordinate id lines."""
    for pid in processes_owned_by(user.uid):
        kill_pid(pid)
    subprocess.run(["userdel", "--remove", user.name], capture_output=True, text=True)
    shutil.rmtree(user.runtime_dir, ignore_errors=True)
    for path in ("/etc/subuid", "/etc/subgid"):
        remove_subid_lines(path, user.name)


def remove_subid_lines(path: str, name: str) -> None:
    try:
        lines = Path(path).read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = [line for line in lines if not line.startswith(name + ":")]
    if kept != lines:
        Path(path).write_text("".join(kept))


# ---- processes ---------------------------------------------------------------------------------------

def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def processes_owned_by(uid: int) -> list[int]:
    pids = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid:
                pids.append(pid)
    return pids


def kill_pid(pid: int, timeout: float = 2.0) -> None:
    """SIGKILL one process and wait briefly for it to go (or become a zombie someone else reaps)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def processes_using(paths: Iterable[Path]) -> dict[int, str]:
    """Processes whose root, cwd or command line lies in one of ``paths`` → why each was picked.

    A container's root shows as "/" through readlink (it lives in another mount namespace), so roots are
    compared by device and inode instead."""
    prefixes = [str(p) for p in paths]
    identities = {}
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            identities[(st.st_dev, st.st_ino)] = str(p)
    found: dict[int, str] = {}
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        try:
            st = os.stat(f"/proc/{pid}/root")
            if (st.st_dev, st.st_ino) in identities:
                found[pid] = f"root is {identities[(st.st_dev, st.st_ino)]}"
                continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if _under(cwd, prefixes):
                found[pid] = f"cwd is {cwd}"
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            if any(p in cmdline for p in prefixes):
                found[pid] = f"command line is {cmdline!r}"
        except OSError:
            continue
    return found


def describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip() or f"[pid {pid}]"
    except OSError:
        return f"[pid {pid}]"


# ---- mounts --------------------------------------------------------------------------------------------

def _unescape_mountinfo(field_text: str) -> str:
    return field_text.encode().decode("unicode_escape") if "\\" in field_text else field_text


def mountinfo(pid: str = "self") -> list[tuple[str, str, str]]:
    """(mount point, root within its filesystem, fs type) for each mount in ``pid``'s namespace."""
    mounts = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            before, after = line.split(" - ", 1)
            fields = before.split()
            mounts.append((_unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3]), after.split()[0]))
    return mounts


def mounts_mentioning(paths: Iterable[Path]) -> list[str]:
    prefixes = [str(p) for p in paths]
    return [point for point, root, _ in mountinfo() if _under(point, prefixes) or _under(root, prefixes)]


def unmount(point: str) -> None:
    subprocess.run(["umount", "--lazy", point], capture_output=True)


# ---- cgroups -------------------------------------------------------------------------------------------

def cgroup_mounts() -> list[Path]:
    """Every cgroup (v1 and v2) hierarchy mounted under /sys/fs/cgroup."""
    return sorted({Path(point) for point, _, fstype in mountinfo()
                   if fstype in ("cgroup", "cgroup2") and _under(point, [str(CGROUP_ROOT)])})


def _walk_cgroups() -> Iterable[Path]:
    for mount in cgroup_mounts():
        for dirpath, dirnames, _ in os.walk(mount):
            for name in dirnames:
                yield Path(dirpath) / name


def find_cgroup_dirs(container_ids: Iterable[str]) -> list[Path]:
    """Cgroup directories named for one of the ids (``<id>``, or ``<prefix>-<id>.scope`` as the systemd
    driver names them), in every hierarchy. Only the suite's own ids (``ocirt-test-...``) are looked
    for: a short, made-up id such as "demo" could name another session's cgroup."""
    ids = {i for i in container_ids if i.startswith(ID_PREFIX)}
    return [p for p in _walk_cgroups()
            if p.name in ids or any(p.name.endswith(f"-{i}.scope") for i in ids)]


def suite_cgroup_dirs() -> set[Path]:
    """Every directory the suite might have made: ``ocirt-test*`` anywhere under /sys/fs/cgroup."""
    return {p for p in _walk_cgroups() if p.name.startswith(CGROUP_PARENT)}


def remove_cgroup(path: Path, timeout: float = 2.0) -> bool:
    """Thaw, empty (SIGKILL by pid) and remove a cgroup and its children, deepest first."""
    children = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for directory in [*children, path]:
        for thaw_file, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            with contextlib.suppress(OSError):
                (directory / thaw_file).write_text(value)
        deadline = time.monotonic() + timeout
        while True:
            try:
                pids = [int(x) for x in (directory / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                kill_pid(pid, timeout=0.5)
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
    return True


# ---- leak checking -----------------------------------------------------------------------------------

_current_tracker: LeakTracker | None = None

# The host's device nodes that a runtime might be led to change (issue 16 item 9: /dev/null was once found
# owned by 1000:1000). Each test's leak check compares them with how they were when the test began.
HOST_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "console", "kmsg")


@dataclass(frozen=True)
class NodeState:
    """What a /dev entry is: type, permission bits, owner and device number (``None`` when missing)."""

    kind: int
    mode: int
    uid: int
    gid: int
    rdev: int
    link: str | None = None

    def describe(self) -> str:
        if self.link is not None:
            return f"a symlink to {self.link}"
        kind = {stat.S_IFCHR: "char", stat.S_IFBLK: "block"}.get(self.kind, f"type {self.kind:o}")
        return (f"{kind} {os.major(self.rdev)}:{os.minor(self.rdev)} mode {self.mode:04o} "
                f"owner {self.uid}:{self.gid}")


def host_dev_nodes() -> dict[str, NodeState | None]:
    nodes: dict[str, NodeState | None] = {}
    for name in HOST_DEV_NODES:
        try:
            st = os.lstat(f"/dev/{name}")
        except FileNotFoundError:
            nodes[name] = None
            continue
        link = os.readlink(f"/dev/{name}") if stat.S_ISLNK(st.st_mode) else None
        nodes[name] = NodeState(stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                st.st_rdev, link)
    return nodes


def host_dev_changes(before: Mapping[str, NodeState | None]) -> list[str]:
    """One line per host /dev node that is not as ``before`` says; each is put back (as root)."""
    changes = []
    for name, now in host_dev_nodes().items():
        was = before.get(name)
        if now == was:
            continue
        changes.append(f"host /dev/{name} changed: was {was.describe() if was else 'missing'}, "
                       f"is {now.describe() if now else 'missing'}")
        if os.geteuid() == 0:
            restore_dev_node(f"/dev/{name}", was, now)
    return changes


def restore_dev_node(path: str, was: NodeState | None, now: NodeState | None) -> None:
    with contextlib.suppress(OSError):
        if now is not None and (was is None or (now.kind, now.rdev, now.link) != (was.kind, was.rdev, was.link)):
            os.unlink(path)
        if was is None:
            return
        if was.link is not None:
            if not os.path.islink(path):
                os.symlink(was.link, path)
            return
        if not os.path.lexists(path):
            os.mknod(path, was.kind | was.mode, was.rdev)
        os.chown(path, was.uid, was.gid, follow_symlinks=False)
        os.chmod(path, was.mode, follow_symlinks=False)


def _record_root(root: Path) -> None:
    if _current_tracker is not None:
        _current_tracker.roots.setdefault(root, None)


@dataclass
class LeakTracker:
    """What one test created, so its teardown can prove that nothing outlived it.

    ``check_and_clean()`` returns one line per leak and removes each leak it found: state dirs (through
    ``delete --force`` first, as the runtime knows best how to tear a container down), processes (SIGKILL
    by pid), mounts (lazy umount) and cgroup directories (rmdir). The host's /dev nodes (``HOST_DEV_NODES``)
    must keep the type, mode, owner and device number they had when the test began; one that changed is
    put back."""

    roots: dict[Path, UnprivilegedUser | None] = field(default_factory=dict)
    bundles: list[Bundle] = field(default_factory=list)
    watched_paths: list[Path] = field(default_factory=list)
    container_ids: set[str] = field(default_factory=set)
    host_nodes: dict[str, NodeState | None] = field(default_factory=dict)

    def activate(self) -> None:
        global _current_tracker
        _current_tracker = self
        self.host_nodes = host_dev_nodes()

    def deactivate(self) -> None:
        global _current_tracker
        if _current_tracker is self:
            _current_tracker = None

    def add_bundle(self, bundle: Bundle) -> None:
        self.bundles.append(bundle)
        self.roots[bundle.root] = bundle.user
        self.container_ids.add(bundle.id)

    @property
    def idle(self) -> bool:
        return not (self.roots or self.bundles or self.watched_paths or self.container_ids)

    def check_and_clean(self) -> list[str]:
        if self.idle:
            return host_dev_changes(self.host_nodes) if self.host_nodes else []
        leaks: list[str] = []
        kept = {b.id for b in self.bundles if b.keep}
        runtimes = {b.id: b.runtime_path for b in self.bundles}

        for root, user in self.roots.items():
            if not root.is_dir():
                continue
            for entry in sorted(root.iterdir()):
                if not entry.is_dir():
                    continue
                self.container_ids.add(entry.name)
                if entry.name not in kept:
                    leaks.append(f"state dir {entry} remains")
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    run_runtime(["delete", "--force", entry.name], root=root, user=user, timeout=15,
                                runtime=runtimes.get(entry.name))
                if entry.exists():
                    if entry.name in kept:
                        leaks.append(f"state dir {entry} remains after delete --force")
                    shutil.rmtree(entry, ignore_errors=True)

        paths = [b.path for b in self.bundles] + [b.rootfs for b in self.bundles] + self.watched_paths
        paths = list(dict.fromkeys(paths))
        for pid, why in sorted(processes_using(paths).items()):
            leaks.append(f"process {pid} ({describe_pid(pid)}) survives: {why}")
            kill_pid(pid)

        for point in sorted(mounts_mentioning(paths), key=len, reverse=True):
            leaks.append(f"mount {point} remains")
            unmount(point)

        for directory in sorted(find_cgroup_dirs(self.container_ids), key=lambda p: len(p.parts), reverse=True):
            if not directory.exists():
                continue
            leaks.append(f"cgroup {directory} remains")
            if not remove_cgroup(directory):
                leaks.append(f"cgroup {directory} could not be removed")
        if self.host_nodes:
            leaks += host_dev_changes(self.host_nodes)
        return leaks


# ---- sessions that died without cleaning up -----------------------------------------------------------

HARNESS_DIR_PREFIX = "/tmp/ocirt-harness-"
SESSION_PID_FILE = "session.pid"


def session_dir(token: str = SESSION_TOKEN) -> Path:
    return Path(f"{HARNESS_DIR_PREFIX}{token}")


def process_identity(pid: int) -> str:
    """``<pid>:<start time>``: unlike a bare pid, never names a different, later process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return f"{pid}:dead"
    return f"{pid}:{fields[19]}"


def _session_alive(directory: Path) -> bool:
    try:
        recorded = (directory / SESSION_PID_FILE).read_text().strip()
        return process_identity(int(recorded.split(":")[0])) == recorded
    except (OSError, ValueError, IndexError):
        return False


def live_session_tokens() -> set[str]:
    """Tokens of the other harness sessions running on this machine right now."""
    tokens = set()
    for directory in Path("/tmp").glob("ocirt-harness-*"):
        token = directory.name[len("ocirt-harness-"):]
        if token != SESSION_TOKEN and _session_alive(directory):
            tokens.add(token)
    return tokens


def reap_stale_sessions() -> list[str]:
    """Remove what a killed test session (SIGKILL, a CI timeout) left: its processes, mounts, users,
    cgroups and directory. A session counts as dead when the pid in its pid file is gone or belongs to
    someone else; directories without a pid file are left alone."""
    reaped = []
    for directory in sorted(Path("/tmp").glob("ocirt-harness-*")):
        token = directory.name[len("ocirt-harness-"):]
        if token == SESSION_TOKEN or not (directory / SESSION_PID_FILE).exists() or _session_alive(directory):
            continue
        for pid in processes_using([directory]):
            kill_pid(pid)
        for point in sorted(mounts_mentioning([directory]), key=len, reverse=True):
            unmount(point)
        import pwd

        for entry in pwd.getpwall():
            if entry.pw_name.startswith(USER_PREFIX + token):
                remove_user(UnprivilegedUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir),
                                             Path(f"/run/user/{entry.pw_uid}")))
        for cgroup in sorted((p for p in _walk_cgroups() if p.name.startswith(ID_PREFIX + token)),
                             key=lambda p: len(p.parts), reverse=True):
            remove_cgroup(cgroup)
        shutil.rmtree(directory, ignore_errors=True)
        reaped.append(token)
    return reaped


# ---- test dependencies ---------------------------------------------------------------------------------

def needs_root(why: str):
    """Skip marker for a test an unprivileged caller cannot run; the reason says what needs root."""
    import pytest

    return pytest.mark.skipif(os.geteuid() != 0, reason=f"needs root: {why}")


def require_module(name: str, what: str):
    """Import ``name`` for a test module, or fail its collection with one line saying what to install."""
    import importlib

    import pytest

    try:
        return importlib.import_module(name)
    except ImportError as err:
        pytest.fail(f"these tests need {what}: {err}", pytrace=False)


# ---- config editing helpers -------------------------------------------------------------------------------

def without_namespace(config: dict, kind: str) -> dict:
    """A copy of ``config`` without the ``kind`` namespace (e.g. to share the host's network)."""
    config = copy.deepcopy(config)
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != kind]
    return config


def use_subid_maps(config: dict, user: UnprivilegedUser, size: int = 65536) -> dict:
    """Map container root to ``user`` and container ids 1..``size`` to the user's subordinate ranges
    (the shape podman uses; the runtime needs newuidmap/newgidmap for it)."""
    if user.subuid is None or user.subgid is None:
        raise ValueError(f"{user.name} has no subordinate ids: use the subid_user fixture")
    size = min(size, user.subuid[1], user.subgid[1])
    linux = config.setdefault("linux", {})
    linux["uidMappings"] = [{"containerID": 0, "hostID": user.uid, "size": 1},
                            {"containerID": 1, "hostID": user.subuid[0], "size": size}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": user.gid, "size": 1},
                            {"containerID": 1, "hostID": user.subgid[0], "size": size}]
    return config


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.lchown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def world_reachable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0755 so unprivileged test users can traverse it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755 | (os.stat(path).st_mode & stat.S_ISVTX))
    return path


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (nothing reaps orphans on this VM)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
