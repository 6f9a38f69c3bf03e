"""Resource control of a live container: update, pause/resume, ps and events (runc's semantics).

Each operation loads the container under its lock, checks the status, and works through the cgroup
Manager rebuilt from the state (``container.runtime["cgroup"]``). `events` releases the lock before it
starts streaming, so it never blocks the other commands on the same id.
"""

from __future__ import annotations

import os
import time

from ocirt import log
from ocirt.errors import CgroupError, InvalidState, OcirtError, why
from ocirt.state import CREATED, PAUSED, RUNNING, STOPPED, Container, process_start_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ocirt.cgroups import Manager


def _manager(container: Container) -> Manager:
    from ocirt.teardown import cgroup_manager

    manager = cgroup_manager(container)
    if manager is None:
        raise OcirtError(f"container {container.id!r} has no cgroup: its state predates cgroup management")
    return manager


# -- update ---------------------------------------------------------------------------------------------------
# The linux.resources fields `update` honours, as runc does; everything else in the input is ignored.
# A zero (or "") leaves a value unchanged, except cpu.burst and cpu.idle, which runc passes on as given.
_UNSIGNED = "unsigned"
_SIGNED = "signed"
_TEXT = "text"
_FLAG = "bool"
UPDATE_FIELDS: dict[str, dict[str, str]] = {
    "memory": {"limit": _SIGNED, "reservation": _SIGNED, "swap": _SIGNED, "checkBeforeUpdate": _FLAG},
    "cpu": {"shares": _UNSIGNED, "quota": _SIGNED, "burst": _UNSIGNED, "period": _UNSIGNED,
            "realtimeRuntime": _SIGNED, "realtimePeriod": _UNSIGNED, "cpus": _TEXT, "mems": _TEXT,
            "idle": _SIGNED},
    "blockIO": {"weight": _UNSIGNED},
    "pids": {"limit": _SIGNED},
}
_KEPT_WHEN_ZERO = {("cpu", "burst"), ("cpu", "idle"), ("memory", "checkBeforeUpdate")}


def parse_resources(text: str | bytes, source: str) -> dict:
    """The LinuxResources JSON of `update --resources`, checked and reduced to the fields update applies."""
    from ocirt.fastjson import JSONError, loads

    try:
        data = loads(text)
    except (JSONError, UnicodeDecodeError) as err:
        raise OcirtError(f"{source}: malformed JSON: {err}") from None
    except SystemError:
        # The C scanner reports some errors only when json.decoder is loaded; let it say what is wrong.
        import json

        try:
            data = json.loads(text)
        except ValueError as err:
            raise OcirtError(f"{source}: malformed JSON: {err}") from None
    if not isinstance(data, dict):
        raise OcirtError(f"{source}: the resources must be a JSON object")
    resources: dict = {}
    for section, fields in UPDATE_FIELDS.items():
        given = data.get(section)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise OcirtError(f"{source}: {section} must be an object")
        for name, kind in fields.items():
            value = given.get(name)
            if value is None:
                continue
            where = f"{source}: {section}.{name}"
            if kind == _TEXT:
                if not isinstance(value, str):
                    raise OcirtError(f"{where} must be a string")
            elif kind == _FLAG:
                if not isinstance(value, bool):
                    raise OcirtError(f"{where} must be true or false")
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise OcirtError(f"{where} must be an integer, not {value!r}")
                if kind == _UNSIGNED and value < 0:
                    raise OcirtError(f"{where} cannot be negative ({value})")
            if value in (0, "", False) and (section, name) not in _KEPT_WHEN_ZERO:
                continue
            resources.setdefault(section, {})[name] = value
    unified = data.get("unified")
    if unified:
        if not isinstance(unified, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in unified.items()):
            raise OcirtError(f"{source}: unified must map file names to strings")
        resources["unified"] = dict(unified)
    devices = data.get("devices")
    if devices is not None:
        # The whole new rule list: on cgroup v2 it replaces the device program.
        if not isinstance(devices, list) or not all(isinstance(rule, dict) and isinstance(rule.get("allow"), bool)
                                                    for rule in devices):
            raise OcirtError(f"{source}: devices must be a list of rules, each with a boolean allow")
        resources["devices"] = [dict(rule) for rule in devices]
    return resources


