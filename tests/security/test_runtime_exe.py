"""Overwriting the runtime through /proc/<pid>/exe (CVE-2019-5736): while ``exec`` joins a container, a
process of the runtime (here, the host's Python) is visible in the container's pid namespace until it
calls execve. A container process that opens its /proc/<pid>/exe gets a handle on the host's
interpreter, and can write it once the runtime exits. ocirt's processes that enter the container are
not dumpable, so the kernel refuses the open to anyone without CAP_SYS_PTRACE over the host.

The container runs a loop that tries to open (read-only: this test never writes) the exe of every
process it can see but its own, and records every success; ``ocirt exec`` meanwhile runs repeatedly."""

from __future__ import annotations

import hashlib
import os
import time

from security import assert_nothing_left, own_rootfs_bundle

PROBE = r"""
: > /tmp/opened; : > /tmp/rounds
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    # Opened read-only as readlink's stdin, which then names the file it got.
    if t=$(readlink /proc/self/fd/0 2> /dev/null < "$d/exe"); then echo "$p $t" >> /tmp/opened; fi
  done
  echo . >> /tmp/rounds
done
"""

CAP_SYS_PTRACE = "CAP_SYS_PTRACE"


def _all_capabilities(*, held_only: bool) -> list[str]:
    """Every capability the kernel has; with ``held_only``, only those in our own bounding set (a root
    runtime can't grant more than it holds)."""
    from ocirt.linux.capabilities import CAPABILITY_NAMES, last_cap

    with open("/proc/self/status") as f:
        bounding = int(next(line.split()[1] for line in f if line.startswith("CapBnd:")), 16)
    return [CAPABILITY_NAMES[n] for n in range(last_cap() + 1)
            if n in CAPABILITY_NAMES and (not held_only or bounding >> n & 1)]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_runtime_processes_in_the_container_never_expose_their_exe(make_bundle, user):
    interpreter = os.path.realpath("/usr/bin/python3")
    interpreter_digest = _sha256(interpreter)
    bundle = own_rootfs_bundle(make_bundle, user, args=["sh", "-c", PROBE])
    bundle.config["root"]["readonly"] = False
    # Every capability a container can have without owning the host: CAP_SYS_PTRACE is left out as
    # root (with it, nothing stops a container from opening any process), kept as rootless (there it
    # only counts in the container's user namespace, not over the runtime's process).
    caps = [c for c in _all_capabilities(held_only=user is None) if user is not None or c != CAP_SYS_PTRACE]
    bundle.config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    bundle.config["process"]["noNewPrivileges"] = False
    assert bundle.run("-d").returncode == 0
    try:
        deadline = time.monotonic() + 5
        while not (bundle.rootfs / "tmp" / "rounds").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        execs = 0
        started = time.monotonic()
        while execs < 25 and time.monotonic() - started < 20:
            result = bundle.runtime(["exec", bundle.id, "true"])
            assert result.returncode == 0, result.stderr
            execs += 1
        rounds = len((bundle.rootfs / "tmp" / "rounds").read_text().splitlines())
        opened = (bundle.rootfs / "tmp" / "opened").read_text().splitlines()
    finally:
        bundle.delete(force=True)
    assert rounds > 10, "the probe loop barely ran"
    not_the_image = [line for line in opened if not line.endswith(" /bin/busybox")]
    assert not_the_image == [], f"the container opened a runtime process's exe: {not_the_image}"
    assert opened, "the probe could open nothing, not even its own children's exe: it proves nothing"
    assert _sha256(interpreter) == interpreter_digest
    assert_nothing_left(bundle)
