"""Tests for a pure cgroup v2 host with systemd as PID 1: the guest `scripts/v2host` boots.

Everything here is marked ``v2host`` and skips elsewhere. `scripts/test --v2` runs them in the guest twice:
as root (from a system service, so our own cgroup is /system.slice/ocirt-guest-run.service) and as the
lingering user ``tester`` from a transient service in its user manager, where the caller is unprivileged
and the cgroup is what systemd delegated to user@1000.service. The ``caller`` fixture tells which.

``v2run(args, resources=..., cgroups_path=...)`` builds a bundle for the caller (a rootless one as tester),
mounts a fresh cgroup2 at /sys/fs/cgroup inside (the container's own cgroup, through its cgroup namespace)
and runs it to completion.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest

ON_SYSTEMD = os.path.isdir("/run/systemd/system")
# "v2" on a pure v2 host; "v1" where systemd runs on the legacy hierarchy (the guest booted with
# `scripts/v2host run --cgroup v1`), where only the systemd driver's tests apply.
MODE = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"


def pytest_collection_modifyitems(config, items):
    here = str(Path(__file__).parent)
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        item.add_marker(pytest.mark.v2host)
        if not ON_SYSTEMD or (MODE != "v2" and not item.fspath.basename == "test_systemd.py"):
            item.add_marker(pytest.mark.skip(reason="needs a cgroup v2 host with systemd: scripts/test --v2 "
                                                    "boots one"))


@dataclass
class Caller:
    rootless: bool
    user: helpers.UnprivilegedUser | None  # the config's id maps (rootless): ourselves

    @property
    def name(self) -> str:
        return "rootless" if self.rootless else "root"


@pytest.fixture(scope="session")
def caller() -> Caller:
    if os.geteuid() == 0:
        return Caller(False, None)
    entry = pwd.getpwuid(os.geteuid())
    runtime_dir = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{entry.pw_uid}")
    return Caller(True, helpers.UnprivilegedUser(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir),
                                                 runtime_dir))


def own_cgroup() -> str:
    with open("/proc/self/cgroup") as handle:
        return handle.read().strip().split("::", 1)[1]


@pytest.fixture
def v2bundle(harness, caller):
    """``v2bundle(args, *, resources=None, cgroups_path=<relative, unique>|None) -> helpers.Bundle``."""

    def make(args: list[str], *, resources: dict | None = None, cgroups_path: str | None = "",
             mounts: list[dict] | None = None) -> helpers.Bundle:
        container_id = helpers.new_container_id()
        bundle = helpers.build_bundle(harness.dir / f"bundle-{container_id}", container_id=container_id,
                                      root=harness.root_for(None), rootfs=harness.session.rootfs(), args=args,
                                      user=caller.user)
        # The runtime runs as this process; the maps above already name our own ids.
        bundle.user = None
        linux = bundle.config["linux"]
        if cgroups_path is None:
            linux.pop("cgroupsPath", None)
        else:
            linux["cgroupsPath"] = cgroups_path or helpers.cgroups_path(container_id)
        if resources is not None:
            linux["resources"] = resources
        config_mounts = [m for m in bundle.config["mounts"] if m["destination"] != "/sys/fs/cgroup"]
        config_mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup2",
                              "options": ["nosuid", "noexec", "nodev", "rw"]})
        config_mounts.extend(mounts or [])
        if MODE == "v2":
            bundle.config["mounts"] = config_mounts
        bundle.write()
        harness.tracker.add_bundle(bundle)
        return bundle

    return make


def run(bundle: helpers.Bundle, *, timeout: float = 120, global_args: tuple[str, ...] = (),
        ) -> subprocess.CompletedProcess[str]:
    """`ocirt run` to completion; the container's output is in .stdout."""
    return bundle.runtime(["run", "--bundle", str(bundle.path), bundle.id], timeout=timeout,
                          global_args=global_args)


def cgroup_dir(bundle: helpers.Bundle) -> Path:
    """The container's cgroup as the runtime saved it (while it exists)."""
    import json

    state = json.loads((bundle.root / bundle.id / "state.json").read_text())
    paths = state["ocirt"]["cgroup"]["paths"]
    return Path(paths.get("unified") or next(iter(paths.values())))


@pytest.fixture(scope="session")
def probe(tmp_path_factory) -> Path:
    """A directory holding `probe` (tests/v2host/probe.c, built here statically): mount it into a container
    to map huge pages, hold memory or open verbs contexts, which busybox cannot."""
    directory = tmp_path_factory.mktemp("probe")
    directory.chmod(0o755)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(directory / "probe"), str(Path(__file__).with_name("probe.c"))],
                   check=True, capture_output=True, timeout=300)
    return directory


def probe_mount(directory: Path) -> dict:
    return {"destination": "/probe", "type": "bind", "source": str(directory), "options": ["rbind", "ro"]}