def ram_in_bytes(text: str, flag: str) -> int:
    """docker's RAMInBytes: bytes, or a number with a binary suffix (k, m, g, t, p; optional i and b)."""
    if text == "-1":
        return -1
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?", text)
    if not match:
        raise OcirtError(f"invalid value for {flag}: {text!r} is not a size (use bytes, -1, or a suffix "
                         "such as 512k, 32m, 1g)")
    try:
        number = float(match.group(1))
    except ValueError:
        raise OcirtError(f"invalid value for {flag}: {text!r} is not a size") from None
    unit = (match.group(2) or "").lower()
    multiplier = 1 << (10 * " kmgtp".index(unit)) if unit else 1
    return int(number * multiplier)


def parse_integer(text: str, flag: str, *, unsigned: bool) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise OcirtError(f"invalid value for {flag}: {text!r} is not an integer") from None
    if unsigned and value < 0:
        raise OcirtError(f"invalid value for {flag}: {text!r} cannot be negative")
    return value


def _merge(into: dict, changes: dict) -> dict:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in into.items()}
    for section, values in changes.items():
        if isinstance(values, dict):
            merged.setdefault(section, {}).update(values)
        else:
            merged[section] = values
    return merged


def _complete_for_v2(manager: Manager, resources: dict) -> dict:
    """cgroup v2 writes quota and period together (cpu.max), and swap relative to the memory limit: fill
    the half the caller left out from the current files, as runc does from its saved config."""
    directory = manager.paths().get("unified")
    if manager.mode != "v2" or not directory:
        return resources
    from ocirt.cgroups import fs

    resources = _merge({}, resources)
    cpu = resources.get("cpu") or {}
    if bool(cpu.get("quota")) != bool(cpu.get("period")):
        current = (fs.read_or_none(directory, "cpu.max") or "max 100000").split()
        if not cpu.get("quota") and current[0] != "max":
            cpu["quota"] = int(current[0])
        if not cpu.get("period") and len(current) > 1:
            cpu["period"] = int(current[1])
    memory = resources.get("memory") or {}
    if memory.get("swap") and memory["swap"] != -1 and not memory.get("limit"):
        current_limit = fs.read_or_none(directory, "memory.max")
        if current_limit and current_limit != "max":
            memory["limit"] = int(current_limit)
    return resources


def update(root: str, container_id: str, resources: dict) -> None:
    """Apply `resources` (already reduced by parse_resources or built from flags) to a live container."""
    memory = resources.get("memory")
    if memory and memory.get("limit", 0) > 0 and memory.get("swap", 0) > 0 and memory["swap"] < memory["limit"]:
        raise OcirtError(f"memory+swap limit ({memory['swap']}) cannot be below the memory limit "
                         f"({memory['limit']}): --memory-swap counts memory and swap together")
    if memory and memory.get("limit") == -1 and "swap" not in memory:
        # runc reads "memory -1" as "memory and swap unlimited": memsw may not stay below the limit.
        memory["swap"] = -1
    container = Container.load(root, container_id)
    try:
        status = container.status()
        if status not in (CREATED, RUNNING, PAUSED):
            raise InvalidState(f"cannot update container {container_id!r}: container not running "
                               f"(it is {status})")
        manager = _manager(container)
        if resources:
            manager.update(_complete_for_v2(manager, resources))
        for notice in manager.notices:
            log.warning(notice)
        # What `update` changed, for later commands (and people) to read back: the kernel files stay the truth.
        container.runtime["resources"] = _merge(container.runtime.get("resources") or {}, resources)
        container.save()
    finally:
        container.close()


# -- pause / resume -------------------------------------------------------------------------------------------
def pause(root: str, container_id: str) -> None:
    container = Container.load(root, container_id)
    try:
        status = container.status()
        if status != RUNNING:
            raise InvalidState(f"cannot pause container {container_id!r}: container not running (it is {status})")
        _manager(container).freeze()
    finally:
        container.close()


def resume(root: str, container_id: str) -> None:
    container = Container.load(root, container_id)
    try:
        status = container.status()
        if status != PAUSED:
            raise InvalidState(f"cannot resume container {container_id!r}: container not paused (it is {status})")
        _manager(container).thaw()
    finally:
        container.close()


# -- ps -------------------------------------------------------------------------------------------------------
def processes(root: str, container_id: str) -> list[int]:
    """Host pids of the container's processes: its cgroup's, else (rootless without a delegated cgroup)
    the processes of its pid namespace, else the init and its descendants."""
    container = Container.load(root, container_id, shared=True)
    try:
        manager = _manager(container) if container.runtime.get("cgroup") else None
        init_pid = container.pid if container.init_alive() else 0
    finally:
        container.close()
    if manager is not None and manager.paths():
        return manager.pids()
    if not init_pid:
        return []
    return _pid_namespace_members(init_pid) or _descendants(init_pid)


