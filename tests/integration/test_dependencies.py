"""The packages ocirt imports for some features only (jsonschema, pyroute2, libseccomp's binding): built as
the README says, ocirt has what it needs; without one, or with one too old, a command ends with one line
that names what to install, never with ``internal error``.

The situations are real, not mocked: Debian 12's python3-jsonschema 4.10 on the system site is an overlay
of /usr/lib/python3/dist-packages (with jsonschema 4.10.3 from pip) in a private mount namespace, where
scripts/bootstrap and the launcher then run; a missing binding is a tmpfs over that directory; rootless,
the launcher's own venv directory holds the old package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

REPO = helpers.REPO
DIST_PACKAGES = f"/usr/lib/python{sys.version_info[0]}/dist-packages"
SITE = f".venv/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root")


@pytest.fixture(scope="session")
def old_jsonschema(harness_session) -> Path:
    """jsonschema 4.10.3 (Debian 12's version) and what it depends on, installed from the index."""
    target = harness_session.base / "jsonschema-4.10.3"
    if not target.exists():
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                 "--target", str(target), "jsonschema==4.10.3"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"pip could not install jsonschema 4.10.3: {result.stderr}"
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


def launcher_tree(directory: Path, site_packages: Path | None) -> Path:
    """A copy of the launcher and the package whose own venv directory holds exactly ``site_packages``
    (nothing when None): the sys.path the launcher builds from its location."""
    for part in ("bin", "ocirt", "schemas"):
        shutil.copytree(REPO / part, directory / part, ignore=shutil.ignore_patterns("__pycache__"))
    site = directory / SITE
    if site_packages is None:
        site.mkdir(parents=True)
    else:
        shutil.copytree(site_packages, site)
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    os.chmod(directory, 0o755)
    return directory / "bin" / "ocirt"


def in_mount_namespace(directory: Path, setup: str, program: str | Path) -> str:
    """A wrapper that runs ``program`` in a private mount namespace after the shell commands ``setup``."""
    wrapper = directory / "in-namespace"
    wrapper.write_text(f"#!/bin/sh\nexec unshare -m --propagation private sh -ec '{setup}; exec \"$0\" \"$@\"' "
                       f"{program} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def old_jsonschema_on_the_system_site(old: Path) -> str:
    return f"mount -t overlay ocirt-test-old-jsonschema -o lowerdir={old}:{DIST_PACKAGES} {DIST_PACKAGES}"


def break_the_schema(bundle: helpers.Bundle) -> None:
    bundle.config["process"]["user"]["uid"] = "root"
    bundle.write()


def assert_one_line_naming(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "internal error" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@needs_root
def test_bootstrap_builds_a_venv_that_explains_schema_errors_despite_debians_old_jsonschema(
        test_dir, old_jsonschema):
    checkout = test_dir / "checkout"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    in_ns = in_mount_namespace(test_dir, old_jsonschema_on_the_system_site(old_jsonschema), "/bin/bash")
    # Debian's package as the venv's system site sees it.
    seen = subprocess.run([in_ns, "-c", "/usr/bin/python3 -c 'import jsonschema; print(jsonschema.__file__)'"],
                          capture_output=True, text=True)
    assert seen.stdout.startswith(DIST_PACKAGES), seen

    built = subprocess.run([in_ns, str(checkout / "scripts" / "bootstrap")], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr

    bundle = test_dir / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion": "1.3.0", "root": {"path": "rootfs"}, "process": '
                                        '{"cwd": "/", "args": ["true"], "user": {"uid": "root", "gid": 0}}}')
    result = subprocess.run([in_ns, "-c", f"cd {bundle} && {checkout}/bin/ocirt validate"],
                            capture_output=True, text=True)
    assert result.returncode == 1, result
    assert "$.process.user.uid: must be of type integer" in result.stdout, result
    assert "internal error" not in result.stderr


@needs_root
def test_debians_old_jsonschema_on_the_system_site_gives_one_line(make_bundle, test_dir, old_jsonschema):
    # The venv that the old ">=4" built on such a system: nothing of its own, Debian's 4.10 behind it.
    launcher = launcher_tree(test_dir / "tree", None)
    runtime = in_mount_namespace(test_dir, old_jsonschema_on_the_system_site(old_jsonschema), launcher)
    bundle = make_bundle()
    break_the_schema(bundle)
    for command in (["create", "--bundle", bundle.path, bundle.id], ["run", "--bundle", bundle.path, bundle.id]):
        result = bundle.runtime(command, runtime=runtime)
        assert_one_line_naming(result, "config.json: does not match the runtime-spec", "jsonschema >= 4.18",
                               "found 4.10.3", "scripts/bootstrap")
        assert not (bundle.root / bundle.id).exists()
    result = bundle.runtime(["validate", "--bundle", bundle.path], runtime=runtime)
    assert_one_line_naming(result, "jsonschema >= 4.18", "found 4.10.3")


@pytest.mark.rootless
def test_an_old_jsonschema_in_the_venv_gives_one_line_rootless(make_bundle, test_dir, old_jsonschema,
                                                                  unprivileged_user):
    launcher = launcher_tree(test_dir / "tree", old_jsonschema)
    bundle = make_bundle(user=unprivileged_user)
    break_the_schema(bundle)
    result = bundle.runtime(["run", "--bundle", bundle.path, bundle.id], runtime=str(launcher))
    assert_one_line_naming(result, "jsonschema >= 4.18", "found 4.10.3", "scripts/bootstrap")
    assert not (bundle.root / bundle.id).exists()


@pytest.mark.parametrize("user", ["root", "rootless"])
def test_no_jsonschema_at_all_gives_one_line(make_bundle, test_dir, user, request):
    if os.path.exists(f"{DIST_PACKAGES}/jsonschema"):
        pytest.skip("this machine has jsonschema on the system site")
    owner = request.getfixturevalue("unprivileged_user") if user == "rootless" else None
    launcher = launcher_tree(test_dir / "tree", None)
    bundle = make_bundle(user=owner)
    break_the_schema(bundle)
    result = bundle.runtime(["run", "--bundle", bundle.path, bundle.id], runtime=str(launcher))
    assert_one_line_naming(result, "jsonschema >= 4.18", "not importable", "scripts/bootstrap")


def test_no_pyroute2_gives_one_line_before_anything_is_made(make_bundle, test_dir):
    if os.path.exists(f"{DIST_PACKAGES}/pyroute2"):
        pytest.skip("this machine has pyroute2 on the system site")
    launcher = launcher_tree(test_dir / "tree", None)
    bundle = make_bundle()
    bundle.config["linux"]["netDevices"] = {"ocirt-nodev0": {}}
    bundle.write()
    result = bundle.runtime(["run", "--bundle", bundle.path, bundle.id], runtime=str(launcher))
    assert_one_line_naming(result, "linux.netDevices needs pyroute2 >= 0.7", "scripts/bootstrap")
    assert not (bundle.root / bundle.id).exists()


@needs_root
def test_no_seccomp_binding_gives_one_line(make_bundle, test_dir):
    # Neither Debian's binding (the system site hidden) nor pyseccomp (an empty venv beside the launcher).
    runtime = in_mount_namespace(test_dir, f"mount -t tmpfs ocirt-test-no-dist-packages {DIST_PACKAGES}",
                                 launcher_tree(test_dir / "no-binding", None))
    bundle = make_bundle()
    # An errno value of its own, so no compiled program of an earlier run is in the cache.
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mknod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1000 + os.getpid() % 1000}]}
    bundle.write()
    result = bundle.runtime(["run", "--bundle", bundle.path, bundle.id], runtime=runtime)
    assert_one_line_naming(result, "linux.seccomp needs seccomp", "apt-get install python3-seccomp",
                           "pip install 'ocirt[seccomp]'")
    assert not (bundle.root / bundle.id).exists()


def test_the_venv_of_this_checkout_has_everything():
    result = subprocess.run([sys.executable, "-m", "ocirt.deps"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
