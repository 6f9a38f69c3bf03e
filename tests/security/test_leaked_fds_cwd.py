"""Leaked file descriptors and ``cwd=/proc/self/fd/N`` (CVE-2024-21626): a directory fd of the host that
is still open in the container's process when it changes directory (leaked by the caller, or the
runtime's own) puts the process's cwd on the host, and ``..`` from there walks the host's tree. ocirt
changes directory after pivot_root, closes everything but 0-2 and the fds it was asked to pass, and
resolves the cwd inside the container."""

from __future__ import annotations

import os
import subprocess
import tempfile

import helpers
import pytest

from security import Canary, assert_clear_error, assert_nothing_left

FD_NUMBERS = [3, 4, 5, 6, 7, 8, 9, 10, 15]


def runtime_with_leaks(bundle: helpers.Bundle, args: list, leaked: dict[int, int],
                       ) -> subprocess.CompletedProcess[str]:
    """Run the runtime with ``leaked`` (fd number in the runtime → our fd) open and inheritable, as a
    careless engine would."""
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), *map(str, args)]

    def place() -> None:
        for target, source in leaked.items():
            os.dup2(source, target, inheritable=True)

    identity: dict = {}
    if bundle.user is not None:
        identity = {"user": bundle.user.uid, "group": bundle.user.gid, "extra_groups": [],
                    "cwd": bundle.user.home}
    bundle.write()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              env=helpers.base_env(bundle.user), preexec_fn=place, pass_fds=tuple(leaked),
                              timeout=30, **identity)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())


def escape_probe(canary: Canary) -> list[str]:
    climb = "../" * 12
    return ["sh", "-c", f"pwd; ls; cat secret {climb}{str(canary.directory).lstrip('/')}/secret; "
                        f"ls {climb}tmp | head -c 2000; true"]


class LeakedHostDirs:
    """The host's / and the canary directory, open as directories, to be leaked into the runtime."""

    def __init__(self, canary: Canary):
        self.root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        self.canary = os.open(canary.directory, os.O_RDONLY | os.O_DIRECTORY)

    def at(self, numbers: list[int]) -> dict[int, int]:
        return {n: (self.canary if i % 2 else self.root) for i, n in enumerate(numbers)}

    def close(self) -> None:
        os.close(self.root)
        os.close(self.canary)


def assert_confined(result: subprocess.CompletedProcess[str], canary: Canary) -> None:
    if result.returncode != 0 and not result.stdout:
        assert_clear_error(result)
        return
    assert canary.secret not in result.stdout, "the process read a host file through its cwd"
    assert canary.directory.name not in result.stdout, "the process listed the host's /tmp"


@pytest.mark.parametrize("fd", FD_NUMBERS)
def test_run_with_cwd_on_a_leaked_or_internal_fd_stays_inside(make_bundle, user, canary, fd):
    bundle = make_bundle(user=user, args=escape_probe(canary))
    bundle.config["process"]["cwd"] = f"/proc/self/fd/{fd}"
    leaks = LeakedHostDirs(canary)
    try:
        result = runtime_with_leaks(bundle, ["run", "--bundle", bundle.path, bundle.id], leaks.at([3, 4, 9]))
    finally:
        leaks.close()
    assert_confined(result, canary)
    bundle.delete(force=True)
    assert_nothing_left(bundle)


def test_exec_with_cwd_on_a_leaked_or_internal_fd_stays_inside(make_bundle, user, canary):
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    leaks = LeakedHostDirs(canary)
    try:
        for fd in FD_NUMBERS:
            for preserve in ([], ["--preserve-fds", "7"]):
                result = runtime_with_leaks(
                    bundle, ["exec", *preserve, "--cwd", f"/proc/self/fd/{fd}", bundle.id, *escape_probe(canary)],
                    leaks.at([3, 4, 9]))
                # Even host directory fds the caller asked to pass (--preserve-fds) are no way out
                # through the cwd: the process may use them, but the runtime never follows them.
                assert_confined(result, canary)
    finally:
        leaks.close()
        bundle.delete(force=True)
    assert_nothing_left(bundle)