def _pid_namespace_members(init_pid: int) -> list[int]:
    try:
        target = os.stat(f"/proc/{init_pid}/ns/pid")
        if target.st_ino == os.stat("/proc/self/ns/pid").st_ino:
            return []
    except OSError:
        return []
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{name}/ns/pid")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            members.append(int(name))
    return sorted(members)


def _descendants(init_pid: int) -> list[int]:
    found = [init_pid]
    index = 0
    while index < len(found):
        pid = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    found.extend(int(child) for child in handle.read().split() if int(child) not in found)
            except OSError:
                continue
    return found


def ps_table(pids: list[int], ps_args: list[str]) -> str:
    """Run ps (default `ps -ef`) and keep the header and the rows whose PID column is one of ``pids``."""
    import subprocess

    try:
        result = subprocess.run(["ps", *(ps_args or ["-ef"])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                check=False)
    except OSError as err:
        raise OcirtError(f"cannot run ps: {why(err)}") from None
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        raise OcirtError(f"ps {' '.join(ps_args or ['-ef'])} failed (exit {result.returncode}): "
                         f"{output.strip().splitlines()[-1] if output.strip() else 'no output'}")
    lines = output.split("\n")
    titles = lines[0].split()
    if "PID" not in titles:
        raise OcirtError("couldn't find PID field in ps output: pass ps options that print a PID column")
    column = titles.index("PID")
    wanted = {str(pid) for pid in pids}
    kept = [lines[0]]
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column] in wanted:
            kept.append(line)
    return "\n".join(kept) + "\n"


# -- events ---------------------------------------------------------------------------------------------------
def _omit_empty(entry: dict, always: tuple[str, ...] = ()) -> dict:
    """Go's `omitempty`: runc drops zero numbers, empty lists and maps, except the fields it always prints."""
    return {key: value for key, value in entry.items() if key in always or value not in (0, [], {}, "", None)}


def runc_stats(raw: dict) -> dict:
    """Manager.stats() in the exact shape of runc's `events` data (types.Stats)."""
    cpu = raw.get("cpu") or {}
    usage = dict(cpu.get("usage") or {})
    data: dict = {
        "cpu": {"usage": _omit_empty(usage, ("kernel", "user")),
                "throttling": _omit_empty(dict(cpu.get("throttling") or {}))},
    }
    cpuset = raw.get("cpuset")
    if cpuset is not None:
        data["cpuset"] = _omit_empty(dict(cpuset))
    memory = raw.get("memory") or {}
    memory_out: dict = {}
    if memory.get("cache"):
        memory_out["cache"] = memory["cache"]
    for key in ("usage", "swap", "kernel", "kernelTCP"):
        entry = memory.get(key)
        if entry is not None:
            memory_out[key] = _omit_empty(dict(entry), ("limit", "failcnt"))
    if memory.get("raw"):
        memory_out["raw"] = memory["raw"]
    data["memory"] = memory_out
    data["pids"] = _omit_empty(dict(raw.get("pids") or {}))
    data["blkio"] = {key: [_omit_empty(entry) for entry in entries]
                     for key, entries in (raw.get("blkio") or {}).items() if entries}
    data["hugetlb"] = {size: _omit_empty(dict(entry), ("failcnt",))
                       for size, entry in (raw.get("hugetlb") or {}).items()}
    data["intel_rdt"] = {}
    data["network_interfaces"] = None
    return data


def stats_event(container_id: str, manager: Manager) -> dict:
    return {"type": "stats", "id": container_id, "data": runc_stats(manager.stats())}


def container_stats(root: str, container_id: str) -> dict:
    container = Container.load(root, container_id, shared=True)
    try:
        if container.status() == STOPPED:
            raise InvalidState(f"container {container_id!r} is not running")
        manager = _manager(container)
    finally:
        container.close()
    return stats_event(container_id, manager)


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds: "5s", "250ms", "1m30s", "1.5h"."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    rest = text.strip()
    sign = -1.0 if rest.startswith("-") else 1.0
    rest = rest.lstrip("+-")
    if rest == "0":
        return 0.0
    if not rest:
        raise OcirtError(f"invalid duration {text!r}")
    total = 0.0
    while rest:
        index = 0
        while index < len(rest) and (rest[index].isdigit() or rest[index] == "."):
            index += 1
        number, rest = rest[:index], rest[index:]
        unit_end = 0
        while unit_end < len(rest) and not (rest[unit_end].isdigit() or rest[unit_end] == "."):
            unit_end += 1
        unit, rest = rest[:unit_end], rest[unit_end:]
        if not number or unit not in units:
            raise OcirtError(f"invalid duration {text!r}: use a number with a unit, such as 5s or 500ms")
        try:
            total += float(number) * units[unit]
        except ValueError:
            raise OcirtError(f"invalid duration {text!r}") from None
    return sign * total


