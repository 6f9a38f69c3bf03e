"""Regression tests for known container-runtime escapes, one module per escape class (issue 7).

Each test builds a hostile bundle or runs a hostile container process through the runtime's command line
and checks two things: the host is untouched (a canary owned by the test keeps its content and gets no
mount), and the runtime either refuses with a clear one-line error, leaving nothing behind, or runs the
container with the attack confined to it. ``docs/security.md`` maps each class to its test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import helpers

CANARY_TEXT = "canary: the host's original content\n"


@dataclass
class Canary:
    """A host directory (outside every bundle) holding one file, writable by everyone so that a rootless
    runtime that was fooled into touching it would succeed: its content, listing and mounts are what the
    tests compare before and after an attack."""

    directory: Path
    file: Path
    secret: str
    snapshot: dict[str, str] = field(default_factory=dict)

    def take_snapshot(self) -> dict[str, str]:
        """Name → sha256 of content ('<dir>' or '-> target' for the others), for every entry."""
        entries = {}
        for entry in sorted(self.directory.iterdir()):
            if entry.is_symlink():
                entries[entry.name] = "-> " + os.readlink(entry)
            elif entry.is_dir():
                entries[entry.name] = "<dir>"
            else:
                entries[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()
        return entries

    def mounts(self) -> list[str]:
        """Mount points of the host's mount namespace on or below the canary."""
        return helpers.mounts_mentioning([self.directory])

    def assert_untouched(self) -> None:
        assert self.mounts() == [], f"a mount appeared on the host canary: {self.mounts()}"
        assert self.file.read_text() == CANARY_TEXT, f"the host canary file was changed: {self.file.read_text()!r}"
        assert self.take_snapshot() == self.snapshot, "the host canary directory was changed"


@contextlib.contextmanager
def host_canary(leak_tracker: helpers.LeakTracker) -> Iterator[Canary]:
    """A fresh canary under /tmp; any process or mount left on it counts as a leak of the test."""
    directory = Path(f"/tmp/{helpers.ID_PREFIX}canary-{secrets.token_hex(4)}")
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    secret = f"host-secret-{secrets.token_hex(8)}"
    file = directory / "file"
    file.write_text(CANARY_TEXT)
    os.chmod(file, 0o666)
    (directory / "secret").write_text(secret + "\n")
    os.chmod(directory / "secret", 0o644)
    canary = Canary(directory=directory, file=file, secret=secret)
    canary.snapshot = canary.take_snapshot()
    leak_tracker.watched_paths.append(directory)
    try:
        yield canary
    finally:
        for point in sorted(canary.mounts(), key=len, reverse=True):
            helpers.unmount(point)
        shutil.rmtree(directory, ignore_errors=True)


def assert_clear_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """The runtime failed with a message people can read: no traceback, no 'internal error', the
    error on one line (log lines before it are fine), containing each of ``expected``."""
    assert result.returncode != 0, f"the runtime accepted it:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "the runtime failed without saying why"
    for text in expected:
        assert text in lines[-1], f"{text!r} not in the error {lines[-1]!r}"


def assert_nothing_left(bundle: helpers.Bundle) -> None:
    """No state dir, cgroup, process or bundle mount remains for ``bundle``'s container."""
    assert not (bundle.root / bundle.id).exists(), f"state dir {bundle.root / bundle.id} remains"
    assert bundle.cgroup_dirs() == [], f"cgroups remain: {bundle.cgroup_dirs()}"
    assert helpers.processes_using([bundle.path, bundle.rootfs]) == {}, "a process of the container remains"
    assert helpers.mounts_mentioning([bundle.path]) == [], "a mount of the bundle remains"


def own_rootfs_bundle(make_bundle, user: helpers.UnprivilegedUser | None, **kwargs) -> helpers.Bundle:
    """A bundle with a private rootfs the test may change; a rootless user owns it, as a rootless user's
    unpacked image would be (so the runtime, not file permissions, is what stops an attack)."""
    bundle = make_bundle(user=user, own_rootfs=True, **kwargs)
    if user is not None:
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    return bundle


def without_mount(config: dict, destination: str) -> dict:
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != destination]
    return config
