"""A seccomp profile under a pip install: with pyseccomp (the ``ocirt[seccomp]`` extra) it is enforced,
with no binding at all the container is refused with one line that says what to install, and nothing
is left behind. The interpreter sees the checkout, the standard library and (or not) pyseccomp only:
no Debian site, as in a venv made without --system-site-packages. Rootful and rootless."""

from __future__ import annotations

import errno
import secrets
import shutil
from pathlib import Path

import pytest
from security import assert_clear_error, assert_nothing_left

MKDIR_PROBE = "mkdir /tmp/made-by-probe; echo status=$?; [ -d /tmp/made-by-probe ] && echo exists; true"


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


def pip_launcher(directory: Path, package_root: Path, *, with_pyseccomp: bool) -> str:
    site = directory / "pip-site"
    site.mkdir(exist_ok=True)
    if with_pyseccomp:
        pyseccomp = pytest.importorskip("pyseccomp", reason="pyseccomp (ocirt[seccomp]) is not installed")
        shutil.copy(pyseccomp.__file__, site / "pyseccomp.py")
    launcher = directory / ("ocirt-pip-pyseccomp" if with_pyseccomp else "ocirt-pip-bare")
    launcher.write_text(f"#!/usr/bin/python3 -IS\nimport sys\nsys.path[:0] = [{str(package_root)!r}]\n"
                        f"sys.path.append({str(site)!r})\nfrom ocirt.cli import main\nsys.exit(main())\n")
    for path in (site, *site.iterdir(), launcher):
        path.chmod(0o755)
    return str(launcher)


def probe_bundle(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh", "-c", MKDIR_PROBE])
    bundle.config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["mode=1777"]})
    # A syscall name no libseccomp knows (skipped) makes the profile new to the compiled-filter cache,
    # so the binding really has to build it.
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat", f"ocirt_test_{secrets.token_hex(6)}"],
                      "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}],
    }
    return bundle


def test_pyseccomp_alone_enforces_the_profile(make_bundle, user, harness):
    bundle = probe_bundle(make_bundle, user)
    launcher = pip_launcher(harness.dir, Path(bundle.runtime_path).resolve().parents[1], with_pyseccomp=True)
    result = bundle.run(runtime=launcher)
    assert result.returncode == 0, result.stderr
    assert "status=1" in result.stdout and "exists" not in result.stdout, result.stdout
    assert_nothing_left(bundle)


def test_without_a_binding_the_profile_is_refused_clearly(make_bundle, user, harness):
    bundle = probe_bundle(make_bundle, user)
    launcher = pip_launcher(harness.dir, Path(bundle.runtime_path).resolve().parents[1], with_pyseccomp=False)
    result = bundle.run(runtime=launcher)
    assert_clear_error(result, "linux.seccomp needs seccomp", "python3-seccomp", "ocirt[seccomp]")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "made-by-probe" not in result.stdout
    assert_nothing_left(bundle)