class _OomWatch:
    """OOM kills of the container's memory cgroup: the v1 eventfd, or v2's memory.events oom_kill count."""

    def __init__(self, manager: Manager):
        self.fd: int | None = None
        self.v1_control: str | None = None
        self.v2_events: str | None = None
        self.v2_count = 0
        try:
            self.fd = manager.oom_eventfd()
        except CgroupError as err:
            log.warning(f"OOM events are not reported: {err}")
        if self.fd is not None:
            self.v1_control = os.path.join(manager.paths()["memory"], "cgroup.event_control")
        elif manager.mode == "v2" and manager.paths().get("unified"):
            self.v2_events = os.path.join(manager.paths()["unified"], "memory.events")
            self.v2_count = self._v2_read()

    def _v2_read(self) -> int:
        assert self.v2_events is not None
        try:
            with open(self.v2_events) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    @property
    def polls(self) -> bool:
        return self.v2_events is not None

    def read_fd(self) -> int:
        """OOM notifications pending on the eventfd (0 when the cgroup was removed, not OOM-killed)."""
        assert self.fd is not None
        try:
            value = int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0
        # The kernel also signals the eventfd when the cgroup goes away.
        if self.v1_control and not os.path.exists(self.v1_control):
            self.close()
            return 0
        return value

    def poll_v2(self) -> int:
        count = self._v2_read()
        new = max(0, count - self.v2_count)
        self.v2_count = count
        return new

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def stream_events(root: str, container_id: str, interval: float, emit: Callable[[dict], None]) -> None:
    """Stats every `interval` seconds and an `oom` event per OOM kill, until the container stops."""
    import select

    from ocirt import syscalls as sc

    container = Container.load(root, container_id, shared=True)
    try:
        if container.status() == STOPPED:
            raise InvalidState(f"container {container_id!r} is not running")
        manager = _manager(container)
        init_pid, start_time = container.pid, container.runtime.get("start_time")
    finally:
        container.close()
    try:
        pidfd = sc.pidfd_open(init_pid)
    except OSError:
        raise InvalidState(f"container {container_id!r} is not running") from None
    watch = _OomWatch(manager)
    try:
        if process_start_time(init_pid) != start_time:
            raise InvalidState(f"container {container_id!r} is not running")
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if watch.fd is not None:
            poller.register(watch.fd, select.POLLIN)
        next_stats = time.monotonic() + interval
        stopped = False
        while not stopped:
            wait = max(0.0, next_stats - time.monotonic())
            if watch.polls:
                wait = min(wait, 0.1)
            ready = {fd for fd, _mask in poller.poll(int(wait * 1000) + (1 if wait else 0))}
            stopped = pidfd in ready
            if watch.fd is not None and (watch.fd in ready or stopped):
                # After the init died, drain what the kernel reported before it (an OOM kill of the init).
                if watch.fd in ready or select.select([watch.fd], [], [], 0)[0]:
                    pending = watch.read_fd()
                    if pending:
                        emit({"type": "oom", "id": container_id})
                    elif watch.fd is None:
                        stopped = True
            if watch.polls:
                for _ in range(watch.poll_v2()):
                    emit({"type": "oom", "id": container_id})
            if not stopped and time.monotonic() >= next_stats:
                try:
                    event = stats_event(container_id, manager)
                except (CgroupError, OSError) as err:
                    log.error(f"cannot read the stats of {container_id!r}: {err}")
                else:
                    emit(event)
                next_stats += interval
                if next_stats < time.monotonic():
                    next_stats = time.monotonic() + interval
    finally:
        watch.close()
        os.close(pidfd)


__all__ = ["UPDATE_FIELDS", "container_stats", "parse_duration", "parse_integer", "parse_resources", "pause",
           "processes", "ps_table", "ram_in_bytes", "resume", "runc_stats", "stream_events", "update"]
