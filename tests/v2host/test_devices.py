"""Device rules on cgroup v2 in a real container: the eBPF program denies what the rules deny, and an
update replaces it."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import cgroup_dir


def test_without_device_rules_a_rootful_container_gets_only_the_default_devices(v2bundle, caller, test_dir):
    """As runc: deny all plus the spec's default devices, attached even when linux.resources names none."""
    if caller.rootless:
        pytest.skip("rootless: no device program (the user namespace forbids mknod, nodes come from the host)")
    disk = os.stat("/tmp").st_dev
    nodes = test_dir / "nodes"
    nodes.mkdir()
    os.mknod(nodes / "disk", 0o600 | 0o060000, os.makedev(os.major(disk), os.minor(disk)))
    bundle = v2bundle(["sh", "-c", "head -c 4 /n/disk >/dev/null; echo rc=$?; echo x > /dev/null && echo null ok"],
                      mounts=[{"destination": "/n", "type": "bind", "source": str(nodes), "options": ["rbind"]}])
    bundle.config["linux"].pop("resources", None)
    bundle.write()
    result = bundle.runtime(["run", "--bundle", str(bundle.path), bundle.id])
    assert result.returncode == 0, result.stderr
    assert "not permitted" in result.stdout + result.stderr and "rc=1" in result.stdout, result
    assert "null ok" in result.stdout, result


def test_device_rules_deny_then_update_allows(v2bundle, caller, test_dir):
    if caller.rootless:
        pytest.skip("rootless: no device program (the user namespace forbids mknod, nodes come from the host)")
    disk = os.stat("/tmp").st_dev
    nodes = test_dir / "nodes"
    nodes.mkdir()
    os.mknod(nodes / "disk", 0o600 | 0o060000, os.makedev(os.major(disk), os.minor(disk)))
    bundle = v2bundle(["sh", "-c", "while :; do sleep 1; done"],
                      resources={"devices": [{"allow": False, "access": "rwm"}]},
                      mounts=[{"destination": "/n", "type": "bind", "source": str(nodes), "options": ["rbind"]}])
    assert bundle.runtime(["run", "-d", "--bundle", str(bundle.path), bundle.id]).returncode == 0
    try:
        denied = bundle.runtime(["exec", bundle.id, "head", "-c", "4", "/n/disk"])
        assert denied.returncode != 0 and "not permitted" in denied.stderr + denied.stdout, denied
        null = bundle.runtime(["exec", bundle.id, "sh", "-c", "echo x > /dev/null && echo ok"])
        assert null.stdout.strip() == "ok", null.stderr
        fd = os.open(cgroup_dir(bundle), os.O_RDONLY | os.O_DIRECTORY)
        from ocirt.cgroups import ebpf

        try:
            before = ebpf.attached(fd)
            rules = test_dir / "rules.json"
            rules.write_text(json.dumps({"devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "b", "major": os.major(disk), "minor": os.minor(disk), "access": "r"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}))
            update = bundle.runtime(["update", "--resources", str(rules), bundle.id])
            assert update.returncode == 0, update.stderr
            after = ebpf.attached(fd)
        finally:
            os.close(fd)
        assert len(before) == len(after) == 1 and before != after
        allowed = bundle.runtime(["exec", bundle.id, "sh", "-c", "head -c 4 /n/disk | wc -c"])
        assert allowed.stdout.strip() == "4", allowed.stderr
        write = bundle.runtime(["exec", bundle.id, "sh", "-c", "echo x > /n/disk"])
        assert write.returncode != 0
    finally:
        bundle.runtime(["delete", "--force", bundle.id])
