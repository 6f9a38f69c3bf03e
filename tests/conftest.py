"""Fixtures shared by every test directory. The machinery behind them is in ``tests/helpers.py``.

Fixtures (lazy: a unit test that asks for none of them creates nothing but the session's directory
/tmp/ocirt-harness-<token>, made at start when running as root so concurrent sessions know each other):
  make_bundle(...)      -> helpers.Bundle   a fresh bundle on the shared busybox rootfs, unique id
  runtime(args, ...)    -> CompletedProcess  run the runtime under test with this test's --root
  runtime_root          -> Path             this test's --root (for root)
  container_id          -> str              a fresh ``ocirt-test-<hex>`` id
  test_dir              -> Path             a per-test directory every test user can traverse
  unprivileged_user     -> UnprivilegedUser  session-wide account, no subordinate ids
  subid_user            -> UnprivilegedUser  session-wide account with 65536 subuids/subgids
  busybox_rootfs        -> Path             the session's shared rootfs: never write into it
  leak_tracker          -> LeakTracker      register extra paths/ids for the leak check
and an autouse leak check after every test that used any of them (or called helpers.run_runtime); after
every test at all, the host's /dev nodes (helpers.HOST_DEV_NODES) must be as they were when it began.
Markers: ``rootless`` (runs as a test user), ``engines`` (drives podman/containerd/docker), ``slurm`` (a
one-node Slurm cluster, tests/slurm), ``v2host`` (runs in the cgroup v2 guest).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import helpers  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rootless: runs the runtime as an unprivileged test user")
    config.addinivalue_line("markers", "engines: drives podman/containerd/docker (needs `scripts/bootstrap "
                                       "--engines`; .ci/run runs these too)")
    config.addinivalue_line("markers", "v2host: runs in the cgroup v2 + systemd guest (tests/v2host need it, tests/cgroups run on every host); `scripts/test --v2` "
                                       "runs these in the QEMU guest scripts/v2host boots (.ci/run does too)")
    config.addinivalue_line("markers", "slurm: drives a one-node Slurm 22.05 cluster (needs `scripts/bootstrap "
                                       "--engines`, which runs scripts/slurm-setup)")


_cgroups_at_start: set[Path] = set()
_session_state: HarnessSession | None = None


def _shared_session() -> HarnessSession:
    global _session_state
    if _session_state is None:
        _session_state = HarnessSession()
    return _session_state


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        _cgroups_at_start.update(helpers.suite_cgroup_dirs())
        # Creating the base dir writes the pid file that tells other sessions this token is alive.
        _shared_session().base  # noqa: B018
        reaped = helpers.reap_stale_sessions()
        if reaped:
            print(f"ocirt harness: cleaned up after dead test sessions {', '.join(reaped)}", file=sys.stderr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Lists any ``ocirt-test*`` cgroup that appeared during the session and is still there, whichever
    test module made it. With OCIRT_TEST_STRICT_CGROUPS=1 (set by scripts/test) that fails the run.

    Nothing is removed here: another session running at the same time may own the directory (its name
    then carries that session's token, and it is not even listed); this session's own ids were already
    removed by the session fixture."""
    if os.geteuid() != 0:
        return
    others = helpers.live_session_tokens()
    leftovers = sorted(d for d in helpers.suite_cgroup_dirs() - _cgroups_at_start
                       if d.name != helpers.CGROUP_PARENT and not any(t in d.name for t in others))
    if not leftovers:
        return
    strict = os.environ.get("OCIRT_TEST_STRICT_CGROUPS") == "1"
    print(f"\nocirt harness: {len(leftovers)} ocirt-test* cgroup dir(s) appeared during the session and "
          f"remain{' (failing the run)' if strict else ''}:", file=sys.stderr)
    for directory in leftovers:
        print(f"  {directory}", file=sys.stderr)
    if strict:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_report_header(config: pytest.Config) -> str:
    return f"ocirt harness: runtime {helpers.runtime_path()}, session token {helpers.SESSION_TOKEN}"


