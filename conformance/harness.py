"""The pieces every case uses: the case registry, the runtime under test, and a per-case context.

A case is a function that takes a :class:`CaseContext`, builds a config, drives the runtime and checks one
spec rule. It fails by raising :class:`CaseFailed` (through :func:`check`) and skips by raising
:class:`CaseSkipped`. The context owns everything the case creates and removes it afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CALL_TIMEOUT = 10.0

# A private mount namespace per call, with the cgroup2 mount gone, makes crun see a pure cgroup v1 host.
# The container state lives under --root, so it survives from one call to the next.
HIDE_CGROUP2_SCRIPT = 'mount --make-rprivate / && umount /sys/fs/cgroup/unified && exec "$@"'


class CaseFailed(Exception):
    """The runtime broke the rule the case checks."""


class CaseSkipped(Exception):
    """The case cannot say anything here: missing privilege, declared-unsupported feature, other arch."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise CaseFailed(message)


@dataclass(frozen=True)
class Case:
    name: str
    section: str
    rule: str
    func: Callable[[CaseContext], None]
    rootful_only: str | None = None


_CASES: list[Case] = []


def case(name: str, section: str, rule: str, *, rootful_only: str | None = None) -> Callable:
    """Register a case. ``rootful_only`` is the reason the case is skipped under --rootless."""

    def register(func: Callable[[CaseContext], None]) -> Callable[[CaseContext], None]:
        if any(c.name == name for c in _CASES):
            raise ValueError(f"duplicate conformance case {name}")
        _CASES.append(Case(name, section, rule, func, rootful_only))
        return func

    return register


def all_cases() -> list[Case]:
    # Importing the modules registers their cases; the order of this list is the order of the report.
    from conformance import (  # noqa: F401
        cases_features,
        cases_hooks,
        cases_lifecycle,
        cases_linux,
        cases_mounts,
        cases_process,
    )

    return list(_CASES)


@dataclass
class RuntimeUser:
    name: str
    uid: int
    gid: int


