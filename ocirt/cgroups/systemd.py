"""The systemd cgroup driver (`--systemd-cgroup`): the container's cgroup is a transient scope unit.

As runc does it: linux.cgroupsPath is `slice:prefix:name` and names the unit `<prefix>-<name>.scope` in
`slice` (or the slice `name` itself when it ends in .slice); absent, it is `system.slice:ocirt:<id>`
(rootless `user.slice:ocirt:<id>`). The scope is started over D-Bus, on the system bus as root and on
the user's own bus rootless, with Delegate=yes so that we may write below it, the init's pid, and the
limits systemd understands as unit properties; `org.systemd.property.<Name>` annotations are passed
through as further properties. Every limit is then also written to the scope's cgroup files by the
cgroupfs code (systemd has no property for some of them), and delete stops the scope.

jeepney (pure Python) speaks D-Bus; it is imported only by commands that start or stop a scope.
"""

from __future__ import annotations

import os
import posixpath

from ocirt.cgroups import fs, hierarchy
from ocirt.cgroups.manager import Manager
from ocirt.errors import CgroupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_ANNOTATION = "org.systemd.property."
_JOB_TIMEOUT = 60.0  # seconds; under emulation a busy systemd takes a while


def parse_path(cgroups_path: str | None, container_id: str, rootless: bool) -> tuple[str, str]:
    """(slice, unit name) from runc's `slice:prefix:name`."""
    if not cgroups_path:
        return ("user.slice" if rootless else "system.slice"), f"ocirt-{container_id}.scope"
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise CgroupError(f"invalid cgroupsPath {cgroups_path!r} for the systemd cgroup driver: "
                          "expected slice:prefix:name")
    slice_name, prefix, name = parts
    slice_name = slice_name or "-.slice"
    for part in parts:
        if "/" in part:
            raise CgroupError(f"invalid cgroupsPath {cgroups_path!r}: systemd unit names contain no '/'")
    if not slice_name.endswith(".slice"):
        raise CgroupError(f"invalid cgroupsPath {cgroups_path!r}: {slice_name!r} is not a slice (*.slice)")
    if not name:
        raise CgroupError(f"invalid cgroupsPath {cgroups_path!r}: the name is empty")
    if name.endswith(".slice"):
        return slice_name, name
    return slice_name, f"{prefix}-{name}.scope" if prefix else f"{name}.scope"


def expand_slice(slice_name: str) -> str:
    """systemd's slice path: a-b-c.slice lives at /a.slice/a-b.slice/a-b-c.slice, -.slice at /."""
    if slice_name == "-.slice":
        return "/"
    if not slice_name.endswith(".slice"):
        raise CgroupError(f"invalid slice name {slice_name!r}")
    stem = slice_name[:-len(".slice")]
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise CgroupError(f"invalid slice name {slice_name!r}")
    path = ""
    prefix = ""
    for component in stem.split("-"):
        prefix = f"{prefix}-{component}" if prefix else component
        path += f"/{prefix}.slice"
    return path


# ---- annotations: org.systemd.property.* --------------------------------------------------------------

def _parse_variant(text: str) -> tuple[str, Any]:
    """A value in GVariant text form, the subset runc's users write: booleans, typed or bare integers,
    doubles, quoted strings and arrays of strings."""
    text = text.strip()
    if text in ("true", "false"):
        return "b", text == "true"
    words = text.split(None, 1)
    integer_types = {"byte": "y", "int16": "n", "uint16": "q", "int32": "i", "uint32": "u", "int64": "x",
                     "uint64": "t", "double": "d"}
    if len(words) == 2 and words[0] in integer_types:
        signature = integer_types[words[0]]
        try:
            return signature, float(words[1]) if signature == "d" else int(words[1], 0)
        except ValueError:
            pass
    elif len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return "s", text[1:-1]
    elif text.startswith("[") and text.endswith("]"):
        items = [item.strip() for item in text[1:-1].split(",") if item.strip()]
        if all(len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"" for item in items):
            return "as", [item[1:-1] for item in items]
    else:
        try:
            return "i", int(text, 0)
        except ValueError:
            pass
    raise CgroupError(f"cannot parse {text!r} as a D-Bus value (GVariant text: true, 'text', uint64 5, "
                      "['a', 'b'])")


