"""A rootless runtime started by its user inside a user namespace of the user's own, as rootless podman
runs it (euid 0 there, ``USER`` still the user): hints name the user, not the namespace's root."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.rootless


def in_own_user_namespace(directory: Path, runtime: str) -> str:
    wrapper = directory / "in-own-userns"
    wrapper.write_text(f'#!/bin/sh\nexec unshare --user --map-root-user {runtime} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_the_delegation_hint_names_the_user_not_the_namespaces_root(make_bundle, unprivileged_user, test_dir):
    bundle = make_bundle(user=unprivileged_user, args=["sleep", "600"])
    # In the user's namespace its own uid is 0: the container maps that.
    for mapping in ("uidMappings", "gidMappings"):
        bundle.config["linux"][mapping] = [{"containerID": 0, "hostID": 0, "size": 1}]
    runtime = in_own_user_namespace(test_dir, bundle.runtime_path or helpers.runtime_path())
    assert bundle.run("-d", runtime=runtime).returncode == 0
    try:
        name = unprivileged_user.name
        for command in (["update", "--pids-limit", "10", bundle.id], ["pause", bundle.id]):
            result = bundle.runtime(command, runtime=runtime)
            assert result.returncode == 1, result.stderr
            assert f"ocirt cgroup delegate --user {name} " in result.stderr, result.stderr
            assert "--user root" not in result.stderr
    finally:
        bundle.delete(force=True, runtime=runtime)


def test_maps_naming_ids_the_runtimes_namespace_lacks_are_one_line(make_bundle, unprivileged_user, test_dir):
    # The user's real uid is not mapped in its own namespace (only 0 is): a config written for outside.
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    runtime = in_own_user_namespace(test_dir, bundle.runtime_path or helpers.runtime_path())
    result = bundle.run(runtime=runtime)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "internal error" not in result.stderr
    assert "not mapped in the runtime's own user namespace" in result.stderr
    assert not (bundle.root / bundle.id).exists()
