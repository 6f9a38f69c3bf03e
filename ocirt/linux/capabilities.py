"""The container process's five capability sets, from ``process.capabilities``.

The parent parses the config once with ``prepare``; the init then calls, in this order:
``drop_bounding`` (needs CAP_SETPCAP, so before leaving uid 0), ``keep_caps_for_uid_switch``, the
uid/gid switch, then ``apply``. None of these three import anything, so they are safe after
``pivot_root``.

A set the config leaves out is empty, and so is every set when ``process.capabilities`` is absent:
the container gets exactly what it asks for. Inheritable stays empty unless the config names caps for it.
"""

from __future__ import annotations

from ocirt import log, syscalls
from ocirt.errors import ConfigError, OcirtError, why

CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
CAPABILITY_NAMES = {number: name for name, number in CAPABILITIES.items()}

SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

_last_cap: int | None = None


def last_cap() -> int:
    """The highest capability number this kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _last_cap = int(f.read())
        except (OSError, ValueError):
            # Without that file, ask the bounding set: the kernel answers EINVAL past its last cap.
            cap = 0
            while True:
                try:
                    syscalls.prctl(syscalls.PR_CAPBSET_READ, cap + 1)
                except OSError:
                    break
                cap += 1
            _last_cap = cap
    return _last_cap


def names_of(mask: int) -> list[str]:
    return [CAPABILITY_NAMES.get(cap, f"CAP_{cap}") for cap in range(mask.bit_length()) if mask >> cap & 1]


def capability_mask(names: object, where: str) -> int:
    """The bit mask of ``names``; ``where`` is the JSON path reported when a name is unknown.

    A name that is no capability at all is a config error: a typo (CAP_SYSADMIN) would otherwise run the
    container with less than it asked for. A known capability this kernel lacks "cannot be mapped to a
    relevant kernel interface", which config.md says MUST be logged as a warning: it is left out, so a
    config written for a newer kernel still runs.
    """
    if names is None:
        return 0
    if not isinstance(names, list):
        raise ConfigError(f"{where} must be an array of capability names")
    top = last_cap()
    mask = 0
    for i, name in enumerate(names):
        cap = CAPABILITIES.get(name) if isinstance(name, str) else None
        if cap is None:
            hint = "" if _well_formed(name) else ": capability names look like CAP_SYS_ADMIN"
            raise ConfigError(f"unknown capability {name!r} in {where}[{i}]{hint}")
        if cap > top:
            log.warning(f"capability {name} in {where} is not known to this kernel (its last is {top}): "
                        "not granted")
            continue
        mask |= 1 << cap
    return mask


def _well_formed(name: object) -> bool:
    return isinstance(name, str) and name.startswith("CAP_") and len(name) > 4 and \
        all(c.isupper() or c.isdigit() or c == "_" for c in name[4:])


class CapabilityPlan:
    """The five sets as masks, checked against each other and against this kernel."""

    __slots__ = ("bounding", "effective", "inheritable", "permitted", "ambient", "last_cap")

    def __init__(self, bounding: int, effective: int, inheritable: int, permitted: int, ambient: int,
                 last_cap: int):
        self.bounding = bounding
        self.effective = effective
        self.inheritable = inheritable
        self.permitted = permitted
        self.ambient = ambient
        self.last_cap = last_cap

    def __repr__(self) -> str:
        sets = ", ".join(f"{name}={getattr(self, name):#x}" for name in SETS)
        return f"CapabilityPlan({sets})"


def prepare(capabilities: dict | None, where: str = "process.capabilities") -> CapabilityPlan:
    """Parse ``process.capabilities`` in the parent, before the fork."""
    if capabilities is None:
        capabilities = {}
    if not isinstance(capabilities, dict):
        raise ConfigError(f"{where} must be an object")
    masks = {name: capability_mask(capabilities.get(name), f"{where}.{name}") for name in SETS}
    stray = masks["effective"] & ~masks["permitted"]
    if stray:
        raise ConfigError(f"{where}.effective has {', '.join(names_of(stray))}, which "
                          f"{where}.permitted lacks: the kernel allows no effective capability that is "
                          "not permitted")
    unraisable = masks["ambient"] & ~(masks["permitted"] & masks["inheritable"])
    if unraisable:
        # The kernel only raises an ambient cap that is both permitted and inheritable: that is its rule,
        # not news for stderr (the config `runc spec` writes has such caps, and engines show a runtime's
        # stderr as the container's error output). runc and crun say nothing either.
        log.debug(f"ambient capabilities {', '.join(names_of(unraisable))} are not both permitted and "
                  "inheritable: they are not raised")
        masks["ambient"] &= ~unraisable
    return CapabilityPlan(masks["bounding"], masks["effective"], masks["inheritable"], masks["permitted"],
                          masks["ambient"], last_cap())


def withhold_unavailable(plan: CapabilityPlan) -> int:
    """Take out of ``plan`` the caps this process can't hand on (outside its permitted or bounding set)
    and return them. Runs in the init, where a new user namespace has given it every cap of that namespace.

    config.md, process.capabilities: a capability that "cannot be granted otherwise MUST be logged as a
    warning by the runtime. Runtimes SHOULD NOT fail if the container configuration requests
    capabilities that cannot be granted, for example, if the runtime operates in a restricted
    environment with limited capabilities" (here: root lacks CAP_SYS_RESOURCE in its bounding set).
    """
    try:
        held = syscalls.capget()[1]
        for cap in range(plan.last_cap + 1):
            if held >> cap & 1 and not syscalls.prctl(syscalls.PR_CAPBSET_READ, cap):
                held &= ~(1 << cap)
    except OSError as err:
        raise OcirtError(f"cannot read the capabilities: {why(err)}", op="capget") from None
    wanted = plan.bounding | plan.effective | plan.inheritable | plan.permitted | plan.ambient
    missing = wanted & ~held
    if missing:
        for name in SETS:
            setattr(plan, name, getattr(plan, name) & ~missing)
    return missing


def drop_bounding(plan: CapabilityPlan) -> None:
    """Drop from the bounding set every cap the plan leaves out. Needs CAP_SETPCAP for any real drop."""
    for cap in range(plan.last_cap + 1):
        if plan.bounding >> cap & 1:
            continue
        try:
            if not syscalls.prctl(syscalls.PR_CAPBSET_READ, cap):
                continue
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
        except OSError as err:
            raise OcirtError(f"cannot drop {CAPABILITY_NAMES.get(cap, cap)} from the bounding set: "
                             f"{why(err)}", op="prctl") from None


def keep_caps_for_uid_switch() -> None:
    """Keep the permitted set across the coming switch from uid 0 to the process user."""
    try:
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    except OSError as err:
        raise OcirtError(f"cannot set keep-caps: {why(err)}", op="prctl") from None


def apply(plan: CapabilityPlan) -> None:
    """Set effective, permitted and inheritable exactly, then the ambient set. Run after the uid switch."""
    try:
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)
        permitted = syscalls.capget()[1]
    except OSError as err:
        raise OcirtError(f"cannot read the capabilities: {why(err)}", op="capget") from None
    missing = plan.permitted & ~permitted
    if missing:
        raise OcirtError(f"cannot grant {', '.join(names_of(missing))}: the runtime does not hold them")
    try:
        syscalls.capset(plan.effective, plan.permitted, plan.inheritable)
    except OSError as err:
        raise OcirtError(f"cannot set the capabilities (effective {plan.effective:#x}, permitted "
                         f"{plan.permitted:#x}, inheritable {plan.inheritable:#x}): "
                         f"{why(err)}", op="capset") from None
    try:
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as err:
        raise OcirtError(f"cannot clear the ambient capabilities: {why(err)}", op="prctl") from None
    for cap in range(plan.last_cap + 1):
        if plan.ambient >> cap & 1:
            try:
                syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, cap)
            except OSError as err:
                raise OcirtError(f"cannot raise the ambient capability {CAPABILITY_NAMES.get(cap, cap)}: "
                                 f"{why(err)}", op="prctl") from None
