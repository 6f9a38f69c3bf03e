"""The engines on the v2 host with their default configs, driving ocirt: podman (systemd cgroup manager,
rootful and rootless), docker (its default cgroup driver, systemd on v2) and containerd's runc shim with
SystemdCgroup = true. Each runs a container with memory, pids and cpu limits that it reads back inside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from .conftest import MODE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
import engine_harness as eh  # noqa: E402

MiB = 1 << 20
RUNTIME = helpers.runtime_path()
READ_LIMITS = ["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/cpu.max"]
# ctr's default spec mounts no cgroupfs (the CRI plugin adds one) and has no cgroup namespace: with the cgroup2
# mount the test adds, /sys/fs/cgroup is the whole hierarchy (as with runc), and the container's own cgroup is
# the path /proc/self/cgroup names.
READ_OWN_LIMITS = ["sh", "-c", 'cg=/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup); '
                   'cat $cg/memory.max $cg/pids.max $cg/cpu.max']
EXPECTED = [str(64 * MiB), "32", "50000", "100000"]
IMAGE = "localhost/ocirt-v2-busybox:latest"

pytestmark = pytest.mark.skipif(MODE != "v2", reason="the engine smoke tests run on the v2 guest")


def sh(*command: str, timeout: float = 300, env: dict | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def image_tar(harness_session, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("image")
    directory.chmod(0o755)
    return eh.write_rootfs_tar(harness_session.rootfs(), directory / "rootfs.tar")


def test_podman_default_config(image_tar, caller):
    podman = ["podman", "--runtime", RUNTIME]
    assert sh(*podman, "info", "--format", "{{.Host.CgroupManager}}").strip() == "systemd"
    sh(*podman, "import", str(image_tar), IMAGE)
    try:
        out = sh(*podman, "run", "--rm", "--network", "none", "--memory", "64m", "--pids-limit", "32",
                 "--cpus", "0.5", IMAGE, *READ_LIMITS)
        assert out.split() == EXPECTED, out
    finally:
        subprocess.run([*podman, "rmi", "-f", IMAGE], capture_output=True, timeout=120)


@pytest.fixture
def docker(caller):
    if caller.rootless:
        pytest.skip("docker's daemon runs as root")
    Path("/etc/docker").mkdir(exist_ok=True)
    Path("/etc/docker/daemon.json").write_text(json.dumps({"runtimes": {"ocirt": {"path": RUNTIME}}}))
    sh("systemctl", "start", "docker.service")
    yield
    sh("systemctl", "stop", "docker.service", "docker.socket")


def test_docker_default_cgroup_driver(docker, image_tar):
    assert sh("docker", "info", "--format", "{{.CgroupDriver}}").strip() == "systemd"
    sh("docker", "import", str(image_tar), "ocirt-v2-busybox")
    try:
        out = sh("docker", "run", "--rm", "--runtime", "ocirt", "--network", "none", "--memory", "64m",
                 "--pids-limit", "32", "--cpus", "0.5", "ocirt-v2-busybox", *READ_LIMITS)
        assert out.split() == EXPECTED, out
    finally:
        subprocess.run(["docker", "rmi", "-f", "ocirt-v2-busybox"], capture_output=True, timeout=120)


def test_containerd_runc_shim_with_systemd_cgroup(caller, harness_session):
    if caller.rootless:
        pytest.skip("containerd runs as root")
    sh("systemctl", "start", "containerd.service")
    name = helpers.new_container_id()
    try:
        out = sh("ctr", "run", "--rm", "--runc-binary", RUNTIME, "--runc-systemd-cgroup",
                 "--cgroup", f"system.slice:ctr:{name}", "--memory-limit", str(64 * MiB), "--cpus", "0.5",
                 "--mount", "type=cgroup2,src=cgroup2,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec",
                 "--rootfs", str(harness_session.rootfs()), name, *READ_OWN_LIMITS)
        # ctr 1.6 has no pids flag: the scope gets systemd's DefaultTasksMax (runc's too).
        default_tasks = sh("systemctl", "show", "--property=DefaultTasksMax", "--value").strip()
        assert out.split() == [EXPECTED[0], default_tasks, *EXPECTED[2:]], out
    finally:
        subprocess.run(["systemctl", "stop", "containerd.service"], capture_output=True, timeout=120)
    assert not os.path.exists(f"/sys/fs/cgroup/system.slice/ctr-{name}.scope")
