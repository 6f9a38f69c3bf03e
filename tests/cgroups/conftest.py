"""Helpers for the cgroup manager tests: unique cgroup prefixes removed after each test, child
processes that wait to be placed in a cgroup before they run, and a throwaway unprivileged user.

Every cgroup a test makes lives under `ocirt-test-cgroups-<hex>` (absolute, or beneath our own
cgroup for relative paths); the `cgroup_prefix` finalizer kills whatever is left inside and removes
it in every hierarchy, so a failing test leaks nothing.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import functools  # noqa: E402

import helpers  # noqa: E402

from ocirt import cgroups  # noqa: E402
from ocirt.cgroups import fs  # noqa: E402
from ocirt.errors import CgroupError  # noqa: E402

MODE = cgroups.detect_mode()


def pytest_collection_modifyitems(config, items):
    # These tests run on every host, the v2 guest too (`scripts/test --v2`); what is v1-only says so.
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.v2host)


# cgroup state changes within a few ms: poll finer than the suite's default.
wait_for = functools.partial(helpers.wait_for, interval=0.01)

PREFIX = "ocirt-test-cgroups-"


def all_hierarchies() -> list[tuple[str, cgroups.Mount]]:
    table = cgroups.mounts()
    found = list(table.v1.items())
    if table.v2 is not None:
        found.append((cgroups.UNIFIED, table.v2))
    return found


def candidate_dirs(name: str) -> list[str]:
    """Where a cgroup named `name` may appear: under each mount root, beneath our own cgroup, and (pure v2,
    where relative paths go beside the caller's cgroup) beneath its parent."""
    own = cgroups.own_cgroups()
    pure_v2 = cgroups.detect_mode() == "v2"
    dirs: list[str] = []
    for key, mount in all_hierarchies():
        own_dir = cgroups._own_dir(mount, own.get(key))
        for base in (mount.mountpoint, own_dir, *([posixpath.dirname(own_dir)] * pure_v2)):
            path = posixpath.join(base, name)
            if path not in dirs:
                dirs.append(path)
    return dirs


def existing_dirs(name: str) -> list[str]:
    return [path for path in candidate_dirs(name) if os.path.isdir(path)]


def force_remove(path: str) -> None:
    """Thaw, SIGKILL every task by pid, then rmdir leaves first."""
    for current, _dirs, _files in os.walk(path, topdown=False):
        for thaw_file, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            with contextlib.suppress(OSError, CgroupError):
                fs.write(current, thaw_file, value)
        for pid in fs.procs_in(current):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    fs.remove_tree(path, timeout=3.0)


@pytest.fixture
def cgroup_prefix() -> Iterator[str]:
    name = PREFIX + secrets.token_hex(4)
    yield name
    leftovers = existing_dirs(name)
    for path in leftovers:
        force_remove(path)
    assert not existing_dirs(name)


@pytest.fixture
def unified_root_restored() -> Iterator[None]:
    """Tests that need a controller on in the cgroup2 root turn it back off afterwards."""
    table = cgroups.mounts()
    if table.v2 is None:
        pytest.skip("no cgroup2 mount")
    before = set((fs.read_or_none(table.v2.mountpoint, "cgroup.subtree_control") or "").split())
    yield
    after = set((fs.read_or_none(table.v2.mountpoint, "cgroup.subtree_control") or "").split())
    for controller in sorted(after - before):
        with contextlib.suppress(Exception):
            fs.write(table.v2.mountpoint, "cgroup.subtree_control", f"-{controller}")


WAIT_THEN_RUN = "import sys\nsys.stdin.readline()\n"


class Child:
    """A Python child that blocks on stdin until released, so the test can place it in a cgroup first."""

    def __init__(self, code: str, **popen):
        self.process = subprocess.Popen([sys.executable, "-I", "-S", "-c", WAIT_THEN_RUN + code],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen)
        self.pid = self.process.pid

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = 20) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def spawn() -> Iterator:
    children: list[Child] = []

    def make(code: str, **popen) -> Child:
        child = Child(code, **popen)
        children.append(child)
        return child

    yield make
    for child in children:
        child.kill()
        for stream in (child.process.stdin, child.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass
class ScratchUser:
    name: str
    uid: int
    gid: int


def _remove_subid_lines(path: str, name: str) -> None:
    try:
        with open(path) as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return
    kept = [line for line in lines if not line.startswith(name + ":")]
    if kept != lines:
        with open(path, "w") as handle:
            handle.writelines(kept)


@pytest.fixture(scope="module")
def test_user() -> Iterator[ScratchUser]:
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    import pwd

    name = "ocirt-tcg" + secrets.token_hex(3)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                    "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                   check=True, capture_output=True, text=True)
    entry = pwd.getpwnam(name)
    user = ScratchUser(name, entry.pw_uid, entry.pw_gid)
    try:
        yield user
    finally:
        for pid_text in os.listdir("/proc"):
            if pid_text.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{pid_text}").st_uid == user.uid:
                        os.kill(int(pid_text), signal.SIGKILL)
        subprocess.run(["userdel", name], capture_output=True, text=True)
        for path in ("/etc/subuid", "/etc/subgid"):
            _remove_subid_lines(path, name)


def run_as(user: ScratchUser, code: str, *args: str, timeout: float = 30,
           cgroup: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run Python `code` as `user` (no supplementary groups), with the repository importable; in the cgroup2
    directory `cgroup` if given (root moves it there first, as systemd starts a user's session in its slice)."""
    prologue = f"import sys\nsys.path.insert(0, {REPO!r})\n"
    command = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--",
               sys.executable, "-I", "-c", prologue + code, *args]
    if cgroup is not None:
        command = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/")
