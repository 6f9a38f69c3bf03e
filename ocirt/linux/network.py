"""Networking inside the container's network namespace: loopback and ``linux.netDevices``.

ocirt configures no network of its own beyond these two things; bridges, veth plumbing, CNI and
user-mode networking (slirp4netns, pasta) belong to the engine, usually through hooks.

``bring_up_loopback`` runs in the init on every container with a new network namespace, so it uses
one plain ioctl. The ``netDevices`` functions run in the runtime (the parent) and pay for pyroute2
only when the config asks for devices.

A network namespace is named by a ``NetnsRef``: an ``int`` is the pid of a process inside it (the
container's init), a ``str`` or path is a namespace file such as ``/var/run/netns/NAME`` or
``/proc/self/fd/N`` for a namespace fd the caller holds.
"""

from __future__ import annotations

import _socket  # the ``socket`` wrapper module drags enum/selectors in: several ms on the init's path
import errno
import fcntl
import os
import struct

from ocirt.errors import OcirtError

TYPE_CHECKING = False  # typing itself costs ~9 ms to import; mypy honours this name all the same
if TYPE_CHECKING:
    from typing import Any

    from pyroute2 import IPRoute

NetnsRef = int | str | os.PathLike

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# struct ifreq: a 16-byte name and a union whose largest member makes the whole struct 40 bytes.
_IFREQ_FLAGS = struct.Struct("16sH22x")

_IFNAMSIZ = 16
_CAP_NET_ADMIN = 12
_NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)

_IFA_F_PERMANENT = 0x80
_RT_SCOPE_UNIVERSE = 0
# Flags a user can set on an address; the others describe its state and the kernel refuses or
# recomputes them.
_IFA_SETTABLE_FLAGS = 0x02 | 0x10 | 0x100 | 0x200 | 0x400  # nodad homeaddress mngtmpaddr noprefixroute autojoin
_AF_INET = 2
_AF_INET6 = 10


def bring_up_loopback() -> None:
    """Set ``lo`` up in the calling thread's network namespace (the kernel then adds 127.0.0.1 and ::1)."""
    try:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    except OSError as err:
        raise OcirtError(f"bringing up the loopback interface: socket: {err.strerror}") from None
    try:
        request = bytearray(_IFREQ_FLAGS.pack(b"lo", 0))
        fcntl.ioctl(sock, _SIOCGIFFLAGS, request)
        flags = _IFREQ_FLAGS.unpack(request)[1]
        if not flags & _IFF_UP:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags | _IFF_UP))
    except OSError as err:
        raise OcirtError(f"bringing up the loopback interface: {err.strerror}") from None
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# linux.netDevices
# ---------------------------------------------------------------------------------------------

def _target_name(host_name: str, entry: Any) -> str:
    if entry is None:
        return host_name
    if not isinstance(entry, dict):
        raise OcirtError(f'linux.netDevices["{host_name}"] must be an object')
    name = entry.get("name")
    if name is None or name == "":
        return host_name
    if not isinstance(name, str):
        raise OcirtError(f'linux.netDevices["{host_name}"].name must be a string')
    return name


def _interface_name_problem(name: str) -> str | None:
    """Why the kernel would refuse ``name`` as an interface name, or None when it accepts it."""
    try:
        encoded = name.encode()
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if not encoded:
        return "it is empty"
    if len(encoded) >= _IFNAMSIZ:
        return f"it is longer than {_IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "it is reserved"
    for char in name:
        if char in "/:\0" or char.isspace():
            return f"it contains {char!r}"
    return None


def _is_template(name: str) -> bool:
    return "%" in name


def _template_problem(name: str) -> str | None:
    position = name.find("%")
    if name[position + 1:position + 2] != "d" or "%" in name[position + 2:]:
        return "a name template may hold exactly one '%d' and no other '%'"
    return None


