"""Device cgroup rules (issue 16 item 1): `linux.devices` makes nodes, only `linux.resources.devices` grants
access, in its order, after a deny-all and before the spec's default devices, as runc does.

At 10b516e every `linux.devices` entry added an allow rule after the config's own, so a node listed as a
device overrode a deny-all: with /dev/kmsg listed and every device denied, the container could write the
host's kernel log. runc 1.1.5 gets EPERM on the same bundle. Opening for writing is enough to show the
rule (nothing is written to the kernel log).
"""

from __future__ import annotations

import json

import helpers
import pytest

from security import assert_nothing_left

pytestmark = pytest.mark.skipif(not (helpers.CGROUP_ROOT / "devices" / "devices.list").exists(),
                                reason="needs the cgroup v1 devices controller")

KMSG = {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o644, "uid": 0, "gid": 0}
DENY_ALL = {"allow": False, "access": "rwm"}
PROBE = ("if (exec 3> /dev/kmsg) 2> /dev/null; then echo kmsg=open; else echo kmsg=denied; fi; "
         "(exec 3> /dev/null) && echo null=open")


def probe(make_bundle, resources_devices: list[dict] | None, devices: list[dict]) -> str:
    bundle = make_bundle(args=["sh", "-c", PROBE])
    linux = bundle.config["linux"]
    linux["devices"] = devices
    resources = linux.setdefault("resources", {})
    if resources_devices is None:
        resources.pop("devices", None)
    else:
        resources["devices"] = resources_devices
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert_nothing_left(bundle)
    return result.stdout


def test_a_listed_device_gets_no_access_past_a_deny_all(make_bundle):
    out = probe(make_bundle, [DENY_ALL], [KMSG])
    assert "kmsg=denied" in out, out
    # The default devices stay usable: they are allowed after the config's rules.
    assert "null=open" in out, out


def test_without_device_rules_only_the_default_devices_are_allowed(make_bundle):
    assert "kmsg=denied" in probe(make_bundle, None, [KMSG])


def test_resources_devices_grant_access_in_their_order(make_bundle):
    allow = {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rw"}
    assert "kmsg=open" in probe(make_bundle, [DENY_ALL, allow], [KMSG])
    # A later deny takes back what an earlier allow gave.
    deny_write = {"allow": False, "type": "c", "major": 1, "minor": 11, "access": "w"}
    assert "kmsg=denied" in probe(make_bundle, [DENY_ALL, allow, deny_write], [KMSG])


def test_a_default_device_listed_in_linux_devices_keeps_its_access(make_bundle):
    # runc 1.1.5 drops its default rule for a listed /dev/null and then fails to start ("error reopening
    # /dev/null inside container"); the spec promises the default devices whatever the list says.
    null = {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 0, "gid": 0}
    assert "null=open" in probe(make_bundle, [DENY_ALL], [null])


def test_update_with_device_rules_keeps_the_order_and_the_defaults(make_bundle, tmp_path):
    bundle = make_bundle(args=["sleep", "60"])
    bundle.config["linux"]["devices"] = [KMSG]
    assert bundle.run("--detach").returncode == 0
    allow = {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "rw"}
    resources = tmp_path / "resources.json"
    resources.write_text(json.dumps({"devices": [DENY_ALL, allow]}))
    result = bundle.runtime(["update", "--resources", str(resources), bundle.id])
    assert result.returncode == 0, result.stderr

    def probe_exec() -> str:
        return bundle.runtime(["exec", bundle.id, "sh", "-c", PROBE]).stdout

    assert "kmsg=open" in probe_exec() and "null=open" in probe_exec()
    resources.write_text(json.dumps({"devices": [DENY_ALL]}))
    assert bundle.runtime(["update", "--resources", str(resources), bundle.id]).returncode == 0
    out = probe_exec()
    assert "kmsg=denied" in out and "null=open" in out, out
    assert bundle.delete(force=True).returncode == 0
    assert_nothing_left(bundle)