class HarnessSession:
    """Objects that live for the whole session: a world-traversable base directory, the shared rootfs,
    the test users, and the list of suite cgroups that existed before we started."""

    def __init__(self) -> None:
        self._base: Path | None = None
        self._rootfs: Path | None = None
        self._users: dict[str, helpers.UnprivilegedUser] = {}
        self._user_runtimes: dict[int, str] = {}
        self.cgroups_before = set(_cgroups_at_start)
        self._test_counter = 0

    @property
    def base(self) -> Path:
        if self._base is None:
            # Not pytest's tmp_path: that lives under a 0700 directory test users cannot traverse.
            self._base = helpers.world_reachable_dir(helpers.session_dir())
            (self._base / helpers.SESSION_PID_FILE).write_text(helpers.process_identity(os.getpid()))
        return self._base

    def rootfs(self) -> Path:
        if self._rootfs is None:
            from ocirt.bundle import build_rootfs

            self._rootfs = build_rootfs(self.base / "rootfs")
        return self._rootfs

    def user(self, kind: str) -> helpers.UnprivilegedUser:
        if os.geteuid() != 0:
            pytest.skip("creating test users needs root")
        if kind not in self._users:
            self._users[kind] = helpers.create_user(subids=65536 if kind == "subid" else 0)
        return self._users[kind]

    def runtime_for(self, user: helpers.UnprivilegedUser | None) -> str:
        """The runtime path ``user`` can execute. A checkout under a private directory (e.g. /root) is
        out of a test user's reach; then the user runs a copy of the launcher and package instead."""
        runtime = helpers.runtime_path()
        if user is None or helpers.can_reach(runtime, user.uid, user.gid):
            return runtime
        if user.uid not in self._user_runtimes:
            source = Path(os.path.realpath(runtime))
            if source != helpers.REPO / "bin" / "ocirt":
                pytest.fail(f"test user {user.name} cannot execute {runtime}: make it world-executable")
            copy = self.base / "runtime-copy"
            if not copy.exists():
                for part in ("bin", "ocirt", "schemas"):
                    if (helpers.REPO / part).exists():
                        shutil.copytree(helpers.REPO / part, copy / part,
                                        ignore=shutil.ignore_patterns("__pycache__"))
                subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
            self._user_runtimes[user.uid] = str(copy / "bin" / "ocirt")
        return self._user_runtimes[user.uid]

    def next_test_dir(self) -> Path:
        self._test_counter += 1
        return helpers.world_reachable_dir(self.base / f"t{self._test_counter:05d}")

    def close(self) -> list[str]:
        problems = []
        for user in self._users.values():
            helpers.remove_user(user)
        if os.geteuid() == 0:
            # Ours are the ids with this session's token, and the bare parent of relative cgroupsPaths
            # when it is empty; another session's cgroups (same machine, same prefix) stay untouched.
            mine = helpers.ID_PREFIX + helpers.SESSION_TOKEN
            suite = sorted(helpers.suite_cgroup_dirs(), key=lambda p: len(p.parts), reverse=True)
            for directory in suite:
                if directory.name.startswith(mine) and directory not in self.cgroups_before:
                    if directory.exists() and not helpers.remove_cgroup(directory):
                        problems.append(f"could not remove cgroup {directory}")
                elif directory.name == helpers.CGROUP_PARENT:
                    # Only succeeds when empty, i.e. when no session has a container below it.
                    with contextlib.suppress(OSError):
                        directory.rmdir()
        if self._base is not None:
            for point in sorted(helpers.mounts_mentioning([self._base]), key=len, reverse=True):
                problems.append(f"mount {point} remained at session end")
                helpers.unmount(point)
            shutil.rmtree(self._base, ignore_errors=True)
        return problems


