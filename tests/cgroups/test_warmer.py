"""The v1 migration warmer: create's background self-migration that pays the kernel's first-migration
wait while the runtime plans (ocirt.cgroups.v1.MigrationWarmer, docs/performance.md). Its gain is a
time and is measured by `python -m bench`, not here; these tests check it is harmless: the kernel
accepts the writes, nothing moves, the thread is gone once stop() returns, a refused file ends it."""

from __future__ import annotations

import _thread
import os
import time

import pytest

from ocirt import cgroups
from ocirt.cgroups import v1

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_the_warmer_migrates_the_runtime_into_its_own_cgroup_only():
    if not cgroups.mounts().v1:
        pytest.skip("v1 only: v2 needs no warming")
    before = open("/proc/self/cgroup").read()
    threads = _thread._count()
    warmer = cgroups.warm_migrations(rootless=False)
    assert warmer is not None
    time.sleep(0.05)
    warmer.stop()
    # The kernel accepted the self-migrations (a wrong file would give none) and moved nothing.
    assert warmer.writes >= 2
    assert open("/proc/self/cgroup").read() == before
    deadline = time.monotonic() + 1
    while _thread._count() > threads and time.monotonic() < deadline:
        time.sleep(0.001)
    assert _thread._count() == threads
    warmer.stop()  # a second stop is harmless


def test_a_file_the_kernel_refuses_ends_the_warmer(tmp_path):
    warmer = v1.MigrationWarmer(str(tmp_path / "no-such-dir" / "cgroup.procs"))
    warmer.stop()
    assert warmer.writes == 0


def test_rootless_creates_do_not_warm():
    assert cgroups.warm_migrations(rootless=True) is None
