"""Loopback and linux.netDevices against the real kernel.

Every namespace, interface and process these tests create is removed when they finish. Test traffic
stays between namespaces the tests made: addresses come from 10.199.0.0/16 and fd00:199::/32 and live
on test veths only.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ocirt import syscalls
from ocirt.errors import OcirtError
from ocirt.linux.network import (
    bring_up_loopback,
    check_net_devices,
    move_net_devices,
    return_net_devices,
)

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and veths need root")

_ICMP_ECHO = r"""
import os, select, socket, struct, sys
target = sys.argv[1]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
header = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, 1)
payload = b"ocirt-test"
data = header + payload
total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
total = (total >> 16) + (total & 0xFFFF)
checksum = ~(total + (total >> 16)) & 0xFFFF
sock.sendto(struct.pack("!BBHHH", 8, 0, checksum, os.getpid() & 0xFFFF, 1) + payload, (target, 0))
while select.select([sock], [], [], 2)[0]:
    reply, _ = sock.recvfrom(1024)
    icmp = reply[(reply[0] & 0x0F) * 4:]
    if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == os.getpid() & 0xFFFF:
        sys.exit(0)
sys.exit(1)
"""


def _ping_command(address: str) -> list[str]:
    if shutil.which("ping"):
        return ["ping", "-c1", "-W2", address]
    if shutil.which("busybox"):
        return ["busybox", "ping", "-c1", "-W2", address]
    return [sys.executable, "-c", _ICMP_ECHO, address]


def _ping(address: str, *, netns_pid: int | None = None) -> int:
    prefix = ["nsenter", "-t", str(netns_pid), "-n"] if netns_pid is not None else []
    return subprocess.run(prefix + _ping_command(address), capture_output=True, timeout=10).returncode


def _sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _links(*ip_prefix: str) -> list[str]:
    """`index: name` of each interface, from `ip -o link`."""
    output = _sh(*ip_prefix, "ip", "-o", "link", "show") if ip_prefix else _sh("ip", "-o", "link", "show")
    return sorted(re.findall(r"^\d+: [^:@]+", output, re.MULTILINE))


def _link_names(*ip_prefix: str) -> set[str]:
    return {entry.split(": ", 1)[1] for entry in _links(*ip_prefix)}


def _link_json(name: str, *ip_prefix: str) -> dict:
    return json.loads(_sh(*ip_prefix, "ip", "-j", "addr", "show", "dev", name))[0]


def _in_netns(pid: int) -> tuple[str, ...]:
    return ("nsenter", "-t", str(pid), "-n")


def _unique(prefix: str) -> str:
    return f"{prefix}{os.urandom(4).hex()}"


def _write_single_maps(pid: int) -> None:
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {os.getuid()} 1\n")
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {os.getgid()} 1\n")


# ---------------------------------------------------------------------------------------------
# Forked children in their own namespaces
# ---------------------------------------------------------------------------------------------

def _run_in_child(body: Callable[[], Any], flags: int, *, single_maps: bool = False) -> Any:
    """Run ``body`` in a forked child after unshare(flags); return its JSON result or raise its error."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(ready_r)
            os.close(go_w)
            os.close(result_r)
            try:
                syscalls.unshare(flags)
                os.write(ready_w, b"x")
                os.read(go_r, 1)
                payload = {"result": body()}
            except BaseException as err:
                payload = {"error": type(err).__name__, "message": str(err)}
            os.write(result_w, json.dumps(payload).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(go_r)
    os.close(result_w)
    try:
        assert os.read(ready_r, 1) == b"x", "the child could not unshare"
        if single_maps:
            _write_single_maps(pid)
        os.write(go_w, b"x")
        chunks = []
        while chunk := os.read(result_r, 65536):
            chunks.append(chunk)
    finally:
        for fd in (ready_r, go_w, result_r):
            os.close(fd)
        os.waitpid(pid, 0)
    payload = json.loads(b"".join(chunks))
    if "error" in payload:
        if payload["error"] == "OcirtError":
            raise OcirtError(payload["message"])
        raise AssertionError(f"child failed: {payload['error']}: {payload['message']}")
    return payload["result"]


@dataclass
class NamespaceHolder:
    """A sleeping process that stands in for a container's init in its own network namespace."""

    pid: int
    _release_fd: int

    def stop(self) -> None:
        if self._release_fd >= 0:
            os.close(self._release_fd)
            self._release_fd = -1
            os.waitpid(self.pid, 0)


def _spawn_holder(flags: int, *, single_maps: bool = False) -> NamespaceHolder:
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(release_w)
            syscalls.unshare(flags)
            os.write(ready_w, b"x")
            os.read(release_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(release_r)
    try:
        if os.read(ready_r, 1) != b"x":
            os.close(release_w)
            os.waitpid(pid, 0)
            raise AssertionError("the namespace holder could not unshare")
    finally:
        os.close(ready_r)
    if single_maps:
        _write_single_maps(pid)
    return NamespaceHolder(pid, release_w)


@pytest.fixture(params=["netns", "userns+netns"])
def container(request: pytest.FixtureRequest) -> Iterator[NamespaceHolder]:
    """The container's network namespace: a plain one (rootful) or one owned by a user namespace."""
    if request.param == "netns":
        holder = _spawn_holder(syscalls.CLONE_NEWNET)
    else:
        holder = _spawn_holder(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET, single_maps=True)
    try:
        yield holder
    finally:
        holder.stop()


@pytest.fixture
def plain_container() -> Iterator[NamespaceHolder]:
    holder = _spawn_holder(syscalls.CLONE_NEWNET)
    try:
        yield holder
    finally:
        holder.stop()


@pytest.fixture
def peer_netns() -> Iterator[str]:
    name = _unique("ocirt-test-net-")
    _sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        _sh("ip", "netns", "del", name, check=False)


@dataclass
class Veth:
    host_end: str
    peer_end: str
    subnet: str  # the first three octets of a 10.199.x.0/30

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def peer_address(self) -> str:
        return f"{self.subnet}.2"


@pytest.fixture
def host_links_before() -> list[str]:
    return _links()


@pytest.fixture
def veth(host_links_before: list[str]) -> Iterator[Veth]:
    """A veth pair with both ends on the host, the first end carrying an IPv4 and an IPv6 address.

    The first end stays down on the host so its test address never routes anything there.
    """
    suffix = os.urandom(4).hex()
    pair = Veth(f"ocA{suffix}", f"ocB{suffix}", f"10.199.{random.randrange(256)}")
    _sh("ip", "link", "add", pair.host_end, "type", "veth", "peer", "name", pair.peer_end)
    try:
        _sh("ip", "addr", "add", f"{pair.host_address}/30", "dev", pair.host_end)
        _sh("ip", "addr", "add", f"fd00:199:{suffix[:4]}::1/64", "dev", pair.host_end, "nodad")
        yield pair
    finally:
        # Deleting either end removes both, wherever they are; they may already be gone with a netns.
        for end in (pair.host_end, pair.peer_end):
            _sh("ip", "link", "del", end, check=False)
    assert _links() == host_links_before


def _peer_end_into(pair: Veth, netns: str) -> None:
    _sh("ip", "link", "set", pair.peer_end, "netns", netns)
    _sh("ip", "-n", netns, "addr", "add", f"{pair.peer_address}/30", "dev", pair.peer_end)
    _sh("ip", "-n", netns, "link", "set", pair.peer_end, "up")


def _addresses(link: dict) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") == "global"}


# ---------------------------------------------------------------------------------------------
# Loopback
# ---------------------------------------------------------------------------------------------

def _loopback_probe() -> dict:
    before = _sh("ip", "-o", "link", "show", "lo")
    ping_before = _ping("127.0.0.1")
    started = time.perf_counter()
    bring_up_loopback()
    elapsed = time.perf_counter() - started
    after = _sh("ip", "-o", "link", "show", "lo")
    return {
        "before": before,
        "after": after,
        "ping_before": ping_before,
        "ping_after": _ping("127.0.0.1"),
        "ms": elapsed * 1000,
        "again": _twice(),
    }


def _twice() -> bool:
    bring_up_loopback()  # lo is already up: nothing to do, no error
    return "UP" in _flags(_sh("ip", "-o", "link", "show", "lo"))


def _flags(ip_line: str) -> set[str]:
    found = re.search(r"<([^>]*)>", ip_line)
    return set(found.group(1).split(",")) if found else set()


@pytest.mark.parametrize(
    "flags, single_maps",
    [
        pytest.param(syscalls.CLONE_NEWNET, False, id="rootful"),
        pytest.param(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET, True, id="rootless"),
    ],
)
def test_loopback_comes_up_in_a_new_network_namespace(flags: int, single_maps: bool) -> None:
    probe = _run_in_child(_loopback_probe, flags, single_maps=single_maps)
    assert "UP" not in _flags(probe["before"])
    assert probe["ping_before"] != 0
    assert "UP" in _flags(probe["after"])
    assert probe["ping_after"] == 0
    assert probe["again"]  # idempotent
    print(f"bring_up_loopback: {probe['ms']:.3f} ms")


def test_loopback_without_net_admin_is_a_clear_error() -> None:
    def body() -> None:
        # The netns stays owned by the initial user namespace, where this child has no capability.
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        bring_up_loopback()

    with pytest.raises(OcirtError, match=r"^bringing up the loopback interface: Operation not permitted$"):
        _run_in_child(body, syscalls.CLONE_NEWNET)


def test_loopback_costs_an_ioctl_not_pyroute2() -> None:
    script = (
        "import sys, time\n"
        "from ocirt import syscalls\n"
        "from ocirt.linux.network import bring_up_loopback\n"
        "syscalls.unshare(syscalls.CLONE_NEWNET)\n"
        "t = time.perf_counter(); bring_up_loopback(); t = time.perf_counter() - t\n"
        "print('pyroute2' in sys.modules, 'socket' in sys.modules, t)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=_REPO, timeout=30)
    assert output.returncode == 0, output.stderr
    pyroute2_loaded, socket_loaded, seconds = output.stdout.split()
    assert pyroute2_loaded == "False"
    assert socket_loaded == "False"
    assert float(seconds) < 0.05


# ---------------------------------------------------------------------------------------------
# check_net_devices
# ---------------------------------------------------------------------------------------------

def test_check_accepts_existing_devices_renames_and_templates(veth: Veth) -> None:
    check_net_devices({veth.host_end: {"name": "eth1"}, veth.peer_end: {}}, rootless=False)
    check_net_devices({veth.host_end: {"name": "eth%d"}, veth.peer_end: {"name": "eth%d"}}, rootless=True)
    check_net_devices({}, rootless=True)


def test_check_missing_device_names_it_and_changes_nothing(host_links_before: list[str]) -> None:
    missing = _unique("ocX")
    with pytest.raises(OcirtError, match=rf'^network device "{missing}" does not exist$'):
        check_net_devices({missing: {"name": "eth0"}}, rootless=False)
    assert _links() == host_links_before


@pytest.mark.parametrize(
    "target, message",
    [
        ("a" * 16, "longer than 15 bytes"),
        ("eth/0", "contains '/'"),
        ("eth:0", "contains ':'"),
        ("eth 0", "contains ' '"),
        ("..", "reserved"),
        ("eth%s", "exactly one '%d'"),
        ("eth%d%d", "exactly one '%d'"),
    ],
)
def test_check_rejects_invalid_container_names(veth: Veth, target: str, message: str) -> None:
    with pytest.raises(OcirtError, match=rf'^network device "{veth.host_end}": invalid name') as caught:
        check_net_devices({veth.host_end: {"name": target}}, rootless=False)
    assert message in str(caught.value)


def test_check_rejects_two_devices_with_one_name(veth: Veth) -> None:
    with pytest.raises(OcirtError, match=r'would both be named "eth1" in the container'):
        check_net_devices({veth.host_end: {"name": "eth1"}, veth.peer_end: {"name": "eth1"}}, rootless=False)
    # A device keeping its host name collides with one renamed to that name.
    with pytest.raises(OcirtError, match=rf'would both be named "{veth.peer_end}"'):
        check_net_devices({veth.peer_end: {}, veth.host_end: {"name": veth.peer_end}}, rootless=False)


def test_check_rejects_loopback(veth: Veth) -> None:
    with pytest.raises(OcirtError, match=r'^network device "lo" cannot be moved'):
        check_net_devices({"lo": {"name": "lo0"}}, rootless=False)
    with pytest.raises(OcirtError, match=rf'^network device "{veth.host_end}": the container already has a device named "lo"$'):
        check_net_devices({veth.host_end: {"name": "lo"}}, rootless=False)


def test_check_finds_name_clash_in_a_joined_namespace(veth: Veth, peer_netns: str) -> None:
    _peer_end_into(veth, peer_netns)
    path = f"/var/run/netns/{peer_netns}"
    with pytest.raises(OcirtError, match=rf'the container already has a device named "{veth.peer_end}"$'):
        check_net_devices({veth.host_end: {"name": veth.peer_end}}, rootless=False, netns_path=path)
    check_net_devices({veth.host_end: {"name": "eth0"}}, rootless=False, netns_path=path)


@pytest.mark.parametrize("rootless", [True, False])
def test_check_without_cap_net_admin_on_the_host_names_the_device(veth: Veth, rootless: bool) -> None:
    def body() -> None:
        # Full capabilities, but in a user namespace that does not own the host's network namespace.
        check_net_devices({veth.host_end: {}}, rootless=rootless)

    with pytest.raises(OcirtError, match=rf'"{veth.host_end}".*CAP_NET_ADMIN in the host network namespace'):
        _run_in_child(body, syscalls.CLONE_NEWUSER, single_maps=True)


# ---------------------------------------------------------------------------------------------
# move_net_devices / return_net_devices
# ---------------------------------------------------------------------------------------------

def test_moved_device_keeps_its_addresses_comes_up_and_reaches_the_peer(
    veth: Veth, container: NamespaceHolder, peer_netns: str
) -> None:
    _peer_end_into(veth, peer_netns)
    before = _link_json(veth.host_end)
    assert "UP" not in before["flags"]

    record = move_net_devices({veth.host_end: {"name": "ctr0"}}, container.pid)

    assert veth.host_end not in _link_names()
    inside = _link_json("ctr0", *_in_netns(container.pid))
    assert "UP" in inside["flags"]
    assert _addresses(inside) == _addresses(before)
    assert len(_addresses(inside)) == 2
    assert inside["address"] == before["address"]  # the same device, not a new one
    assert _ping(veth.peer_address, netns_pid=container.pid) == 0
    assert json.loads(json.dumps(record)) == record  # it goes into state.json
    assert [(r["hostName"], r["name"]) for r in record] == [(veth.host_end, "ctr0")]


def test_device_without_rename_keeps_its_name(veth: Veth, plain_container: NamespaceHolder) -> None:
    record = move_net_devices({veth.host_end: {}}, plain_container.pid)
    assert record[0]["name"] == veth.host_end
    assert veth.host_end in _link_names(*_in_netns(plain_container.pid))


def test_name_template_gets_a_kernel_chosen_name(veth: Veth, plain_container: NamespaceHolder) -> None:
    record = move_net_devices({veth.host_end: {"name": "ctr%d"}, veth.peer_end: {"name": "ctr%d"}},
                              plain_container.pid)
    names = sorted(r["name"] for r in record)
    assert names == ["ctr0", "ctr1"]
    assert set(names) <= _link_names(*_in_netns(plain_container.pid))


def test_delete_leaves_devices_to_the_kernel(
    veth: Veth, plain_container: NamespaceHolder, peer_netns: str, host_links_before: list[str]
) -> None:
    _peer_end_into(veth, peer_netns)
    record = move_net_devices({veth.host_end: {"name": "ctr0"}}, plain_container.pid)

    # runtime-spec 1.3.0: the runtime MUST NOT move the device out of the namespace before deletion.
    return_net_devices(record, plain_container.pid)
    assert "ctr0" in _link_names(*_in_netns(plain_container.pid))
    assert veth.host_end not in _link_names()

    # When the namespace dies, the kernel destroys a virtual device (and so both veth ends).
    plain_container.stop()
    deadline = time.monotonic() + 5
    while veth.peer_end in _link_names("ip", "netns", "exec", peer_netns) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert veth.peer_end not in _link_names("ip", "netns", "exec", peer_netns)
    assert _links() == host_links_before
    return_net_devices(record, plain_container.pid)  # the namespace is gone: still fine


def test_rollback_returns_devices_with_their_names_addresses_and_state(
    veth: Veth, container: NamespaceHolder
) -> None:
    _sh("ip", "link", "set", veth.peer_end, "up")  # one end up, one down, both must come back so
    before = {end: _link_json(end) for end in (veth.host_end, veth.peer_end)}
    record = move_net_devices({veth.host_end: {"name": "ctr0"}, veth.peer_end: {"name": "ctr1"}}, container.pid)
    assert {veth.host_end, veth.peer_end}.isdisjoint(_link_names())

    return_net_devices(record, container.pid, rollback=True)

    assert {"ctr0", "ctr1"}.isdisjoint(_link_names(*_in_netns(container.pid)))
    for end, was in before.items():
        now = _link_json(end)
        assert _addresses(now) == _addresses(was)
        assert ("UP" in now["flags"]) == ("UP" in was["flags"])
        assert now["address"] == was["address"]


def test_rollback_after_the_namespace_is_gone_does_nothing(
    veth: Veth, plain_container: NamespaceHolder
) -> None:
    record = move_net_devices({veth.host_end: {}}, plain_container.pid)
    plain_container.stop()
    return_net_devices(record, plain_container.pid, rollback=True)
    return_net_devices(record, "/nonexistent/netns", rollback=True)


def test_failure_midway_puts_the_first_device_back(
    veth: Veth, plain_container: NamespaceHolder, host_links_before: list[str]
) -> None:
    missing = _unique("ocX")
    before = _link_json(veth.host_end)
    host_links = _links()
    with pytest.raises(OcirtError, match=rf'^network device "{missing}" does not exist$'):
        move_net_devices({veth.host_end: {"name": "ctr0"}, missing: {}}, plain_container.pid)
    assert _links() == host_links
    now = _link_json(veth.host_end)
    assert _addresses(now) == _addresses(before)
    assert now["flags"] == before["flags"]
    assert _link_names(*_in_netns(plain_container.pid)) == {"lo"}


def test_name_clash_in_the_container_undoes_everything(
    veth: Veth, plain_container: NamespaceHolder
) -> None:
    host_links = _links()
    with pytest.raises(OcirtError, match=rf'^network device "{veth.peer_end}": the container already has a device named "lo"$'):
        move_net_devices({veth.host_end: {"name": "ctr0"}, veth.peer_end: {"name": "lo"}}, plain_container.pid)
    assert _links() == host_links
    assert _link_names(*_in_netns(plain_container.pid)) == {"lo"}


def test_device_that_cannot_leave_its_namespace(plain_container: NamespaceHolder) -> None:
    bridge = _unique("ocbr")  # bridges, like lo, are bound to their network namespace
    _sh("ip", "link", "add", bridge, "type", "bridge")
    try:
        host_links = _links()
        with pytest.raises(OcirtError, match=rf'^moving network device "{bridge}" into the container: it cannot leave'):
            move_net_devices({bridge: {"name": "br0"}}, plain_container.pid)
        assert _links() == host_links
    finally:
        _sh("ip", "link", "del", bridge, check=False)


def test_move_into_a_missing_process_is_a_clear_error(veth: Veth) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(OcirtError, match=r"opening the container's network namespace"):
        move_net_devices({veth.host_end: {}}, pid)
    assert veth.host_end in _link_names()


def test_nothing_to_move_does_not_load_pyroute2() -> None:
    script = (
        "import sys\n"
        "from ocirt.linux.network import move_net_devices, return_net_devices\n"
        "assert move_net_devices({}, 1) == []\n"
        "return_net_devices([], 1, rollback=True)\n"
        "print('pyroute2' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=_REPO, timeout=30)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == "False"

