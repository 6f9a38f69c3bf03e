"""The library the CLI and `ocirt.api` share, called again and again from one process: no call may wait on a
lock an earlier call of the same process still holds."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import helpers
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates rootful containers")

# create, then state, start, state, kill, delete in the same process; `ocirt list` from another process
# runs while this one is still alive after its create.
SCRIPT = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from ocirt import container
root, cid, bundle, runtime = sys.argv[2:6]
container.create(container.CreateOptions(root=root, container_id=cid, bundle=bundle))
print(container.state(root, cid)["status"], flush=True)
listed = subprocess.run([runtime, "--root", root, "list", "-q"], capture_output=True, text=True, timeout=10)
print(listed.stdout.strip(), flush=True)
container.start(root, cid)
container.kill(root, cid, 9)
container.delete(root, cid, force=True)
print("deleted", flush=True)
"""


def test_create_then_state_and_list_from_the_same_process(make_bundle, runtime_root):
    bundle = make_bundle(args=["sleep", "30"])
    # Files, not pipes: the container inherits the script's stdio.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            code = subprocess.run([sys.executable, "-c", SCRIPT, str(helpers.REPO), str(runtime_root),
                                   bundle.id, str(bundle.path), helpers.runtime_path()],
                                  stdout=out, stderr=err, timeout=20, stdin=subprocess.DEVNULL).returncode
        except subprocess.TimeoutExpired:
            code = None
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    assert code is not None, f"create followed by state and list deadlocked; output so far {output!r} {errors!r}"
    assert code == 0, errors
    assert output.split() == ["created", bundle.id, "deleted"]
