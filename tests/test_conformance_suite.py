"""The conformance suite itself: a fast subset must pass on runc, and a broken runtime must be caught."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNC = shutil.which("runc")

pytestmark = [
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the suite drives real containers and needs root"),
]

FAST_SUBSET = ["lifecycle_start_runs_program", "lifecycle_kill_stopped_fails", "state_fields", "process_args",
               "process_capabilities_root", "mounts_order", "seccomp_errno_eperm", "cgroups_memory_limit"]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")


def run_suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformance", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def leftovers() -> tuple[set[str], set[str]]:
    work_dirs = set(glob.glob("/tmp/ocirt-conformance-*"))
    cgroups = set(glob.glob("/sys/fs/cgroup/*/ocirt-conf-*"))
    return work_dirs, cgroups


def test_fast_subset_passes_on_runc_and_cleans_up() -> None:
    before = leftovers()
    args = [arg for name in FAST_SUBSET for arg in ("-k", name)]
    result = run_suite("--runtime", RUNC, "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    statuses = {r["name"]: r["status"] for r in report["results"]}
    assert set(statuses) == set(FAST_SUBSET)
    assert all(status == "PASS" for status in statuses.values()), report["results"]
    assert report["summary"] == f"{len(FAST_SUBSET)} passed, 0 failed, 0 skipped"
    assert leftovers() == before


def test_text_report_ends_with_the_summary_line() -> None:
    result = run_suite("--runtime", "runc", "-k", "process_env", "-k", "hostname")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "2 passed, 0 failed, 0 skipped"
    assert all(re.match(r"^(PASS|FAIL|SKIP) \S+ — .+", line) for line in lines[:-1]), lines
    assert SUMMARY.match(lines[-1])


def test_rootless_subset_passes_on_runc() -> None:
    result = run_suite("--runtime", RUNC, "--rootless", "-k", "process_umask", "-k", "cgroups_pids_limit",
                       "-k", "user_namespace_mappings")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SKIP cgroups_pids_limit — rootless:" in result.stdout
    assert result.stdout.splitlines()[-1] == "2 passed, 0 failed, 1 skipped"


def test_a_runtime_that_breaks_a_rule_fails_the_case(tmp_path: Path) -> None:
    # runc with kill turned into a silent success: signalling a stopped container no longer errors.
    broken = tmp_path / "runc-kill-always-succeeds"
    broken.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = kill ] && exit 0; done\nexec {RUNC} "$@"\n')
    broken.chmod(0o755)
    result = run_suite("--runtime", str(broken), "-k", "lifecycle_kill_stopped_fails")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL lifecycle_kill_stopped_fails — kill of a stopped container succeeded" in result.stdout
    assert result.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 skipped"


def test_an_unknown_runtime_is_refused() -> None:
    result = run_suite("--runtime", "/nonexistent/runtime")
    assert result.returncode == 2
    assert "is not an executable" in result.stderr


def test_every_case_names_its_rule_and_section() -> None:
    sys.path.insert(0, str(REPO))
    from conformance import all_cases

    cases = all_cases()
    assert len(cases) >= 60
    for case in cases:
        assert re.match(r"^[a-z0-9-]+\.md(#[a-z0-9-]+)?$", case.section), case
        assert case.rule and '"' not in case.rule, case