def _has_net_admin_over_current_netns() -> bool:
    """CAP_NET_ADMIN counts only in the user namespace that owns the network namespace."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            effective = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    if not effective >> _CAP_NET_ADMIN & 1:
        return False
    try:
        netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            owner_fd = fcntl.ioctl(netns_fd, _NS_GET_USERNS)
        finally:
            os.close(netns_fd)
        try:
            owner = os.fstat(owner_fd)
        finally:
            os.close(owner_fd)
        ours = os.stat("/proc/self/ns/user")
    except OSError as err:
        # Without NS_GET_USERNS (EPERM when the owner is an ancestor of our user namespace, which
        # already proves we lack the capability there).
        return err.errno not in (errno.EPERM, errno.EACCES)
    return (owner.st_dev, owner.st_ino) == (ours.st_dev, ours.st_ino)


def check_net_devices(net_devices: dict, *, rootless: bool, netns_path: str | None = None) -> None:
    """Refuse a ``linux.netDevices`` that cannot be moved, before create changes anything.

    ``netns_path`` names the network namespace the container joins, when the config gives one; its
    existing interfaces are checked for name clashes. A namespace the init creates holds only ``lo``.
    """
    if not net_devices:
        return
    if not isinstance(net_devices, dict):
        raise OcirtError("linux.netDevices must be an object")
    from ocirt.deps import require

    # Moving the devices needs it later, once the init exists: fail now, before anything is made.
    require("pyroute2")

    targets: dict[str, str] = {}
    for host_name, entry in net_devices.items():
        target = _target_name(host_name, entry)
        problem = _interface_name_problem(host_name)
        if problem is None:
            try:
                _socket.if_nametoindex(host_name)
            except OSError:
                problem = "missing"
        if problem is not None:
            raise OcirtError(f'network device "{host_name}" does not exist')
        if host_name == "lo":
            raise OcirtError('network device "lo" cannot be moved: loopback belongs to its network namespace')
        problem = _interface_name_problem(target)
        if problem is None and _is_template(target):
            problem = _template_problem(target)
        if problem is not None:
            raise OcirtError(f'network device "{host_name}": invalid name "{target}" in the container: {problem}')
        if target == "lo":
            raise OcirtError(
                f'network device "{host_name}": the container already has a device named "lo"'
            )
        if not _is_template(target):
            if target in targets:
                raise OcirtError(
                    f'network devices "{targets[target]}" and "{host_name}" would both be named '
                    f'"{target}" in the container'
                )
            targets[target] = host_name

    if not _has_net_admin_over_current_netns():
        first = next(iter(net_devices))
        if rootless:
            raise OcirtError(
                f'network device "{first}" cannot be moved into a rootless container: moving it needs '
                "CAP_NET_ADMIN in the host network namespace"
            )
        raise OcirtError(f'moving network device "{first}" needs CAP_NET_ADMIN in the host network namespace')

    if netns_path is not None and targets:
        _check_names_free_in(netns_path, targets)


def _check_names_free_in(netns_path: str, targets: dict[str, str]) -> None:
    from ocirt import syscalls

    try:
        target_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise OcirtError(f"network namespace {netns_path}: {err.strerror}") from None
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            syscalls.setns(target_fd, syscalls.CLONE_NEWNET)
        except OSError as err:
            raise OcirtError(f"entering network namespace {netns_path}: {err.strerror}") from None
        try:
            taken = [name for name in targets if _interface_exists(name)]
        finally:
            syscalls.setns(host_fd, syscalls.CLONE_NEWNET)
    finally:
        os.close(target_fd)
        os.close(host_fd)
    if taken:
        raise OcirtError(
            f'network device "{targets[taken[0]]}": the container already has a device named "{taken[0]}"'
        )


def _interface_exists(name: str) -> bool:
    try:
        _socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_netns(netns: NetnsRef) -> int:
    if isinstance(netns, bool):
        raise TypeError("a network namespace is a pid or a path")
    path = f"/proc/{netns}/ns/net" if isinstance(netns, int) else os.fspath(netns)
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _rtnl_in(iproute_class: type[IPRoute], netns_fd: int, host_fd: int) -> IPRoute:
    """A netlink socket belongs to the namespace it was created in, so open one there and come back."""
    from ocirt import syscalls

    try:
        syscalls.setns(netns_fd, syscalls.CLONE_NEWNET)
    except OSError as err:
        raise OcirtError(f"entering the container's network namespace: {err.strerror}") from None
    try:
        return iproute_class()
    finally:
        syscalls.setns(host_fd, syscalls.CLONE_NEWNET)


def _transit_name() -> str:
    """A name no device carries, used while a device crosses namespaces so it can be found again."""
    return "ocirt" + os.urandom(5).hex()


def _netlink_reason(err: Exception) -> str:
    code = getattr(err, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return str(err)


def _permanent_global_addresses(ipr: IPRoute, index: int) -> list[dict]:
    """The addresses the spec says survive the move: permanent ones with global scope."""
    kept = []
    for message in ipr.get_addr(index=index):
        flags = message.get("IFA_FLAGS")
        if flags is None:
            flags = message["flags"]
        if not flags & _IFA_F_PERMANENT or message["scope"] != _RT_SCOPE_UNIVERSE:
            continue
        local = message.get("IFA_LOCAL")
        address = message.get("IFA_ADDRESS")
        record: dict[str, Any] = {
            "family": 4 if message["family"] == _AF_INET else 6,
            "local": local or address,
            "prefixlen": message["prefixlen"],
        }
        if local and address and address != local:
            record["peer"] = address
        if message.get("IFA_BROADCAST"):
            record["broadcast"] = message.get("IFA_BROADCAST")
        if flags & _IFA_SETTABLE_FLAGS:
            record["flags"] = flags & _IFA_SETTABLE_FLAGS
        kept.append(record)
    return kept


def _add_addresses(ipr: IPRoute, index: int, addresses: list[dict]) -> None:
    for address in addresses:
        request: dict[str, Any] = {
            "index": index,
            "family": _AF_INET if address["family"] == 4 else _AF_INET6,
            "address": address.get("peer", address["local"]),
            "local": address["local"],
            "prefixlen": address["prefixlen"],
        }
        if "broadcast" in address:
            request["broadcast"] = address["broadcast"]
        if "flags" in address:
            request["flags"] = address["flags"]
        ipr.addr("add", **request)


def _link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _link_name(ipr: IPRoute, index: int) -> str | None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        links = ipr.get_links(index)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise
    return links[0].get("IFLA_IFNAME") if links else None


def move_net_devices(net_devices: dict, netns: NetnsRef) -> list[dict]:
    """Move each host interface of ``linux.netDevices`` into the container's network namespace.

    Each device is renamed as asked, keeps its permanent global addresses and is set up, as
    runtime-spec 1.3.0 requires. Returns what was moved, to be kept in state.json and handed to
    ``return_net_devices``. On failure, devices already moved are put back as they were and the
    error names the device that failed.
    """
    if not net_devices:
        return []
    from pyroute2 import IPRoute

    try:
        target_fd = _open_netns(netns)
    except OSError as err:
        raise OcirtError(f"opening the container's network namespace ({netns}): {err.strerror}") from None
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    moved: list[dict] = []
    try:
        with IPRoute() as host, _rtnl_in(IPRoute, target_fd, host_fd) as inside:
            try:
                for host_name, entry in net_devices.items():
                    _move_device(host, inside, target_fd, host_name, _target_name(host_name, entry), moved)
            except BaseException as err:
                problems = _put_back(host, inside, host_fd, moved)
                if problems and isinstance(err, OcirtError):
                    raise OcirtError(f"{err}; undoing the move also failed: {'; '.join(problems)}") from None
                raise
    finally:
        os.close(target_fd)
        os.close(host_fd)
    return moved


def _move_device(host: IPRoute, inside: IPRoute, target_fd: int, host_name: str, wanted: str,
                 moved: list[dict]) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    host_index = _link_index(host, host_name)
    if host_index is None:
        raise OcirtError(f'network device "{host_name}" does not exist')
    try:
        was_up = bool(host.get_links(host_index)[0]["flags"] & _IFF_UP)
        addresses = _permanent_global_addresses(host, host_index)
    except NetlinkError as err:
        raise OcirtError(f'network device "{host_name}": {_netlink_reason(err)}') from None

    # The rename rides along with the move, so the device is never visible under its host name
    # inside the container (where that name might belong to another device).
    transit = _transit_name()
    try:
        host.link("set", index=host_index, net_ns_fd=target_fd, ifname=transit)
    except NetlinkError as err:
        reason = _netlink_reason(err)
        if _link_name(host, host_index) == host_name:
            if err.code == errno.EINVAL:
                reason = "it cannot leave its network namespace"
            raise OcirtError(f'moving network device "{host_name}" into the container: {reason}') from None
        # The kernel moved it, then failed on the rename of the same request.
        for name in (transit, host_name):
            inside_index = _link_index(inside, name)
            if inside_index is not None:
                moved.append(_record(host_name, host_index, name, inside_index, addresses, was_up))
                break
        raise OcirtError(f'moving network device "{host_name}" into the container: {reason}') from None
    inside_index = _link_index(inside, transit)
    if inside_index is None:
        raise OcirtError(f'network device "{host_name}" vanished while it was moved into the container')
    record = _record(host_name, host_index, transit, inside_index, addresses, was_up)
    moved.append(record)

    try:
        inside.link("set", index=inside_index, ifname=wanted)
    except NetlinkError as err:
        if err.code == errno.EEXIST:
            raise OcirtError(
                f'network device "{host_name}": the container already has a device named "{wanted}"'
            ) from None
        raise OcirtError(f'network device "{host_name}": renaming it to "{wanted}": {_netlink_reason(err)}') from None
    record["name"] = _link_name(inside, inside_index) or wanted

    try:
        _add_addresses(inside, inside_index, addresses)
        inside.link("set", index=inside_index, state="up")
    except NetlinkError as err:
        raise OcirtError(
            f'network device "{host_name}": configuring it in the container: {_netlink_reason(err)}'
        ) from None


def _record(host_name: str, host_index: int, name: str, index: int, addresses: list[dict],
            was_up: bool) -> dict:
    return {
        "hostName": host_name,
        "hostIndex": host_index,
        "name": name,
        "index": index,
        "addresses": addresses,
        "hostUp": was_up,
    }


def _put_back(host: IPRoute, inside: IPRoute, host_fd: int, records: list[dict]) -> list[str]:
    """Return devices to the host as they were found there; report what could not be returned."""
    from pyroute2.netlink.exceptions import NetlinkError

    problems = []
    for record in reversed(records):
        try:
            _return_device(host, inside, host_fd, record)
        except OcirtError as err:
            problems.append(str(err))
        except NetlinkError as err:
            problems.append(f'network device "{record["hostName"]}": {_netlink_reason(err)}')
    return problems


def _return_device(host: IPRoute, inside: IPRoute, host_fd: int, record: dict) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    host_name = record["hostName"]
    index = record["index"]
    if _link_name(inside, index) != record["name"]:
        # Gone with its namespace or deleted in the container; matching the name as well as the
        # index keeps a reused pid's namespace from giving up one of its own devices.
        return
    transit = _transit_name()
    try:
        inside.link("set", index=index, net_ns_fd=host_fd, ifname=transit)
    except NetlinkError as err:
        raise OcirtError(
            f'returning network device "{host_name}" to the host: {_netlink_reason(err)}'
        ) from None
    host_index = _link_index(host, transit)
    if host_index is None:
        raise OcirtError(f'network device "{host_name}" vanished while it was returned to the host')
    try:
        host.link("set", index=host_index, ifname=host_name)
    except NetlinkError as err:
        raise OcirtError(
            f'network device "{host_name}" is back on the host as "{transit}": renaming it failed: '
            f"{_netlink_reason(err)}"
        ) from None
    try:
        _add_addresses(host, host_index, record["addresses"])
        if record["hostUp"]:
            host.link("set", index=host_index, state="up")
    except NetlinkError as err:
        raise OcirtError(
            f'network device "{host_name}" is back on the host but not configured as before: '
            f"{_netlink_reason(err)}"
        ) from None


def return_net_devices(record: list[dict], netns: NetnsRef, *, rollback: bool = False) -> None:
    """Deal with the devices ``move_net_devices`` moved, when the container goes away.

    On ``delete`` (the default) runtime-spec 1.3.0 forbids moving devices out of the container's
    namespace: nothing is done here. When that namespace is freed, the kernel moves physical devices
    back to the initial namespace (under their container names, or ``dev%d`` on a clash) and destroys
    virtual ones (veth, macvlan...).

    ``rollback=True`` is for a create that failed after the move: the container never existed, so
    each device still in the namespace goes back to the host with its original name, addresses and
    link state. Call it before killing the init, while the namespace still lives. A namespace that
    is already gone is not an error: the kernel has dealt with its devices.
    """
    if not record or not rollback:
        return
    from pyroute2 import IPRoute

    try:
        target_fd = _open_netns(netns)
    except (FileNotFoundError, ProcessLookupError):
        return
    except OSError as err:
        raise OcirtError(f"opening the container's network namespace ({netns}): {err.strerror}") from None
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as host, _rtnl_in(IPRoute, target_fd, host_fd) as inside:
            problems = _put_back(host, inside, host_fd, record)
    finally:
        os.close(target_fd)
        os.close(host_fd)
    if problems:
        raise OcirtError("; ".join(problems))
