"""Networking through the CLI: loopback in a new network namespace, and linux.netDevices (runtime-spec 1.3).

Test traffic stays between namespaces these tests create: a veth pair whose far end lives in an
`ip netns` made here, with addresses that exist only inside those namespaces.
"""

import os
import secrets
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="veths and network namespaces need root")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def host_links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link").stdout.splitlines()}


@pytest.fixture
def veth():
    """A veth pair: the container end stays on the host for the test to hand over, the peer goes into a
    network namespace of its own with 10.213.7.2/24."""
    token = secrets.token_hex(3)
    host_end, peer_end, netns = f"oct{token}a", f"oct{token}b", f"ocirt-test-{token}"
    ip("netns", "add", netns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        ip("link", "set", peer_end, "netns", netns)
        ip("-n", netns, "addr", "add", "10.213.7.2/24", "dev", peer_end)
        ip("-n", netns, "link", "set", peer_end, "up")
        ip("addr", "add", "10.213.7.1/24", "dev", host_end)
        ip("link", "set", host_end, "up")
        yield host_end, netns
    finally:
        ip("link", "del", host_end, check=False)
        ip("netns", "del", netns, check=False)


@pytest.mark.parametrize("user", ["root", "rootless"])
def test_loopback_is_up_in_a_new_network_namespace(make_bundle, unprivileged_user, user):
    owner = unprivileged_user if user == "rootless" else None
    bundle = make_bundle(user=owner, args=["sh", "-c", "ip -o link show lo; ping -c1 -W2 127.0.0.1 >/dev/null "
                                                       "&& echo ping-ok"])
    namespaces = bundle.config["linux"]["namespaces"]
    if not any(ns["type"] == "network" for ns in namespaces):
        namespaces.append({"type": "network"})
    caps = bundle.config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind].append("CAP_NET_RAW")
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert "lo:" in result.stdout and ",UP" in result.stdout.split("lo:")[1].split("\n")[0], result.stdout
    assert "ping-ok" in result.stdout


def test_a_net_device_moves_in_renamed_with_its_address_and_reaches_its_peer(make_bundle, veth):
    host_end, _ = veth
    bundle = make_bundle(args=["sh", "-c", "ip -o addr show ctr0; ping -c1 -W3 10.213.7.2 >/dev/null && echo reached"])
    bundle.config["linux"]["netDevices"] = {host_end: {"name": "ctr0"}}
    caps = bundle.config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind].append("CAP_NET_RAW")
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert "10.213.7.1/24" in result.stdout, result.stdout
    assert "reached" in result.stdout, result.stdout
    # The spec: a device is not moved back on delete; a virtual one dies with the container's namespace.
    assert host_end not in host_links()


def test_a_missing_net_device_fails_create_and_leaves_the_host_as_it_was(make_bundle, veth):
    host_end, _ = veth
    before = host_links()
    bundle = make_bundle(args=["true"])
    bundle.config["linux"]["netDevices"] = {host_end: {"name": "ctr0"}, "ocirtnosuch0": {}}
    result = bundle.create()
    assert result.returncode != 0
    assert 'network device "ocirtnosuch0" does not exist' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert host_links() == before
    assert not (bundle.root / bundle.id).exists()


def test_net_devices_without_a_network_namespace_are_refused(make_bundle, veth):
    host_end, _ = veth
    bundle = make_bundle(args=["true"])
    bundle.config["linux"]["namespaces"] = [ns for ns in bundle.config["linux"]["namespaces"]
                                            if ns["type"] != "network"]
    bundle.config["linux"]["netDevices"] = {host_end: {}}
    result = bundle.create()
    assert result.returncode != 0
    assert "netDevices" in result.stderr and "network namespace" in result.stderr, result.stderr
    assert host_end in host_links()
    assert not (bundle.root / bundle.id).exists()
