"""Which libseccomp binding ocirt uses, and what a pip install (no Debian site) is told.

Debian's python3-seccomp and PyPI's pyseccomp (the ``ocirt[seccomp]`` extra) must build the same BPF
from the same profile. An interpreter that has neither (a plain ``pip install ocirt``) must say so in
``features`` and ``--version`` instead of claiming seccomp support. No root needed: nothing is loaded.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ocirt.linux import seccomp as oseccomp

REPO = Path(__file__).resolve().parents[2]

PROFILES = [
    {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
     "syscalls": [
         {"names": ["read", "write", "openat", "close", "mmap", "clone3", "socketcall", "no_such_call"],
          "action": "SCMP_ACT_ALLOW"},
         {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
         {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
          "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
         {"names": ["fchmod"], "action": "SCMP_ACT_ALLOW",
          "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_GE"}, {"index": 1, "value": 9, "op": "SCMP_CMP_LT"}]},
         {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
         {"names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 3},
         {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"}, {"names": ["tkill"], "action": "SCMP_ACT_KILL"},
         {"names": ["uname"], "action": "SCMP_ACT_LOG"}, {"names": ["getppid"], "action": "SCMP_ACT_TRAP"},
         {"names": ["ioctl"], "action": "SCMP_ACT_NOTIFY"},
     ]},
    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO"}]},
    {"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
     "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},
]


@pytest.mark.parametrize("profile", PROFILES, ids=["many-rules", "deny-mkdir", "other-arches"])
def test_pyseccomp_builds_the_same_program_as_debians_binding(profile):
    debian = pytest.importorskip("seccomp", reason="Debian's python3-seccomp is not installed")
    pypi = pytest.importorskip("pyseccomp", reason="pyseccomp (ocirt[seccomp]) is not installed")
    assert "dist-packages" in debian.__file__ and pypi.__name__ == "pyseccomp"
    ours = oseccomp._build(profile, debian)
    theirs = oseccomp._build(profile, pypi)
    assert ours == theirs and len(ours[0]) > 0


def pip_like(*extra: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The CLI in an interpreter that sees the checkout, the standard library and ``extra`` only: no
    Debian site, as after `pip install` into a venv made without --system-site-packages."""
    program = (f"import sys\nsys.path[:0] = [{str(REPO)!r}]\nsys.path += {list(extra)!r}\n"
               "from ocirt.cli import main\nsys.exit(main())\n")
    return subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", program, *args], capture_output=True, text=True,
                          timeout=60)


def pyseccomp_dir() -> str:
    pypi = pytest.importorskip("pyseccomp", reason="pyseccomp (ocirt[seccomp]) is not installed")
    return str(Path(pypi.__file__).parent)


def test_without_a_binding_features_and_version_say_seccomp_is_off():
    features = pip_like(args=["features"])
    assert features.returncode == 0, features.stderr
    assert json.loads(features.stdout)["linux"]["seccomp"] == {"enabled": False}
    version = pip_like(args=["--version"])
    assert version.returncode == 0
    (line,) = [x for x in version.stdout.splitlines() if x.startswith("libseccomp: ")]
    assert "no Python binding" in line and "python3-seccomp" in line and "pyseccomp" in line


def test_with_pyseccomp_alone_seccomp_is_on():
    features = pip_like(pyseccomp_dir(), args=["features"])
    assert features.returncode == 0, features.stderr
    seccomp = json.loads(features.stdout)["linux"]["seccomp"]
    assert seccomp["enabled"] is True and "SCMP_ACT_NOTIFY" in seccomp["actions"]
    version = pip_like(pyseccomp_dir(), args=["--version"])
    assert [x for x in version.stdout.splitlines() if x.startswith("libseccomp: ")] == \
        [f"libseccomp: {oseccomp.libseccomp_version()}"]


def test_the_debian_site_gives_seccomp_too():
    """The launcher's own path (bin/ocirt adds Debian's dist-packages): enabled."""
    done = subprocess.run([str(REPO / "bin" / "ocirt"), "features"], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["linux"]["seccomp"]["enabled"] is True
