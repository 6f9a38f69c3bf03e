"""Runs a Python program that uses `import ocirt`, as root or as a test user, and reads back what it printed
as JSON. Every program gets the package, the state root of its user (so the leak check sees its containers)
and ids the leak check knows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import helpers
import pytest

PRELUDE = """
import json, os, sys, time, threading
sys.path.insert(0, sys.argv[1])
ROOT, IDS, CGROUP_PARENT = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
ROOTLESS = os.geteuid() != 0
def cgroups_path(cid):
    # Rootful, under the suite's cgroup parent (the session cleanup knows it); rootless, the default.
    return None if ROOTLESS else f"{CGROUP_PARENT}/{cid}"
import ocirt
from ocirt import errors
def report(value):
    print(json.dumps(value), flush=True)
"""


class ApiRunner:
    def __init__(self, harness, user: helpers.UnprivilegedUser | None):
        self.harness = harness
        self.user = user
        self.root = harness.root_for(user)
        runtime = harness.session.runtime_for(user)
        self.package = str(Path(runtime).resolve().parents[1])
        self.runtime = runtime

    def ids(self, count: int) -> list[str]:
        made = [helpers.new_container_id() for _ in range(count)]
        self.harness.tracker.container_ids.update(made)
        return made

    def __call__(self, body: str, *, ids: list[str] | None = None, timeout: float = 90, killed: bool = False) -> list:
        """Run ``body`` after PRELUDE; the list of what it passed to report(). ``killed``: it ends with
        SIGKILL."""
        script = PRELUDE + textwrap.dedent(body)
        env = helpers.base_env(self.user)
        identity: dict = {}
        cwd = None
        if self.user is not None:
            identity = {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
            cwd = str(self.user.home)
        out_path = self.harness.dir / f"api-out-{os.urandom(4).hex()}"
        # Files, not pipes: a container that outlived its sandbox would hold a pipe open.
        with open(out_path, "w+") as out, open(f"{out_path}.err", "w+") as err:
            if self.user is not None:
                os.fchown(out.fileno(), self.user.uid, self.user.gid)
                os.fchown(err.fileno(), self.user.uid, self.user.gid)
            try:
                code = subprocess.run([sys.executable, "-c", script, self.package, str(self.root),
                                       json.dumps(ids or []), helpers.CGROUP_PARENT], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=err, env=env, cwd=cwd, timeout=timeout, **identity).returncode
            except subprocess.TimeoutExpired:
                code = None
            out.seek(0)
            err.seek(0)
            output, errors = out.read(), err.read()
        assert code is not None, f"the program did not finish within {timeout} s; stderr: {errors}"
        assert code == (-9 if killed else 0), f"the program exited {code}; stderr: {errors}"
        return [json.loads(line) for line in output.splitlines() if line]


@pytest.fixture(params=["root", "rootless"])
def api(request, harness):
    """An ApiRunner as root, then as the plain test user (no subordinate ids, no delegated cgroups)."""
    if os.geteuid() != 0:
        pytest.skip("runs programs as root and as a test user: needs root")
    user = harness.session.user("plain") if request.param == "rootless" else None
    return ApiRunner(harness, user)


@pytest.fixture
def root_api(harness):
    if os.geteuid() != 0:
        pytest.skip("rootful containers need root")
    return ApiRunner(harness, None)
