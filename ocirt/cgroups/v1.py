"""cgroup v1: linux.resources to per-controller files, freezer, stats and the OOM eventfd."""

from __future__ import annotations

import os

from ocirt.cgroups import fs
from ocirt.errors import CgroupError, why

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What runc would translate each resource key into; used both to write and to know which
# controllers a resources dict needs (rootless must fail loudly when one of those is missing).
Step = tuple  # (controller, file, value)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _num(value: Any) -> str:
    return str(int(value))


def _device(entry: dict) -> str:
    return f"{int(entry['major'])}:{int(entry['minor'])}"


def _device_rule(entry: dict) -> tuple[str, str]:
    kind = entry.get("type") or "a"
    major = entry.get("major")
    minor = entry.get("minor")
    major_text = "*" if major is None or major == -1 else str(int(major))
    minor_text = "*" if minor is None or minor == -1 else str(int(minor))
    access = entry.get("access") or "rwm"
    target = "devices.allow" if entry.get("allow") else "devices.deny"
    return target, f"{kind} {major_text}:{minor_text} {access}"


def plan(resources: dict | None, notices: list[str]) -> list[Step]:
    """Ordered (controller, file, value) writes. Values of 0/None mean "leave as is", as in runc."""
    steps: list[Step] = []
    if not resources:
        return steps

    devices = resources.get("devices")
    if devices:
        for entry in devices:
            steps.append(("devices", *_device_rule(entry)))

    memory = resources.get("memory") or {}
    limit = memory.get("limit")
    swap = memory.get("swap")
    if limit or swap:
        # The limit/memsw pair must be written in an order that depends on the current values,
        # so it is one step resolved when written.
        steps.append(("memory", "@limit+swap", (limit or 0, swap or 0, bool(memory.get("checkBeforeUpdate")))))
    if memory.get("reservation"):
        steps.append(("memory", "memory.soft_limit_in_bytes", _num(memory["reservation"])))
    if memory.get("kernel"):
        notices.append("memory.kernel is ignored: the kernel no longer supports kernel memory limits")
    if memory.get("kernelTCP"):
        steps.append(("memory", "memory.kmem.tcp.limit_in_bytes", _num(memory["kernelTCP"])))
    swappiness = memory.get("swappiness")
    # -1 (or its uint64 spelling, which some engines send) means "inherit", as in runc.
    if swappiness is not None and int(swappiness) not in (-1, (1 << 64) - 1):
        swappiness = int(swappiness)
        if not 0 <= swappiness <= 100:
            raise CgroupError(f"cannot set memory.swappiness to {swappiness}: it must be between 0 and 100")
        steps.append(("memory", "memory.swappiness", str(swappiness)))
    if memory.get("disableOOMKiller"):
        steps.append(("memory", "memory.oom_control", "1"))
    if memory.get("useHierarchy") is not None:
        steps.append(("memory", "memory.use_hierarchy", "1" if memory["useHierarchy"] else "0"))

    cpu = resources.get("cpu") or {}
    if cpu.get("cpus"):
        steps.append(("cpuset", "cpuset.cpus", str(cpu["cpus"])))
    if cpu.get("mems"):
        steps.append(("cpuset", "cpuset.mems", str(cpu["mems"])))
    if cpu.get("shares"):
        steps.append(("cpu", "@shares", int(cpu["shares"])))
    if cpu.get("period"):
        steps.append(("cpu", "cpu.cfs_period_us", _num(cpu["period"])))
    if cpu.get("quota"):
        steps.append(("cpu", "cpu.cfs_quota_us", _num(cpu["quota"])))
    if cpu.get("burst") is not None:
        steps.append(("cpu", "cpu.cfs_burst_us", _num(cpu["burst"])))
    # The kernel refuses a runtime larger than the period, so the period goes first.
    if cpu.get("realtimePeriod"):
        steps.append(("cpu", "cpu.rt_period_us", _num(cpu["realtimePeriod"])))
    if cpu.get("realtimeRuntime"):
        steps.append(("cpu", "cpu.rt_runtime_us", _num(cpu["realtimeRuntime"])))
    if cpu.get("idle") is not None:
        steps.append(("cpu", "cpu.idle", _num(cpu["idle"])))

    pids = resources.get("pids") or {}
    if pids.get("limit"):
        limit_value = int(pids["limit"])
        steps.append(("pids", "pids.max", "max" if limit_value < 0 else str(limit_value)))

    block_io = resources.get("blockIO") or {}
    if block_io.get("weight"):
        steps.append(("blkio", "@weight", _num(block_io["weight"])))
    if block_io.get("leafWeight"):
        steps.append(("blkio", "blkio.leaf_weight", _num(block_io["leafWeight"])))
    for entry in block_io.get("weightDevice") or []:
        if entry.get("weight"):
            steps.append(("blkio", "@weight_device", f"{_device(entry)} {int(entry['weight'])}"))
        if entry.get("leafWeight"):
            steps.append(("blkio", "blkio.leaf_weight_device", f"{_device(entry)} {int(entry['leafWeight'])}"))
    for key, name in (("throttleReadBpsDevice", "blkio.throttle.read_bps_device"),
                      ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device"),
                      ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device"),
                      ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device")):
        for entry in block_io.get(key) or []:
            steps.append(("blkio", name, f"{_device(entry)} {int(entry['rate'])}"))

    for entry in resources.get("hugepageLimits") or []:
        steps.append(("hugetlb", f"hugetlb.{entry['pageSize']}.limit_in_bytes", _num(entry["limit"])))

    network = resources.get("network") or {}
    if network.get("classID"):
        steps.append(("net_cls", "net_cls.classid", _num(network["classID"])))
    for entry in network.get("priorities") or []:
        steps.append(("net_prio", "net_prio.ifpriomap", f"{entry['name']} {int(entry['priority'])}"))

    steps += fs.rdma_steps(resources)

    if resources.get("unified"):
        raise CgroupError("linux.resources.unified needs cgroup v2, but this host runs cgroup v1")
    return steps


def _write_memory_pair(directory: str, limit: int, swap: int, check_usage: bool) -> None:
    if check_usage and limit > 0:
        usage = fs.read_int(directory, "memory.usage_in_bytes")
        if limit < usage:
            raise CgroupError(f"cannot set memory.limit_in_bytes to {limit}: "
                              f"it is below the current usage of {usage} bytes (checkBeforeUpdate)")
    has_memsw = fs.exists(directory, "memory.memsw.limit_in_bytes")
    if not swap or not has_memsw:
        if swap and swap != -1:
            raise CgroupError(f"cannot set memory.memsw.limit_in_bytes to {swap}: "
                              "the kernel has no swap accounting (memory.memsw.*)")
        if limit:
            fs.write(directory, "memory.limit_in_bytes", str(limit))
        return
    if not limit:
        fs.write(directory, "memory.memsw.limit_in_bytes", str(swap))
        return
    # memsw must never drop below the memory limit: raise memsw first when growing, the limit
    # first when shrinking.
    current = fs.read_int(directory, "memory.limit_in_bytes", default=-1)
    if limit == -1 or (current != -1 and limit > current):
        fs.write(directory, "memory.memsw.limit_in_bytes", str(swap))
        fs.write(directory, "memory.limit_in_bytes", str(limit))
    else:
        fs.write(directory, "memory.limit_in_bytes", str(limit))
        fs.write(directory, "memory.memsw.limit_in_bytes", str(swap))


def _write_shares(directory: str, shares: int) -> None:
    fs.write(directory, "cpu.shares", str(shares))
    # The kernel clamps out-of-range shares silently; reading back turns that into an error.
    actual = fs.read_int(directory, "cpu.shares")
    if actual != shares:
        bound = "maximum" if shares > actual else "minimum"
        raise CgroupError(f"cannot set cpu.shares to {shares}: the {bound} the kernel allows is {actual}")


def write_steps(steps: list[Step], paths: dict[str, str]) -> None:
    for controller, name, value in steps:
        directory = paths.get(controller)
        if directory is None:
            raise CgroupError(f"cannot apply {controller} limits: the {controller} cgroup controller "
                              "is not mounted or not managed")
        if name == "@limit+swap":
            _write_memory_pair(directory, *value)
        elif name == "@shares":
            _write_shares(directory, value)
        elif name == "@weight":
            target = "blkio.weight" if fs.exists(directory, "blkio.weight") else "blkio.bfq.weight"
            fs.write(directory, target, value)
        elif name == "@weight_device":
            target = "blkio.weight_device" if fs.exists(directory, "blkio.weight_device") else "blkio.bfq.weight"
            fs.write(directory, target, value)
        else:
            fs.write(directory, name, value)


def ensure_cpuset(mountpoint: str, directory: str) -> None:
    """Give every level from the mount down to ``directory`` its parent's cpus and mems where it has none.

    A cpuset cgroup starts with empty cpuset.cpus and cpuset.mems and refuses tasks (ENOSPC) until both are
    set. A level made earlier by someone else (a plain mkdir) is just as empty, and so is everything made
    beneath it; runc fills each level from the top, and so does this.
    """
    relative = os.path.relpath(directory, mountpoint)
    if relative.startswith(".."):
        raise CgroupError(f"cannot set up cpuset {directory}: it is not under {mountpoint}")
    parent = mountpoint
    for part in ([] if relative == "." else relative.split("/")):
        current = os.path.join(parent, part)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if fs.read_or_none(current, name):
                continue
            value = fs.read_or_none(parent, name)
            if not value:
                raise CgroupError(f"cannot set up cpuset {current}: its parent {parent} has an empty {name}")
            try:
                fs.write(current, name, value)
            except CgroupError as err:
                raise CgroupError(f"cannot set up cpuset {current} from its parent: {err}") from None
        parent = current


def freeze(directory: str, timeout: float = 5.0) -> None:
    def request(_first: bool) -> None:
        # A cgroup stuck in FREEZING moves on when FROZEN is written again.
        fs.write(directory, "freezer.state", "FROZEN")

    fs.freeze_loop(directory, request, lambda: fs.read(directory, "freezer.state") == "FROZEN",
                   lambda: thaw(directory), timeout)


def thaw(directory: str) -> None:
    fs.write(directory, "freezer.state", "THAWED")


def is_frozen(directory: str) -> bool:
    return fs.read_or_none(directory, "freezer.state") in ("FROZEN", "FREEZING")


def oom_eventfd(memory_dir: str) -> int:
    event_fd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        control_fd = os.open(os.path.join(memory_dir, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            fs.write(memory_dir, "cgroup.event_control", f"{event_fd} {control_fd}")
        finally:
            os.close(control_fd)
    except OSError as err:
        os.close(event_fd)
        raise CgroupError(f"cannot watch {memory_dir}/memory.oom_control: {why(err)}") from None
    except CgroupError:
        os.close(event_fd)
        raise
    return event_fd


def _memory_entry(directory: str, prefix: str) -> dict:
    return {
        "limit": fs.read_int(directory, f"{prefix}.limit_in_bytes"),
        "usage": fs.read_int(directory, f"{prefix}.usage_in_bytes"),
        "max": fs.read_int(directory, f"{prefix}.max_usage_in_bytes"),
        "failcnt": fs.read_int(directory, f"{prefix}.failcnt"),
    }


def _blkio_entries(directory: str, name: str) -> list[dict]:
    text = fs.read_or_none(directory, name)
    entries: list[dict] = []
    if not text:
        return entries
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            entries.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
        elif len(parts) == 2 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            entries.append({"major": int(major), "minor": int(minor), "op": "", "value": int(parts[1])})
    return entries


def _int_list(text: str | None) -> list[int]:
    return [int(item) for item in text.split()] if text else []


def _cpu_list(text: str | None) -> list[int]:
    result: list[int] = []
    for part in (text or "").split(","):
        if "-" in part:
            low, high = part.split("-")
            result.extend(range(int(low), int(high) + 1))
        elif part.strip():
            result.append(int(part))
    return result


def stats(paths: dict[str, str]) -> dict:
    data: dict[str, Any] = {}
    acct = paths.get("cpuacct")
    cpu_dir = paths.get("cpu")
    usage: dict[str, Any] = {"total": 0, "percpu": [], "kernel": 0, "user": 0}
    throttling = {"periods": 0, "throttledPeriods": 0, "throttledTime": 0}
    if acct:
        usage["total"] = fs.read_int(acct, "cpuacct.usage")
        usage["percpu"] = _int_list(fs.read_or_none(acct, "cpuacct.usage_percpu"))
        percpu_kernel = _int_list(fs.read_or_none(acct, "cpuacct.usage_percpu_sys"))
        percpu_user = _int_list(fs.read_or_none(acct, "cpuacct.usage_percpu_user"))
        if percpu_kernel:
            usage["percpu_kernel"] = percpu_kernel
            usage["percpu_user"] = percpu_user
        ticks = fs.read_keyed(acct, "cpuacct.stat")
        nanoseconds_per_tick = 1_000_000_000 // _CLOCK_TICKS
        usage["user"] = ticks.get("user", 0) * nanoseconds_per_tick
        usage["kernel"] = ticks.get("system", 0) * nanoseconds_per_tick
    if cpu_dir:
        cpu_stat = fs.read_keyed(cpu_dir, "cpu.stat")
        throttling = {"periods": cpu_stat.get("nr_periods", 0),
                      "throttledPeriods": cpu_stat.get("nr_throttled", 0),
                      "throttledTime": cpu_stat.get("throttled_time", 0)}
    data["cpu"] = {"usage": usage, "throttling": throttling}

    cpuset_dir = paths.get("cpuset")
    if cpuset_dir:
        data["cpuset"] = {"cpus": _cpu_list(fs.read_or_none(cpuset_dir, "cpuset.cpus")),
                          "mems": _cpu_list(fs.read_or_none(cpuset_dir, "cpuset.mems"))}

    memory_dir = paths.get("memory")
    if memory_dir:
        raw = fs.read_keyed(memory_dir, "memory.stat")
        data["memory"] = {
            "cache": raw.get("total_cache", raw.get("cache", 0)),
            "usage": _memory_entry(memory_dir, "memory"),
            "swap": _memory_entry(memory_dir, "memory.memsw"),
            "kernel": _memory_entry(memory_dir, "memory.kmem"),
            "kernelTCP": _memory_entry(memory_dir, "memory.kmem.tcp"),
            "raw": raw,
        }
    else:
        data["memory"] = {}

    pids_dir = paths.get("pids")
    if pids_dir:
        data["pids"] = {"current": fs.read_int(pids_dir, "pids.current"), "limit": fs.read_int(pids_dir, "pids.max")}
    else:
        data["pids"] = {}

    blkio_dir = paths.get("blkio")
    blkio: dict[str, list] = {}
    if blkio_dir:
        for key, suffix in (("ioServiceBytesRecursive", "io_service_bytes_recursive"),
                            ("ioServicedRecursive", "io_serviced_recursive")):
            for prefix in ("blkio.", "blkio.bfq.", "blkio.throttle."):
                if fs.exists(blkio_dir, prefix + suffix):
                    blkio[key] = _blkio_entries(blkio_dir, prefix + suffix)
                    break
        for key, name in (("ioQueueRecursive", "blkio.io_queued_recursive"),
                          ("ioServiceTimeRecursive", "blkio.io_service_time_recursive"),
                          ("ioWaitTimeRecursive", "blkio.io_wait_time_recursive"),
                          ("ioMergedRecursive", "blkio.io_merged_recursive"),
                          ("ioTimeRecursive", "blkio.time_recursive"),
                          ("sectorsRecursive", "blkio.sectors_recursive")):
            if fs.exists(blkio_dir, name):
                blkio[key] = _blkio_entries(blkio_dir, name)
    data["blkio"] = blkio

    hugetlb_dir = paths.get("hugetlb")
    hugetlb: dict[str, dict] = {}
    if hugetlb_dir:
        for name in sorted(os.listdir(hugetlb_dir)):
            if name.startswith("hugetlb.") and name.endswith(".usage_in_bytes"):
                size = name[len("hugetlb."):-len(".usage_in_bytes")]
                if "." in size:
                    continue
                hugetlb[size] = {"usage": fs.read_int(hugetlb_dir, name),
                                 "max": fs.read_int(hugetlb_dir, f"hugetlb.{size}.max_usage_in_bytes"),
                                 "failcnt": fs.read_int(hugetlb_dir, f"hugetlb.{size}.failcnt")}
    data["hugetlb"] = hugetlb
    return data


class MigrationWarmer:
    """Pays the kernel's wait for the first cgroup migration while the runtime is busy with other work.

    On v1, a write to a ``cgroup.procs`` takes the global ``cgroup_threadgroup_rwsem`` for writing, and
    the first such write after a quiet spell waits for an RCU grace period (10-16 ms on the benchmark's
    VM; every runtime pays it, see docs/performance.md). Writes within about one grace period of the last
    one do not wait. A thread writes the runtime's own pid into the runtime's own cgroup (a migration to
    where it already is: nothing moves, no limit changes) every few ms from ``start`` until ``stop``, so
    the container's attach, just after, finds the lock warm. ``stop`` returns once the thread is done:
    the runtime forks only after it."""

    INTERVAL = 0.003

    def __init__(self, procs_file: str):
        import _thread

        self._procs_file = procs_file
        self._stopping = _thread.allocate_lock()
        self._stopping.acquire()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._running = True
        self.writes = 0  # migrations the kernel accepted
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            fd = os.open(self._procs_file, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self._done.release()
            return
        pid = str(os.getpid()).encode()
        try:
            while True:
                try:
                    os.write(fd, pid)
                except OSError:
                    break
                self.writes += 1
                if self._stopping.acquire(timeout=self.INTERVAL):
                    break
        finally:
            os.close(fd)
            self._done.release()

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._stopping.release()
            self._done.acquire()