@dataclass
class Runtime:
    """One runtime binary, with the state directory and user every call of this run shares."""

    name: str
    binary: str
    state_root: Path
    hide_cgroup2: bool = False
    user: RuntimeUser | None = None
    xdg_runtime_dir: Path | None = None
    oci_version: str = "1.3.0"
    _features: dict | None = field(default=None, repr=False)
    _features_loaded: bool = field(default=False, repr=False)

    @property
    def rootless(self) -> bool:
        return self.user is not None or os.geteuid() != 0

    def argv(self, args: list[str]) -> list[str]:
        argv = [self.binary, "--root", str(self.state_root), *args]
        if self.user is not None:
            argv = ["setpriv", f"--reuid={self.user.uid}", f"--regid={self.user.gid}", "--clear-groups",
                    *argv]
        if self.hide_cgroup2:
            argv = ["unshare", "-m", "sh", "-c", HIDE_CGROUP2_SCRIPT, "--", *argv]
        return argv

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")}
        if self.xdg_runtime_dir is not None:
            env["XDG_RUNTIME_DIR"] = str(self.xdg_runtime_dir)
            env["HOME"] = str(self.xdg_runtime_dir)
        else:
            env["HOME"] = os.environ.get("HOME", "/root")
        return env

    def call(self, args: list[str], *, cwd: str | os.PathLike | None = None, stdout: int | IO[Any] | None = None,
             stderr: int | IO[Any] | None = None, timeout: float = CALL_TIMEOUT,
             caller_setup: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
        """Run one runtime command; ``caller_setup`` runs in the child first, to give the runtime
        process attributes (umask, oom_score_adj) that the container might inherit."""
        capture = stdout is None
        try:
            return subprocess.run(self.argv(args), cwd=cwd, env=self.env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if capture else stdout,
                                  stderr=subprocess.PIPE if stderr is None else stderr,
                                  text=True, timeout=timeout, preexec_fn=caller_setup)
        except subprocess.TimeoutExpired as exc:
            raise CaseFailed(f"`{' '.join(args[:3])}` did not finish within {timeout:.0f}s") from exc

    def features(self) -> dict | None:
        if not self._features_loaded:
            self._features_loaded = True
            result = self.call(["features"])
            if result.returncode == 0:
                try:
                    self._features = json.loads(result.stdout)
                except ValueError:
                    self._features = None
        return self._features


@dataclass
class CallResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return f"exit {self.returncode}" + (f": {text[-1][:200]}" if text else "")


class CaseContext:
    """Everything one case needs, and the list of what to undo when it ends."""

    def __init__(self, runtime: Runtime, work_dir: Path, template_rootfs: Path, case_name: str) -> None:
        from ocirt.spec.default import default_config

        self.runtime = runtime
        self.bundle = work_dir / case_name
        self.bundle.mkdir()
        subprocess.run(["cp", "-a", str(template_rootfs), str(self.bundle / "rootfs")], check=True)
        self._ids: list[str] = []
        self._cleanups: list[Callable[[], object]] = []
        self.rootless = runtime.rootless
        user = runtime.user
        self.uid = user.uid if user else os.geteuid()
        self.gid = user.gid if user else os.getegid()
        self.config: dict = default_config(rootless=self.rootless, uid=self.uid, gid=self.gid, args=["true"],
                                           terminal=False)
        self.config["ociVersion"] = runtime.oci_version
        self.config["root"]["path"] = "rootfs"
        self._short = case_name.replace("_", "-")[:24]
        self.caller_setup: Callable[[], None] | None = None
        if user is not None:
            self.chown(self.bundle)

    # ---- ownership and host-side files -------------------------------------------------------------------
    def chown(self, path: Path) -> None:
        if self.runtime.user is not None:
            subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)

    def host_dir(self, name: str) -> Path:
        """A directory in the bundle that the runtime's user (and the container's root) can write."""
        path = self.bundle / name
        path.mkdir(parents=True, exist_ok=True)
        self.chown(path)
        return path

    def rootfs_dir(self, path: str) -> Path:
        """Make a directory inside the rootfs so the runtime need not create the mount point itself."""
        target = self.bundle / "rootfs" / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        self.chown(target)
        return target

    def bind(self, source: Path | str, destination: str, options: list[str] | None = None) -> None:
        self.config["mounts"].append({"destination": destination, "type": "bind", "source": str(source),
                                      "options": options or ["rbind"]})

    def tmpfs(self, destination: str, options: list[str] | None = None) -> None:
        self.config["mounts"].append({"destination": destination, "type": "tmpfs", "source": "tmpfs",
                                      "options": options or ["nosuid", "nodev", "mode=1777"]})

    def add_cleanup(self, func: Callable[[], object]) -> None:
        self._cleanups.append(func)

    def skip_if_undeclared(self, what: str, declared: Callable[[dict], bool]) -> None:
        """Skip when the runtime's features document says it lacks ``what``; a runtime without the
        document is held to the rule."""
        features = self.runtime.features()
        if features is not None and not declared(features):
            raise CaseSkipped(f"the runtime's features document does not list {what}")

    # ---- runtime operations ------------------------------------------------------------------------------
    def new_id(self) -> str:
        container_id = f"{self._short}-{secrets.token_hex(3)}"
        self._ids.append(container_id)
        return container_id

    @property
    def last_id(self) -> str:
        return self._ids[-1]

    def write_config(self, config: dict | None = None) -> None:
        path = self.bundle / "config.json"
        path.write_text(json.dumps(self.config if config is None else config, indent=1))
        self.chown(path)

    def call(self, args: list[str], **kwargs: object) -> CallResult:
        result = self.runtime.call(args, caller_setup=self.caller_setup, **kwargs)  # type: ignore[arg-type]
        return CallResult(result.returncode, result.stdout or "", result.stderr or "")

    def run(self, args: list[str] | None = None, *, config: dict | None = None) -> CallResult:
        """`run` the config in the foreground and return the runtime's (and so the container's) output."""
        if args is not None:
            self.config["process"]["args"] = args
        self.write_config(config)
        return self.call(["run", "--bundle", str(self.bundle), self.new_id()], cwd=self.bundle)

    def run_ok(self, args: list[str] | None = None) -> str:
        result = self.run(args)
        check(result.returncode == 0, f"run failed: {result.describe()}")
        return result.stdout

    def create(self, container_id: str | None = None, *, write: bool = True) -> tuple[str, CallResult]:
        """`create`, with the container's stdio going to a file so no pipe outlives the call."""
        if write:
            self.write_config()
        container_id = container_id or self.new_id()
        log = self.bundle / f"{container_id}.create.log"
        with open(log, "w") as sink:
            result = self.runtime.call(["create", "--bundle", str(self.bundle), container_id], cwd=self.bundle,
                                       stdout=sink, stderr=subprocess.STDOUT, caller_setup=self.caller_setup)
        return container_id, CallResult(result.returncode, log.read_text(errors="replace"), "")

    def create_ok(self) -> str:
        container_id, result = self.create()
        check(result.returncode == 0, f"create failed: {result.describe()}")
        return container_id

    def start(self, container_id: str) -> CallResult:
        return self.call(["start", container_id])

    def kill(self, container_id: str, signal: str = "KILL") -> CallResult:
        return self.call(["kill", container_id, signal])

    def delete(self, container_id: str, *, force: bool = False) -> CallResult:
        return self.call(["delete", *(["--force"] if force else []), container_id])

    def state(self, container_id: str) -> dict:
        result = self.call(["state", container_id])
        check(result.returncode == 0, f"state failed: {result.describe()}")
        try:
            state = json.loads(result.stdout)
        except ValueError as exc:
            raise CaseFailed(f"state printed no JSON: {result.stdout[:200]!r}") from exc
        check(isinstance(state, dict), "state JSON is not an object")
        return state

    def wait_status(self, container_id: str, status: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(container_id)
            if state.get("status") == status:
                return state
            if time.monotonic() > deadline:
                raise CaseFailed(f"status stayed {state.get('status')!r}, expected {status!r}")
            time.sleep(0.02)

    def start_process(self, args: list[str] | None = None, comm: str = "sleep") -> tuple[str, int]:
        """create + start a long-lived process and wait until it has exec'd; returns (id, host pid)."""
        self.config["process"]["args"] = args or ["sleep", "30"]
        container_id = self.create_ok()
        result = self.start(container_id)
        check(result.returncode == 0, f"start failed: {result.describe()}")
        pid = self.state(container_id).get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise CaseFailed(f"state has no usable pid: {pid!r}")
        wait_for_comm(pid, comm)
        return container_id, pid

    # ---- teardown ----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        for container_id in self._ids:
            try:
                self.runtime.call(["delete", "--force", container_id], timeout=10)
            except CaseFailed:
                pass
        for func in reversed(self._cleanups):
            try:
                func()
            except Exception:  # noqa: BLE001 - teardown carries on so later undo steps still run
                pass
        shutil.rmtree(self.bundle, ignore_errors=True)


# ---- reading a process from the host ---------------------------------------------------------------------
def wait_for_comm(pid: int, comm: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    current = ""
    while time.monotonic() < deadline:
        try:
            current = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            raise CaseFailed(f"container process {pid} vanished before it ran {comm}") from None
        if current == comm:
            return
        time.sleep(0.005)
    raise CaseFailed(f"container process {pid} is still {current!r}, never became {comm!r}")


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields
