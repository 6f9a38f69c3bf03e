"""Session fixtures for the Slurm tests: a one-node cluster (munged, slurmctld, slurmd) whose oci.conf runs
the runtime under test, two unprivileged users, and a bundle of each user's own.

Every test here is marked ``slurm``. Without root, or without Slurm installed (``scripts/slurm-setup``;
CI runs it through ``scripts/test --engines``), or when the cluster does not come up, the tests skip and
say why. After each test, the leak check waits for Slurm's own cleanup (its RunTimeQuery/RunTimeDelete
as root), then checks that no state dir, process, mount or cgroup of the jobs is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
import slurm_harness as sh  # noqa: E402


@pytest.fixture(scope="session")
def slurm_users(harness_session) -> tuple[helpers.UnprivilegedUser, helpers.UnprivilegedUser]:
    """Two different unprivileged users (no subordinate ids: a plain cluster account)."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests start slurmctld and slurmd and create users: they need root")
    return harness_session.user("plain"), harness_session.user("slurm-second")


def _cluster(harness_session, slurm_users, name: str, proctrack: str) -> Iterator[sh.SlurmCluster]:
    missing = sh.missing_tools()
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}): {sh.SETUP_HINT}")
    runtime = os.path.abspath(harness_session.runtime_for(slurm_users[0]))
    cluster = sh.SlurmCluster(helpers.world_reachable_dir(harness_session.base / name), runtime,
                              proctrack=proctrack)
    try:
        cluster.start()
    except (sh.SlurmError, OSError) as err:
        pytest.skip(f"Slurm could not start on this machine: {err}")
    yield cluster
    problems = cluster.close()
    if problems:
        pytest.fail("the Slurm cluster left things behind:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def slurm(harness_session, slurm_users) -> Iterator[sh.SlurmCluster]:
    """The cluster most tests use: ProctrackType=proctrack/linuxproc."""
    yield from _cluster(harness_session, slurm_users, "slurm", "linuxproc")


@pytest.fixture(scope="session")
def slurm_pgid(harness_session, slurm_users) -> Iterator[sh.SlurmCluster]:
    """A second cluster with ProctrackType=proctrack/pgid: Slurm signals only the task's process group."""
    yield from _cluster(harness_session, slurm_users, "slurm-pgid", "pgid")


@pytest.fixture(scope="session")
def bundles(slurm_users, harness_session) -> dict[str, Path]:
    """user name -> that user's bundle (``<runtime> spec --rootless`` and a rootfs of their own)."""
    runtime = os.path.abspath(harness_session.runtime_for(slurm_users[0]))
    base = helpers.world_reachable_dir(harness_session.base / "slurm-bundles")
    return {user.name: sh.make_user_bundle(base / user.name, user, runtime, harness_session.rootfs())
            for user in slurm_users}


@pytest.fixture(autouse=True)
def slurm_leak_check(request, harness) -> Iterator[None]:
    """After a test that used a cluster: let Slurm finish, then hand the jobs' state roots, bundles and
    container ids to the harness's leak check (which runs next and fails the test on a leftover)."""
    clusters = [request.getfixturevalue(name) for name in ("slurm", "slurm_pgid") if name in request.fixturenames]
    users = request.getfixturevalue("slurm_users") if clusters else ()
    user_bundles = request.getfixturevalue("bundles") if clusters else {}
    yield
    unsettled = []
    tracker = harness.tracker
    for cluster in clusters:
        unsettled += cluster.settle(cluster.kill_wait + 30)
        tracker.roots[cluster.state_root(None)] = None
        for user in users:
            tracker.roots[cluster.state_root(user)] = user
            tracker.watched_paths.append(user_bundles[user.name])
        for job in cluster.jobs:
            tracker.container_ids.update({job.container_id(0), job.container_id("batch")})
        cluster.jobs.clear()
    if unsettled:
        pytest.fail("Slurm did not finish the test's jobs:\n  " + "\n  ".join(unsettled), pytrace=False)