def annotation_properties(annotations: dict | None) -> list[tuple[str, tuple[str, Any]]]:
    properties = []
    for key, value in sorted((annotations or {}).items()):
        if not key.startswith(_ANNOTATION):
            continue
        name = key[len(_ANNOTATION):]
        if not name.isascii() or not name.isalpha() or not name[0].isupper():
            raise CgroupError(f"invalid annotation {key}: a systemd property name is letters, "
                              "starting with a capital")
        try:
            signature, parsed = _parse_variant(str(value))
        except CgroupError as err:
            raise CgroupError(f"invalid annotation {key}={value}: {err}") from None
        if name.endswith("Sec") and not name.endswith("USec"):
            # As runc: TimeoutStopSec=5 means TimeoutStopUSec=5000000.
            if signature not in ("y", "n", "q", "i", "u", "x", "t", "d"):
                raise CgroupError(f"invalid annotation {key}={value}: a *Sec property takes a number")
            name, signature, parsed = name[:-3] + "USec", "t", int(parsed * 1_000_000)
        properties.append((name, (signature, parsed)))
    return properties


# ---- limits as unit properties ---------------------------------------------------------------------------

def _cpu_mask(spec: str) -> bytes:
    """"0-2,5" as systemd's AllowedCPUs byte array: bit n of byte n // 8."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(value) for value in part.split("-", 1))
                cpus.update(range(low, high + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise CgroupError(f"invalid cpu list {spec!r}") from None
    mask = bytearray((max(cpus) // 8 + 1) if cpus else 0)
    for cpu in cpus:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


def resource_properties(resources: dict | None, unified: bool) -> list[tuple[str, tuple[str, Any]]]:
    """The limits systemd has properties for. The cgroupfs code writes them (and the rest) again after."""
    from ocirt.cgroups import v2

    resources = resources or {}
    properties: list[tuple[str, tuple[str, Any]]] = []
    memory = resources.get("memory") or {}
    cpu = resources.get("cpu") or {}
    limit = int(memory.get("limit") or 0)
    if limit > 0:
        properties.append(("MemoryMax" if unified else "MemoryLimit", ("t", limit)))
    if unified:
        if memory.get("reservation") and int(memory["reservation"]) > 0:
            properties.append(("MemoryLow", ("t", int(memory["reservation"]))))
        swap = v2.swap_max(int(memory.get("swap") or 0), limit) if limit > 0 else None
        if swap is not None and swap >= 0:
            properties.append(("MemorySwapMax", ("t", swap)))
        if cpu.get("shares"):
            properties.append(("CPUWeight", ("t", v2.checked_weight(int(cpu["shares"])))))
        if cpu.get("cpus"):
            properties.append(("AllowedCPUs", ("ay", _cpu_mask(str(cpu["cpus"])))))
        if cpu.get("mems"):
            properties.append(("AllowedMemoryNodes", ("ay", _cpu_mask(str(cpu["mems"])))))
        weight = (resources.get("blockIO") or {}).get("weight")
        if weight:
            properties.append(("IOWeight", ("t", v2.blkio_weight_to_io_weight(int(weight)))))
    elif cpu.get("shares"):
        properties.append(("CPUShares", ("t", int(cpu["shares"]))))
    quota = int(cpu.get("quota") or 0)
    if quota > 0:
        period = int(cpu.get("period") or 100000)
        # systemd counts CPU time per second of wall time; round up as runc does, never to nothing.
        per_second = (quota * 1_000_000 + period - 1) // period
        per_second = (per_second + 9999) // 10000 * 10000
        properties.append(("CPUQuotaPerSecUSec", ("t", per_second)))
        if unified:
            properties.append(("CPUQuotaPeriodUSec", ("t", period)))
    pids = int((resources.get("pids") or {}).get("limit") or 0)
    if pids > 0:
        properties.append(("TasksMax", ("t", pids)))
    return properties


# ---- D-Bus -------------------------------------------------------------------------------------------------

def _bus_address(rootless: bool) -> str:
    if not rootless:
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{hierarchy.outer_uid(os.geteuid())}"
    return f"unix:path={runtime_dir}/bus"


def _socket_path(address: str) -> str:
    for entry in address.split(";"):
        kind, _, params = entry.partition(":")
        if kind != "unix":
            continue
        fields = dict(item.split("=", 1) for item in params.split(",") if "=" in item)
        if "path" in fields:
            return fields["path"]
        if "abstract" in fields:
            return "\0" + fields["abstract"]
    raise CgroupError(f"cannot use D-Bus address {address!r}: only unix sockets are supported")


class Bus:
    """One connection to systemd's manager (the system's, or the user's own)."""

    def __init__(self, rootless: bool):
        import socket

        from ocirt.deps import require

        require("jeepney")
        from jeepney.io.blocking import DBusConnection

        address = _bus_address(rootless)
        path = _socket_path(address)
        which = "the user's D-Bus session bus" if rootless else "the system D-Bus"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(10)
        try:
            sock.connect(path)
            # SASL EXTERNAL with the uid the bus sees (jeepney would send the one inside a user namespace).
            sock.sendall(b"\0AUTH EXTERNAL " + str(hierarchy.outer_uid(os.geteuid())).encode().hex().encode() + b"\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(512)
                if not chunk:
                    break
                reply += chunk
            if not reply.startswith(b"OK "):
                raise CgroupError(f"cannot use systemd's cgroups: {which} at {path} refused the login "
                                  f"({reply.decode(errors='replace').strip() or 'no answer'})")
            sock.sendall(b"BEGIN\r\n")
            sock.settimeout(None)
            self.connection = DBusConnection(sock)
        except OSError as err:
            sock.close()
            from ocirt.errors import why

            hint = " (is the user's systemd instance running? `loginctl enable-linger`)" if rootless else ""
            raise CgroupError(f"cannot reach systemd: {which} at {path}: {why(err)}{hint}") from None
        self.rootless = rootless

    def close(self) -> None:
        self.connection.close()

    def call(self, method: str, signature: str | None = None, *args, path: str = _MANAGER_PATH,
             interface: str = _MANAGER):
        from jeepney import DBusAddress, DBusErrorResponse, new_method_call
        from jeepney.wrappers import unwrap_msg

        address = DBusAddress(path, bus_name=_SYSTEMD, interface=interface)
        try:
            reply = self.connection.send_and_get_reply(new_method_call(address, method, signature, args),
                                                       timeout=_JOB_TIMEOUT)
            return unwrap_msg(reply)
        except DBusErrorResponse as err:
            raise _DBusError(err.name, " ".join(str(item) for item in err.data)) from None
        except TimeoutError:
            raise CgroupError(f"systemd did not answer {method} within {_JOB_TIMEOUT:g}s") from None

    def property(self, name: str, path: str = _MANAGER_PATH, interface: str = _MANAGER):
        (_signature, value), = self.call("Get", "ss", interface, name, path=path,
                                         interface="org.freedesktop.DBus.Properties")
        return value

    def run_job(self, method: str, signature: str, *args) -> None:
        """Call a method that queues a job and wait until systemd reports the job done."""
        from jeepney import MatchRule, message_bus
        from jeepney.io.blocking import Proxy

        rule = MatchRule(type="signal", sender=_SYSTEMD, interface=_MANAGER, member="JobRemoved",
                         path=_MANAGER_PATH)
        Proxy(message_bus, self.connection).AddMatch(rule)
        self.call("Subscribe")
        # The bus matches the well-known sender name; a signal's header carries systemd's unique name, so
        # the local filter must not ask for the well-known one (it would never match).
        local = MatchRule(type="signal", interface=_MANAGER, member="JobRemoved", path=_MANAGER_PATH)
        with self.connection.filter(local, bufsize=64) as queue:
            (job,) = self.call(method, signature, *args)
            import time

            deadline = time.monotonic() + _JOB_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CgroupError(f"systemd did not finish {method} ({job}) within {_JOB_TIMEOUT:g}s")
                try:
                    signal = self.connection.recv_until_filtered(queue, timeout=remaining)
                except TimeoutError:
                    continue
                _id, job_path, unit, result = signal.body
                if job_path == job:
                    if result != "done":
                        raise CgroupError(f"systemd could not {method} {unit}: the job ended '{result}' "
                                          f"(see `journalctl -u {unit}`)")
                    return


class _DBusError(CgroupError):
    def __init__(self, name: str, text: str):
        super().__init__(f"systemd refused: {text or name} ({name})")
        self.name = name


# ---- the manager ---------------------------------------------------------------------------------------------

def open_systemd_manager(container_id: str, cgroups_path: str | None, *, rootless: bool, resources: dict | None,
                         annotations: dict | None, owner: str | None = None):
    slice_name, unit = parse_path(cgroups_path, container_id, rootless)
    slice_path = expand_slice(slice_name)
    mode = hierarchy.detect_mode()
    properties = resource_properties(resources, unified=mode == "v2")
    extra = annotation_properties(annotations)
    if rootless and mode != "v2":
        _refuse_v1_rootless_limits(resources)
    bus = Bus(rootless)
    try:
        # The manager's own cgroup: "/" for the system's, user@UID.service's for a user's.
        root = bus.property("ControlGroup") or "/"
        try:
            bus.call("GetUnit", "s", unit)
            exists = True
        except _DBusError as err:
            if err.name != "org.freedesktop.systemd1.NoSuchUnit":
                raise
            exists = False
    finally:
        bus.close()
    if exists:
        raise CgroupError(f"cannot use systemd unit {unit}: it exists already (another container?)")
    inner = posixpath.join(root, slice_path.lstrip("/"), unit)
    table = hierarchy.mounts()
    paths: dict[str, str] = {}
    if table.v2 is not None and mode == "v2":
        paths[hierarchy.UNIFIED] = posixpath.join(table.v2.mountpoint, inner.lstrip("/"))
    else:
        for controller, mount in table.v1.items():
            if controller.startswith("name=") and controller != "name=systemd":
                continue
            if rootless and controller not in ("name=systemd",):
                continue
            paths[controller] = posixpath.join(mount.mountpoint, inner.lstrip("/"))
        if mode == "hybrid" and table.v2 is not None:
            paths[hierarchy.UNIFIED] = posixpath.join(table.v2.mountpoint, inner.lstrip("/"))
    notices: list[str] = []
    manager = SystemdManager(container_id, mode, rootless, paths, table.v2.mountpoint if table.v2 else None,
                             resources, notices, owner=owner)
    manager.unit = unit
    manager.slice = slice_name
    manager.properties = properties + extra
    return manager


def _refuse_v1_rootless_limits(resources: dict | None) -> None:
    """On cgroup v1 systemd gives an unprivileged user's manager no controller: its scopes exist only to
    track processes (name=systemd, and the empty cgroup2 tree of a hybrid host), so no limit can apply."""
    from ocirt.cgroups import v1, v2

    v1_part, unified_part = hierarchy._split_resources(hierarchy.detect_mode(), hierarchy.mounts(), resources)
    wanted = {controller for controller, _name, _value in v1.plan(v1_part, []) if controller != "devices"}
    wanted |= v2.controllers_needed(v2.plan(unified_part, []))
    if wanted:
        names = ", ".join(sorted(wanted))
        raise CgroupError(f"cannot apply {names} limits rootless with the systemd cgroup driver on cgroup v1: "
                          f"systemd delegates no v1 controller to user {hierarchy._user_name()} (cgroup v2 can: "
                          "boot with systemd.unified_cgroup_hierarchy=1), and the scope would only track the "
                          "processes; without --systemd-cgroup, `ocirt cgroup delegate` can give the user "
                          "v1 cgroups")


class SystemdManager(Manager):
    """A Manager whose cgroup systemd makes (at apply) and removes (at destroy)."""

    unit = ""
    slice = ""
    properties: list = []
    started = False  # loaded from a saved state: the scope exists (or existed)

    def create(self) -> None:
        """Nothing yet: a scope needs its first process, so systemd makes it in apply()."""

    def apply(self, pid: int) -> None:
        if self.started:
            # A process exec'd into a running container joins the scope's cgroups directly, as runc does.
            super().apply(pid)
            return
        bus = Bus(self.rootless)
        try:
            properties = [
                ("Description", ("s", f"ocirt container {self.container_id}")),
                ("Slice", ("s", self.slice)),
                ("PIDs", ("au", [pid])),
                ("Delegate", ("b", True)),
                ("DefaultDependencies", ("b", False)),
                ("MemoryAccounting", ("b", True)),
                ("CPUAccounting", ("b", True)),
                ("TasksAccounting", ("b", True)),
                *(("IOAccounting", ("b", True)),) * (self.mode == "v2"),
                *self.properties,
            ]
            if self.unit.endswith(".slice"):
                properties = [item for item in properties if item[0] not in ("PIDs", "Slice", "Delegate")]
            bus.run_job("StartTransientUnit", "ssa(sv)a(sa(sv))", self.unit, "replace", properties, [])
        finally:
            bus.close()
        # systemd made the scope's directories, for this container: tagged as the cgroupfs driver tags its own,
        # so that a later command acts on them (and stops the unit) only when they carry this container's tag.
        for directory in self._directories():
            if os.path.isdir(directory):
                self._tag_made(directory)
        # The rest of the limits (and the device program) through the files of the delegated cgroup.
        self._write(self._resources, [])

    def _untagged_is_ours(self, directory: str) -> bool:
        """A directory of a hierarchy that keeps tags off cgroups (v1 controllers mounted without `xattr`, as
        systemd mounts them): the container's if it is the same cgroup as one that carries the container's tag
        (name=systemd or cgroup2). Where no hierarchy keeps tags, only the live init is evidence."""
        inner = self._inner(directory)
        if inner is None or posixpath.basename(inner) != self.unit:
            return False
        name = fs.tag_name(self.rootless)
        ours = (self._tag_value("made"), self._tag_value("joined"))
        return any(self._inner(other) == inner and fs.get_tag(other, name) in ours
                   for other in self._paths.values() if other != directory)

    def _inner(self, directory: str) -> str | None:
        """The cgroup `directory` is, relative to the mount of its hierarchy."""
        table = hierarchy.mounts()
        for mount in [*table.v1.values(), *([table.v2] if table.v2 else [])]:
            if hierarchy._inside(directory, mount):
                return directory[len(mount.mountpoint.rstrip("/")):]
        return None

    def _verify(self, init_pid: int | None) -> None:
        # The hierarchies systemd keeps no directory in (cpuset, net_cls... on v1) were never the container's:
        # nothing there to act on, and nothing to warn about.
        self._paths = {key: directory for key, directory in self._paths.items() if os.path.isdir(directory)}
        super()._verify(init_pid)

    def owns_unit(self) -> bool:
        """Whether the unit is verifiably this container's: one of its verified directories is the unit's own.
        A state file naming some other unit (sshd.service) then makes delete stop nothing."""
        return any(posixpath.basename(directory) == self.unit for directory in self._paths.values())

    def destroy(self, timeout: float = 2.0) -> None:
        if self._owner is not None and not self.owns_unit():
            # Not verifiably the container's (load_manager warned of each directory it dropped); or the
            # create died before systemd made the scope.
            return
        bus = Bus(self.rootless)
        try:
            bus.run_job("StopUnit", "ss", self.unit, "replace")
        except _DBusError as err:
            if err.name not in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.UnknownObject"):
                raise
        finally:
            bus.close()
        # systemd removes the scope's cgroup; what a container made below it may remain for a moment.
        for directory in self._directories():
            self._check_safe(directory)
            fs.remove_tree(directory, timeout)

    def to_state(self) -> dict:
        state = super().to_state()
        state.update(driver="systemd", unit=self.unit, slice=self.slice)
        return state


def load_systemd_manager(saved: dict, *, owner: str | None = None, init_pid: int | None = None):
    """As cgroups.load_manager: with ``owner``, only directories that carry this container's tag (or hold its
    live init) are kept, and the unit is stopped only if one of them is the unit's own cgroup."""
    try:
        unit = str(saved["unit"])
        paths = {str(key): str(value) for key, value in dict(saved["paths"]).items()}
        v2_mount = saved.get("v2_mount")
        manager = SystemdManager(str(saved["container_id"]), str(saved["mode"]), bool(saved["rootless"]), paths,
                                 v2_mount if isinstance(v2_mount, str) else None, None, [], owner=owner)
        manager.slice = str(saved.get("slice", ""))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CgroupError("the saved cgroup state is malformed") from None
    manager.unit = unit
    manager.started = True
    if owner is not None:
        manager._verify(init_pid)
    return manager
