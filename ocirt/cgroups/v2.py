"""cgroup v2: linux.resources to unified-hierarchy files, cgroup.freeze/cgroup.kill and stats."""

from __future__ import annotations

import os

from ocirt.cgroups import fs
from ocirt.errors import CgroupError, why

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# (controller, file, value); the controller is what must be enabled in the parent's
# cgroup.subtree_control for the file to exist.
Step = tuple  # (controller, file, value)


SHARES_MIN, SHARES_MAX = 2, 262144  # what v1's cpu.shares takes, and what the map below covers


def shares_to_weight(shares: int) -> int:
    """The linear map runc, crun and systemd use: shares 2..262144 onto weight 1..10000."""
    if shares <= 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def checked_weight(shares: int) -> int:
    """cpu.weight for `shares`, refusing what v1's kernel would have clamped (and v2's would refuse)."""
    if not SHARES_MIN <= shares <= SHARES_MAX:
        bound, allowed = ("minimum", SHARES_MIN) if shares < SHARES_MIN else ("maximum", SHARES_MAX)
        raise CgroupError(f"cannot set cpu.shares to {shares}: the {bound} is {allowed} (cgroup v2's cpu.weight "
                          f"1-10000 stands for shares {SHARES_MIN}-{SHARES_MAX})")
    return shares_to_weight(shares)


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio weight 10..1000 onto io.weight 1..10000."""
    if weight <= 0:
        return 0
    return 1 + ((weight - 10) * 9999) // 990


def swap_max(swap: int, limit: int) -> int | None:
    """v1's swap means memory+swap; v2's memory.swap.max is swap alone. None means leave it."""
    if limit == -1 and not swap:
        return -1
    if swap == -1:
        return -1
    if not swap:
        return None
    if not limit or limit == -1:
        raise CgroupError("cannot set memory.swap.max: a swap limit needs a memory limit as well")
    if swap < limit:
        raise CgroupError(f"cannot set memory.swap.max: memory+swap ({swap}) is below the memory limit ({limit})")
    return swap - limit


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


def _device(entry: dict) -> str:
    return f"{int(entry['major'])}:{int(entry['minor'])}"


def plan(resources: dict | None, notices: list[str], *, rootless: bool = False) -> list[Step]:
    steps: list[Step] = []
    if not resources:
        return steps
    if resources.get("devices"):
        if rootless:
            notices.append("devices cgroup rules are not applied in rootless mode; "
                           "the user namespace already forbids mknod")
        else:
            # Checked now, so a bad rule fails before anything is made; compiled and attached last.
            from ocirt.cgroups import ebpf

            ebpf.compile_rules(list(resources["devices"]))
            steps.append(("", "@devices", list(resources["devices"])))

    memory = resources.get("memory") or {}
    limit = int(memory.get("limit") or 0)
    swap = int(memory.get("swap") or 0)
    if memory.get("checkBeforeUpdate") and limit > 0:
        steps.append(("memory", "@check_usage", limit))
    swap_value = swap_max(swap, limit)
    # Setting swap first lets a lower memory.max reclaim into swap instead of failing.
    if swap_value is not None:
        steps.append(("memory", "@swap", _max(swap_value)))
    if limit:
        steps.append(("memory", "memory.max", _max(limit)))
    if memory.get("reservation"):
        steps.append(("memory", "memory.low", _max(int(memory["reservation"]))))
    for key in ("kernel", "kernelTCP"):
        if memory.get(key):
            notices.append(f"memory.{key} is ignored: cgroup v2 has no separate kernel memory limit")
    if memory.get("swappiness") not in (None, -1, (1 << 64) - 1):
        notices.append("memory.swappiness is ignored: cgroup v2 has no per-cgroup swappiness")
    if memory.get("disableOOMKiller"):
        notices.append("memory.disableOOMKiller is ignored: cgroup v2 cannot disable the OOM killer per cgroup")

    cpu = resources.get("cpu") or {}
    if cpu.get("shares"):
        shares = int(cpu["shares"])
        if SHARES_MIN <= shares <= SHARES_MAX:
            steps.append(("cpu", "cpu.weight", str(shares_to_weight(shares))))
        else:
            # Refused when written, so that a create fails on it like on any other refused write.
            steps.append(("cpu", "@shares", shares))
    quota = int(cpu.get("quota") or 0)
    period = int(cpu.get("period") or 0)
    if quota or period:
        steps.append(("cpu", "cpu.max", f"{_max(quota) if quota else 'max'} {period or 100000}"))
    if cpu.get("burst") is not None:
        steps.append(("cpu", "cpu.max.burst", str(int(cpu["burst"]))))
    if cpu.get("idle") is not None:
        steps.append(("cpu", "cpu.idle", str(int(cpu["idle"]))))
    if cpu.get("realtimeRuntime") or cpu.get("realtimePeriod"):
        raise CgroupError("cpu.realtimeRuntime and cpu.realtimePeriod are not supported on cgroup v2")
    if cpu.get("cpus"):
        steps.append(("cpuset", "cpuset.cpus", str(cpu["cpus"])))
    if cpu.get("mems"):
        steps.append(("cpuset", "cpuset.mems", str(cpu["mems"])))

    pids = resources.get("pids") or {}
    if pids.get("limit"):
        steps.append(("pids", "pids.max", _max(int(pids["limit"]))))

    block_io = resources.get("blockIO") or {}
    if block_io.get("weight"):
        steps.append(("io", "@weight", int(block_io["weight"])))
    for entry in block_io.get("weightDevice") or []:
        if entry.get("weight"):
            steps.append(("io", "@weight_device", (_device(entry), int(entry["weight"]))))
    if block_io.get("leafWeight"):
        notices.append("blockIO.leafWeight is ignored: cgroup v2 has no leaf weight")
    for key, field in (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                       ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops")):
        for entry in block_io.get(key) or []:
            rate = int(entry["rate"])
            steps.append(("io", "io.max", f"{_device(entry)} {field}={rate if rate > 0 else 'max'}"))

    for entry in resources.get("hugepageLimits") or []:
        steps.append(("hugetlb", f"hugetlb.{entry['pageSize']}.max", _max(int(entry["limit"]))))

    network = resources.get("network") or {}
    if network.get("classID") or network.get("priorities"):
        notices.append("network.classID and network.priorities are ignored: cgroup v2 has no net_cls/net_prio")

    steps += fs.rdma_steps(resources)

    for key, value in (resources.get("unified") or {}).items():
        if "/" in key or key in (".", "..") or key.startswith("cgroup.procs") or key == "cgroup.threads":
            raise CgroupError(f"cannot set unified key {key!r}: it is not a cgroup limit file")
        controller = key.split(".", 1)[0]
        steps.append((controller if controller != "cgroup" else "", key, str(value)))
    return steps


def write_steps(steps: list[Step], directory: str) -> None:
    for _controller, name, value in steps:
        if name == "@check_usage":
            usage = fs.read_int(directory, "memory.current")
            if value < usage:
                raise CgroupError(f"cannot set memory.max to {value}: it is below the current usage of "
                                  f"{usage} bytes (checkBeforeUpdate)")
        elif name == "@swap":
            if not fs.exists(directory, "memory.swap.max"):
                if value == "max":
                    continue
                raise CgroupError(f"cannot set memory.swap.max to {value}: the kernel has no swap accounting")
            fs.write(directory, "memory.swap.max", value)
        elif name == "@shares":
            fs.write(directory, "cpu.weight", str(checked_weight(value)))
        elif name == "@devices":
            from ocirt.cgroups import ebpf

            ebpf.apply(directory, value)
        elif name == "@weight":
            if fs.exists(directory, "io.bfq.weight"):
                fs.write(directory, "io.bfq.weight", str(value))
            else:
                fs.write(directory, "io.weight", str(blkio_weight_to_io_weight(value)))
        elif name == "@weight_device":
            device, weight = value
            if fs.exists(directory, "io.bfq.weight"):
                fs.write(directory, "io.bfq.weight", f"{device} {weight}")
            else:
                fs.write(directory, "io.weight", f"{device} {blkio_weight_to_io_weight(weight)}")
        else:
            fs.write(directory, name, value)


def controllers_needed(steps: list[Step]) -> set[str]:
    return {controller for controller, _name, _value in steps if controller}


def enable_controllers(mount_root: str, directory: str, controllers: set[str], *, rootless: bool = False) -> None:
    """Turn the controllers on in every ancestor's subtree_control, top-down, so `directory` gets their files.

    Only the ones asked for, and only where they are not on yet: a cgroup with processes of its own
    refuses any change to its subtree_control (v2's no-internal-processes rule), so touching an ancestor
    that already offers a controller could only fail.
    """
    if not controllers:
        return
    relative = os.path.relpath(directory, mount_root)
    parts = [] if relative == "." else relative.split("/")
    current = mount_root
    for part in parts:
        available = set((fs.read_or_none(current, "cgroup.controllers") or "").split())
        enabled = set((fs.read_or_none(current, "cgroup.subtree_control") or "").split())
        for controller in sorted(controllers - enabled):
            if controller not in available:
                raise CgroupError(f"cannot use the {controller} controller for {directory}: {current} does not "
                                  f"offer it (cgroup.controllers: {' '.join(sorted(available)) or 'none'})"
                                  + (_delegation_hint(current) if rootless else ""))
            if current != mount_root and fs.procs_in(current):
                # The kernel refuses domain controllers here (EBUSY), and for threaded ones (pids,
                # cpu) it leaves the child unable to take any process (EOPNOTSUPP): say why up front.
                raise CgroupError(f"cannot enable the {controller} controller for {directory}: {current} holds "
                                  f"processes ({' '.join(map(str, fs.procs_in(current)[:5]))}) and cgroup v2 gives "
                                  "controllers only to the children of a cgroup without processes (EBUSY on "
                                  f"{current}/cgroup.subtree_control); use a cgroupsPath beside it")
            _enable(current, controller, directory)
        current = os.path.join(current, part)


def _enable(parent: str, controller: str, directory: str) -> None:
    path = os.path.join(parent, "cgroup.subtree_control")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, f"+{controller}".encode())
        finally:
            os.close(fd)
    except OSError as err:
        import errno

        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        reason = {
            errno.EBUSY: f"{parent} holds processes of its own, and cgroup v2 gives controllers only to the "
                         "children of a cgroup without processes",
            errno.EACCES: f"uid {os.geteuid()} may not write it" + _delegation_hint(parent),
            errno.EPERM: f"uid {os.geteuid()} may not write it" + _delegation_hint(parent),
            errno.EOPNOTSUPP: f"{parent} is threaded or the controller cannot be enabled there",
            errno.ENOENT: f"the kernel has no {controller} controller",
        }.get(err.errno or 0, why(err))
        raise CgroupError(f"cannot enable the {controller} controller for {directory}: writing +{controller} to "
                          f"{path} failed with {name}: {reason}") from None


def _delegation_hint(directory: str) -> str:
    """Why an unprivileged user lacks a controller: systemd hands user@UID.service only what Delegate= says."""
    marker = "/user@"
    if marker not in directory:
        return ""
    service = directory[directory.index(marker) + 1:].split("/", 1)[0]
    return (f"; systemd delegates to {service} only the controllers its Delegate= names (by default cpu memory "
            "pids): io and cpuset need a drop-in such as /etc/systemd/system/user@.service.d/delegate.conf with "
            "[Service] Delegate=cpu cpuset io memory pids")


def missing_for_user(base: str) -> list[str]:
    """Controllers the root offers but the delegated cgroup `base` does not get."""
    mount_root = base
    while os.path.dirname(mount_root) != mount_root and fs.exists(os.path.dirname(mount_root), "cgroup.controllers"):
        mount_root = os.path.dirname(mount_root)
    everything = set((fs.read_or_none(mount_root, "cgroup.controllers") or "").split())
    offered = set((fs.read_or_none(base, "cgroup.controllers") or "").split())
    return sorted(everything - offered)


def freeze(directory: str, timeout: float = 5.0) -> None:
    def request(first: bool) -> None:
        if first:
            fs.write(directory, "cgroup.freeze", "1")

    fs.freeze_loop(directory, request, lambda: is_frozen(directory), lambda: thaw(directory), timeout)


def thaw(directory: str) -> None:
    fs.write(directory, "cgroup.freeze", "0")


def is_frozen(directory: str) -> bool:
    return fs.read_keyed(directory, "cgroup.events").get("frozen") == 1


def kill(directory: str) -> bool:
    """cgroup.kill SIGKILLs the whole subtree atomically; False when the kernel lacks it (< 5.14)."""
    if not fs.exists(directory, "cgroup.kill"):
        return False
    fs.write(directory, "cgroup.kill", "1")
    return True


def hugetlb_stats(directory: str) -> dict:
    result: dict[str, dict] = {}
    for name in sorted(os.listdir(directory)):
        if name.startswith("hugetlb.") and name.endswith(".current") and name.count(".") == 2:
            size = name.split(".")[1]
            result[size] = {"usage": fs.read_int(directory, name),
                            "max": fs.read_int(directory, f"hugetlb.{size}.max"),
                            "failcnt": fs.read_keyed(directory, f"hugetlb.{size}.events").get("max", 0)}
    return result


def stats(directory: str) -> dict:
    data: dict[str, Any] = {}
    cpu_stat = fs.read_keyed(directory, "cpu.stat")
    data["cpu"] = {
        "usage": {"total": cpu_stat.get("usage_usec", 0) * 1000,
                  "kernel": cpu_stat.get("system_usec", 0) * 1000,
                  "user": cpu_stat.get("user_usec", 0) * 1000},
        "throttling": {"periods": cpu_stat.get("nr_periods", 0),
                       "throttledPeriods": cpu_stat.get("nr_throttled", 0),
                       "throttledTime": cpu_stat.get("throttled_usec", 0) * 1000},
    }
    if fs.exists(directory, "memory.current"):
        raw = fs.read_keyed(directory, "memory.stat")
        events = fs.read_keyed(directory, "memory.events")
        usage = fs.read_int(directory, "memory.current")
        swap_usage = fs.read_int(directory, "memory.swap.current")
        data["memory"] = {
            "cache": raw.get("file", 0),
            "usage": {"limit": fs.read_int(directory, "memory.max"), "usage": usage,
                      "max": fs.read_int(directory, "memory.peak"), "failcnt": events.get("max", 0)},
            "swap": {"limit": fs.read_int(directory, "memory.swap.max"), "usage": swap_usage + usage,
                     "max": 0, "failcnt": 0},
            "raw": raw,
        }
    else:
        data["memory"] = {}
    if fs.exists(directory, "pids.current"):
        data["pids"] = {"current": fs.read_int(directory, "pids.current"), "limit": fs.read_int(directory, "pids.max")}
    else:
        data["pids"] = {}
    blkio: dict[str, list] = {}
    text = fs.read_or_none(directory, "io.stat")
    if text:
        service_bytes: list[dict] = []
        serviced: list[dict] = []
        for line in text.splitlines():
            parts = line.split()
            major, minor = (int(item) for item in parts[0].split(":"))
            fields = dict(item.split("=", 1) for item in parts[1:] if "=" in item)
            for key, op, target in (("rbytes", "Read", service_bytes), ("wbytes", "Write", service_bytes),
                                    ("rios", "Read", serviced), ("wios", "Write", serviced)):
                if key in fields:
                    target.append({"major": major, "minor": minor, "op": op, "value": int(fields[key])})
        blkio = {"ioServiceBytesRecursive": service_bytes, "ioServicedRecursive": serviced}
    data["blkio"] = blkio
    data["hugetlb"] = hugetlb_stats(directory)
    return data
