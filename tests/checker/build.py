"""Build the static checker program (``checker.c``) and bind it into test containers.

The binary is compiled once per test session into the session's directory (removed at session end) with
``gcc -static``: Debian's ``gcc`` and ``libc6-dev`` (which ships the static ``libc.a``). Without them the
tests that need the checker skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent / "checker.c"
# Where the checker's directory appears inside a container: /mnt exists (empty) in the test rootfs, so the
# bind needs no new mount point in the shared rootfs.
MOUNT_DIR = "/mnt"
IN_CONTAINER = f"{MOUNT_DIR}/checker"


def build_checker(directory: Path) -> Path:
    """Compile the checker into ``directory`` (mode 0755, so test users can run it) unless it is there."""
    binary = directory / "checker"
    if binary.exists():
        return binary
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("the checker program needs gcc (Debian packages gcc and libc6-dev)")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    partial = directory / f"checker.{os.getpid()}.tmp"
    result = subprocess.run([compiler, "-static", "-O2", "-Wall", "-o", str(partial), str(SOURCE)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        if "cannot find -lc" in result.stderr:
            pytest.skip("the checker program needs a static libc (Debian package libc6-dev)")
        pytest.fail(f"cannot build the checker program:\n{result.stderr}")
    os.chmod(partial, 0o755)
    os.rename(partial, binary)
    return binary


def mount_checker(config: dict, binary: Path) -> dict:
    """Bind the checker's directory read-only at ``MOUNT_DIR`` in ``config`` (the bundle's config dict)."""
    config.setdefault("mounts", []).append({
        "destination": MOUNT_DIR, "type": "bind", "source": str(binary.parent),
        "options": ["bind", "ro", "nosuid", "nodev"],
    })
    return config


@pytest.fixture(scope="session")
def checker_binary(harness_session) -> Path:
    """The compiled checker, in this session's directory."""
    return build_checker(harness_session.base / "checker")
