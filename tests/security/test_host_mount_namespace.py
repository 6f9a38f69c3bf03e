"""A config without a mount namespace: the runtime would make the host's / a slave mount, mount the
container's filesystems, pivot_root and mask paths in the host's own mount namespace (runc guards parts
of this: "unable to restrict sys entries without a private MNT namespace"). ocirt refuses such a config
before it forks anything.

As root the runtime runs inside a throwaway mount namespace (``unshare --mount``), so that even a
regression could not touch the machine running the suite."""

from __future__ import annotations

import subprocess
import tempfile

import helpers
import pytest

from security import assert_clear_error, assert_nothing_left


@pytest.mark.parametrize("masked", [True, False], ids=["masked-paths", "no-masked-paths"])
def test_a_config_without_a_mount_namespace_is_refused(make_bundle, user, masked):
    bundle = make_bundle(user=user, args=["true"])
    linux = bundle.config["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "mount"]
    if not masked:
        linux["maskedPaths"], linux["readonlyPaths"] = [], []
    bundle.config["root"]["readonly"] = False
    mounts_before = helpers.mountinfo()
    if user is None:
        bundle.write()
        command = ["unshare", "--mount", "--propagation", "private", bundle.runtime_path or helpers.runtime_path(),
                   "--root", str(bundle.root), "run", "--bundle", str(bundle.path), bundle.id]
        with tempfile.TemporaryFile("w+") as err:
            returncode = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                        env=helpers.base_env(), timeout=30).returncode
            err.seek(0)
            result = subprocess.CompletedProcess(command, returncode, "", err.read())
    else:
        result = bundle.run()
    assert_clear_error(result, "mount namespace")
    assert helpers.mountinfo() == mounts_before
    assert_nothing_left(bundle)