class Harness:
    """Per-test state: a lazily created directory, the roots and bundles of this test, and its leak
    tracker."""

    def __init__(self, session: HarnessSession, tracker: helpers.LeakTracker) -> None:
        self.session = session
        self.tracker = tracker
        self._dir: Path | None = None
        self._roots: dict[int | None, Path] = {}

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = self.session.next_test_dir()
        return self._dir

    def root_for(self, user: helpers.UnprivilegedUser | None = None) -> Path:
        """The --root for runs as ``user`` (or root): private to its owner, as a runtime expects."""
        key = user.uid if user else None
        if key not in self._roots:
            root = self.dir / (f"root-{user.uid}" if user else "root")
            root.mkdir(mode=0o700)
            if user is not None:
                os.chown(root, user.uid, user.gid)
            self._roots[key] = root
            self.tracker.roots[root] = user
        return self._roots[key]

    def make_bundle(self, *, args: list[str] | None = None, rootless: bool = False,
                    user: helpers.UnprivilegedUser | None = None, terminal: bool = False,
                    own_rootfs: bool = False, cgroups: bool = True,
                    container_id: str | None = None) -> helpers.Bundle:
        if rootless and user is None:
            user = self.session.user("plain")
        if user is None and os.geteuid() != 0:
            pytest.skip("runs a rootful container: needs root")
        container_id = container_id or helpers.new_container_id()
        bundle = helpers.build_bundle(self.dir / f"bundle-{container_id}", container_id=container_id,
                                      root=self.root_for(user), rootfs=self.session.rootfs(), args=args,
                                      user=user, terminal=terminal, own_rootfs=own_rootfs, cgroups=cgroups)
        bundle.runtime_path = self.session.runtime_for(user)
        self.tracker.add_bundle(bundle)
        return bundle

    def runtime(self, args, *, user: helpers.UnprivilegedUser | None = None, **kwargs):
        kwargs.setdefault("root", self.root_for(user))
        kwargs.setdefault("runtime", self.session.runtime_for(user))
        return helpers.run_runtime(args, user=user, **kwargs)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def harness_session() -> Iterator[HarnessSession]:
    global _session_state
    session = _shared_session()
    yield session
    problems = session.close()
    _session_state = None
    if problems:
        print("\nocirt harness cleanup at session end:\n  " + "\n  ".join(problems), file=sys.stderr)


@pytest.fixture(autouse=True)
def harness(harness_session: HarnessSession) -> Iterator[Harness]:
    """Every test gets one; it costs nothing until the test builds a bundle or runs the runtime. After
    the test it fails the test if a state dir, process, mount or cgroup outlived it (and removes them)."""
    tracker = helpers.LeakTracker()
    tracker.activate()
    state = Harness(harness_session, tracker)
    try:
        yield state
    finally:
        tracker.deactivate()
    leaks = tracker.check_and_clean()
    state.close()
    if leaks:
        pytest.fail("the test leaked:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture
def leak_tracker(harness: Harness) -> helpers.LeakTracker:
    return harness.tracker


@pytest.fixture
def make_bundle(harness: Harness):
    """``make_bundle(*, args=None, rootless=False, user=None, terminal=False, own_rootfs=False,
    cgroups=True, container_id=None) -> Bundle``."""
    return harness.make_bundle


@pytest.fixture
def runtime(harness: Harness):
    """``runtime(args, *, user=None, root=<this test's root for user>, env=None, input=None, timeout=30,
    check=False, ...) -> CompletedProcess``."""
    return harness.runtime


@pytest.fixture
def runtime_root(harness: Harness) -> Path:
    return harness.root_for(None)


@pytest.fixture
def test_dir(harness: Harness) -> Path:
    return harness.dir


@pytest.fixture
def container_id(harness: Harness) -> str:
    container_id = helpers.new_container_id()
    harness.tracker.container_ids.add(container_id)
    return container_id


@pytest.fixture(scope="session")
def busybox_rootfs(harness_session: HarnessSession) -> Path:
    return harness_session.rootfs()


@pytest.fixture(scope="session")
def unprivileged_user(harness_session: HarnessSession) -> helpers.UnprivilegedUser:
    return harness_session.user("plain")


@pytest.fixture(scope="session")
def subid_user(harness_session: HarnessSession) -> helpers.UnprivilegedUser:
    return harness_session.user("subid")
