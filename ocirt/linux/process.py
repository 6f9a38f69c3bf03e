"""The process the container runs: its limits, scheduling, identity and executable.

``plan_process`` parses ``process`` once, in the runtime, before any fork; the ``apply_*`` functions run in
the init (or in an exec'd process) in the order the kernel needs: limits and scheduling while still
privileged, then the user switch, then the capability sets, then no_new_privs.
"""

from __future__ import annotations

import errno
import os
import resource

from ocirt import syscalls as sc
from ocirt.errors import ConfigError, OcirtError, why

# Linux's numbering (the resource module lacks several of these names).
RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3, "SCHED_ISO": 4,
                  "SCHED_IDLE": 5, "SCHED_DEADLINE": 6}
SCHED_FLAGS = {"SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02, "SCHED_FLAG_DL_OVERRUN": 0x04,
               "SCHED_FLAG_KEEP_POLICY": 0x08, "SCHED_FLAG_KEEP_PARAMS": 0x10, "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20,
               "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40}
REALTIME_POLICIES = (SCHED_POLICIES["SCHED_FIFO"], SCHED_POLICIES["SCHED_RR"])
IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}
MEMPOLICY_MODES = {"MPOL_DEFAULT": 0, "MPOL_PREFERRED": 1, "MPOL_BIND": 2, "MPOL_INTERLEAVE": 3,
                   "MPOL_LOCAL": 4, "MPOL_PREFERRED_MANY": 5, "MPOL_WEIGHTED_INTERLEAVE": 6}
MEMPOLICY_FLAGS = {"MPOL_F_NUMA_BALANCING": 1 << 13, "MPOL_F_RELATIVE_NODES": 1 << 14,
                   "MPOL_F_STATIC_NODES": 1 << 15}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NGROUPS_MAX = 65536  # the kernel's limit on supplementary groups


class ProcessPlan:
    """Everything about ``process`` that the init applies, parsed and checked up front."""

    def __init__(self, process: dict, linux: dict):
        # The interpreter running the runtime (and, until execve, the init): the container must never be
        # able to execute it, or it could reopen it for writing afterwards (CVE-2019-5736).
        st = os.stat("/proc/self/exe")
        self.runtime_exe = (st.st_dev, st.st_ino)
        self.args: list[str] = list(process.get("args") or [])
        if not self.args:
            raise ConfigError("$.process.args: the process needs at least one argument")
        self.env: list[str] = list(process.get("env") or [])
        self.cwd: str = process.get("cwd") or "/"
        # execve refuses a NUL byte only at the very end, after `start`, where no error can reach anyone.
        for what, texts in (("args", self.args), ("env", self.env), ("cwd", [self.cwd])):
            if any("\0" in str(text) for text in texts):
                raise ConfigError(f"$.process.{what}: contains a NUL byte")
        _check_exec_limits(self.args, self.env)
        if not self.cwd.startswith("/"):
            raise ConfigError(f"$.process.cwd: {self.cwd!r} is not an absolute path")
        self.terminal = bool(process.get("terminal"))
        size = process.get("consoleSize") or {}
        self.console_size = (int(size["height"]), int(size["width"])) if size else None
        if self.console_size and not all(0 <= n <= 0xFFFF for n in self.console_size):
            raise ConfigError(f"$.process.consoleSize: {self.console_size[0]}x{self.console_size[1]} does not fit "
                              "a terminal's window size (at most 65535 each way)")
        user = process.get("user") or {}
        self.uid = int(user.get("uid", 0))
        self.gid = int(user.get("gid", 0))
        self.additional_gids = [int(g) for g in user.get("additionalGids") or []]
        # 4294967295 is (uid_t)-1, which setresuid/setresgid read as "leave unchanged": the process
        # would silently stay root.
        for what, value in (("uid", self.uid), ("gid", self.gid)):
            if not 0 <= value <= 0xFFFFFFFE:
                raise ConfigError(f"$.process.user.{what}: {value} is not a valid {what}")
        if len(self.additional_gids) > NGROUPS_MAX:
            raise ConfigError(f"$.process.user.additionalGids: {len(self.additional_gids)} groups, more than "
                              f"the kernel's limit of {NGROUPS_MAX}")
        if any(not 0 <= g <= 0xFFFFFFFE for g in self.additional_gids):
            raise ConfigError("$.process.user.additionalGids: every gid must be between 0 and 4294967294")
        self.umask = user.get("umask")
        self.no_new_privileges = bool(process.get("noNewPrivileges"))
        self.oom_score_adj = process.get("oomScoreAdj")
        self.apparmor_profile = process.get("apparmorProfile")
        self.selinux_label = process.get("selinuxLabel")
        self.rlimits: list[tuple[str, int, int, int]] = []
        seen = set()
        for i, rl in enumerate(process.get("rlimits") or []):
            name = rl.get("type")
            if name not in RLIMITS:
                raise ConfigError(f"$.process.rlimits[{i}].type: unknown rlimit {name!r}")
            if name in seen:
                raise ConfigError(f"$.process.rlimits[{i}].type: rlimit {name} is set twice")
            seen.add(name)
            soft, hard = int(rl["soft"]), int(rl["hard"])
            if soft > hard:
                raise ConfigError(f"$.process.rlimits[{i}]: {name} soft limit {soft} is above hard limit {hard}")
            self.rlimits.append((name, RLIMITS[name], _rlim(soft), _rlim(hard)))
        self.scheduler = _plan_scheduler(process.get("scheduler"))
        self.scheduler_policy = (process.get("scheduler") or {}).get("policy")
        self.io_priority = _plan_ioprio(process.get("ioPriority"))
        self.personality = _plan_personality(linux.get("personality"))
        self.memory_policy = _plan_mempolicy(linux.get("memoryPolicy"))
        cpu_affinity = process.get("execCPUAffinity") or {}
        self.cpu_affinity_initial = _parse_cpus(cpu_affinity.get("initial"), "$.process.execCPUAffinity.initial")
        self.cpu_affinity_final = _parse_cpus(cpu_affinity.get("final"), "$.process.execCPUAffinity.final")
        from ocirt.linux import capabilities

        self.capabilities = capabilities.prepare(process.get("capabilities"))


# execve(2)'s limits: one string of args or env, with its NUL, is at most MAX_ARG_STRLEN bytes; all of them,
# with a pointer each, at most a quarter of the stack rlimit and never above 3/4 of _STK_LIM (8 MiB).
MAX_ARG_STRLEN = 32 * 4096
ARG_MAX_CEILING = 6 << 20


def _check_exec_limits(args: list[str], env: list[str]) -> None:
    """Checked now: execve would refuse them only after `start`, where the error reaches no one."""
    total = 0
    for what, texts in (("args", args), ("env", env)):
        for i, text in enumerate(texts):
            size = len(os.fsencode(str(text))) + 1
            if size > MAX_ARG_STRLEN:
                raise ConfigError(f"$.process.{what}[{i}]: {size} bytes, more than execve(2) takes in one string "
                                  f"({MAX_ARG_STRLEN})")
            total += size + 8
    if total > ARG_MAX_CEILING:
        raise ConfigError(f"$.process: args and env take {total} bytes, more than execve(2) ever takes "
                          f"({ARG_MAX_CEILING})")


def _rlim(value: int) -> int:
    # The spec writes "unlimited" as the largest uint64.
    return resource.RLIM_INFINITY if value >= 2**63 - 1 else value


def _plan_scheduler(sched: dict | None):
    if not sched:
        return None
    policy = sched.get("policy")
    if policy not in SCHED_POLICIES:
        raise ConfigError(f"$.process.scheduler.policy: unknown policy {policy!r}")
    flags = 0
    for flag in sched.get("flags") or []:
        if flag not in SCHED_FLAGS:
            raise ConfigError(f"$.process.scheduler.flags: unknown flag {flag!r}")
        flags |= SCHED_FLAGS[flag]
    attr = sc.SchedAttr()
    attr.sched_policy = SCHED_POLICIES[policy]
    attr.sched_flags = flags
    attr.sched_nice = int(sched.get("nice", 0))
    attr.sched_priority = int(sched.get("priority", 0))
    attr.sched_runtime = int(sched.get("runtime", 0))
    attr.sched_deadline = int(sched.get("deadline", 0))
    attr.sched_period = int(sched.get("period", 0))
    return attr


def _plan_ioprio(ioprio: dict | None) -> int | None:
    if not ioprio:
        return None
    cls = ioprio.get("class")
    if cls not in IOPRIO_CLASSES:
        raise ConfigError(f"$.process.ioPriority.class: unknown class {cls!r}")
    prio = int(ioprio.get("priority", 0))
    if not 0 <= prio <= 7:
        raise ConfigError(f"$.process.ioPriority.priority: {prio} is outside 0-7")
    return (IOPRIO_CLASSES[cls] << 13) | prio


def _plan_personality(persona: dict | None) -> int | None:
    if not persona:
        return None
    domain = persona.get("domain")
    if domain not in PERSONALITY_DOMAINS:
        raise ConfigError(f"$.linux.personality.domain: unknown domain {domain!r}")
    if persona.get("flags"):
        raise ConfigError("$.linux.personality.flags: no personality flags are supported")
    return PERSONALITY_DOMAINS[domain]


def _plan_mempolicy(policy: dict | None):
    if not policy:
        return None
    mode = policy.get("mode")
    if mode not in MEMPOLICY_MODES:
        raise ConfigError(f"$.linux.memoryPolicy.mode: unknown mode {mode!r}")
    value = MEMPOLICY_MODES[mode]
    for flag in policy.get("flags") or []:
        if flag not in MEMPOLICY_FLAGS:
            raise ConfigError(f"$.linux.memoryPolicy.flags: unknown flag {flag!r}")
        value |= MEMPOLICY_FLAGS[flag]
    nodes = 0
    for node in _parse_cpus(policy.get("nodes"), "$.linux.memoryPolicy.nodes", limit=MAX_NUMNODES) or set():
        nodes |= 1 << node
    return value, nodes


# The largest cpu and NUMA node counts any kernel is built for (NR_CPUS, 1 << NODES_SHIFT): an id beyond them
# is refused by the kernel, so it is refused here before a set of that size is ever made.
MAX_CPUS = 8192
MAX_NUMNODES = 1024


def _parse_cpus(spec: str | None, field: str, limit: int = MAX_CPUS) -> set[int] | None:
    if not spec:
        return None
    noun = "node" if field.endswith(".nodes") else "CPU"
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if not 0 <= first <= last:
                raise ValueError
            if last >= limit:
                raise ConfigError(f"{field}: invalid {noun} list {spec[:64]!r}: {noun} {last} is beyond the "
                                  f"kernel's limit of {limit} {noun}s")
            cpus.update(range(first, last + 1))
    except ValueError:
        raise ConfigError(f"{field}: invalid {noun} list {spec[:64]!r}") from None
    return cpus


# -- applied in the init, still privileged -------------------------------------------------------------------
def apply_rlimits(plan: ProcessPlan) -> None:
    for name, res, soft, hard in plan.rlimits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as err:
            reason = why(err) if isinstance(err, OSError) and err.errno else str(err)
            raise OcirtError(f"cannot set rlimit {name} to soft={soft} hard={hard}: {reason}", op="setrlimit",
                             path=name) from None


def apply_scheduling(plan: ProcessPlan) -> None:
    if plan.personality is not None:
        try:
            sc.personality(plan.personality)
        except OSError as err:
            raise OcirtError(f"cannot set personality: {why(err)}", op="personality") from None
    if plan.scheduler is not None:
        try:
            sc.sched_setattr(0, plan.scheduler)
        except OSError as err:
            reason = why(err)
            if err.errno == errno.EPERM and plan.scheduler.sched_policy in REALTIME_POLICIES:
                reason += (": a real-time policy needs CAP_SYS_NICE in the host's user namespace (or an "
                           "RLIMIT_RTPRIO of at least its priority) and real-time runtime in the cpu cgroup")
            raise OcirtError(f"cannot set scheduler {plan.scheduler_policy}: {reason}", op="sched_setattr",
                             errno=err.errno) from None
    if plan.io_priority is not None:
        try:
            sc.ioprio_set(1, 0, plan.io_priority)
        except OSError as err:
            raise OcirtError(f"cannot set I/O priority: {why(err)}", op="ioprio_set") from None
    if plan.memory_policy is not None:
        mode, nodes = plan.memory_policy
        try:
            sc.set_mempolicy(mode, nodes, nodes.bit_length() + 1 if nodes else 0)
        except OSError as err:
            raise OcirtError(f"cannot set memory policy: {why(err)}", op="set_mempolicy") from None


# -- identity -------------------------------------------------------------------------------------------------
def switch_user(plan: ProcessPlan, *, setgroups_allowed: bool) -> None:
    """setgroups, then gid, then uid: the uid goes last because it takes away the right to change the rest."""
    from ocirt.linux import capabilities

    capabilities.drop_bounding(plan.capabilities)
    capabilities.keep_caps_for_uid_switch()
    try:
        if setgroups_allowed:
            os.setgroups(plan.additional_gids)
        elif plan.additional_gids:
            raise OcirtError(
                "additionalGids need setgroups(2), which a user namespace with a single-id mapping denies",
                op="setgroups", hint="map a range of ids (newuidmap, /etc/subuid) or leave additionalGids out",
            )
        # setgid/setuid, not setres*id: with CAP_SETUID they set all three ids just the same, and they are
        # what runc calls here, so what a profile written for runc allows after its filter.
        os.setgid(plan.gid)
        os.setuid(plan.uid)
    except OSError as err:
        raise OcirtError(
            f"cannot switch to uid {plan.uid} gid {plan.gid}: {why(err)}", op="setuid", errno=err.errno,
            hint="the user namespace must map that uid and gid" if err.errno == errno.EINVAL else None,
        ) from None
    capabilities.apply(plan.capabilities)
    if plan.umask is not None:
        os.umask(int(plan.umask))


def set_no_new_privileges() -> None:
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def enter_cwd(plan: ProcessPlan, *, as_process_user: bool) -> bool:
    """Change to ``process.cwd``; False when the runtime's own identity may not enter it (EACCES).

    The init calls this twice at most, as runc does: first before the user switch and the seccomp filter
    (root may enter a directory the process user can't, and no profile can stand in the way yet), then,
    only if root was refused, as the process user (``as_process_user``), with the filter maybe loaded.
    """
    try:
        _enter_in_root(plan.cwd)
    except PermissionError:
        if as_process_user:
            raise OcirtError(f"cannot change to cwd {plan.cwd}: permission denied", op="chdir", path=plan.cwd,
                             errno=errno.EACCES) from None
        return False
    except OSError as err:
        raise OcirtError.from_os(err, "chdir", plan.cwd, what=f"cannot change to cwd {plan.cwd}") from None
    try:
        os.getcwd()
    except FileNotFoundError:
        raise OcirtError(f"cannot change to cwd {plan.cwd}: it is outside the container", op="chdir",
                         path=plan.cwd) from None
    return True


def _enter_in_root(cwd: str) -> None:
    # No magic links, inside the root: "/proc/self/fd/N" naming a directory fd still open here (one the
    # caller leaked, or the runtime's own) would put the cwd on the host (CVE-2024-21626).
    root_fd = cwd_fd = -1
    try:
        root_fd = os.open("/", sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            cwd_fd = sc.openat2(root_fd, cwd, sc.O_PATH | os.O_DIRECTORY, 0,
                                sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
        except OSError as err:
            # openat2 is missing (kernel < 5.6) or denied (a seccomp profile written before it existed):
            # a plain chdir, checked by the caller's getcwd, which fails for a directory outside the root.
            if err.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            os.chdir(cwd)
            return
        os.fchdir(cwd_fd)
    finally:
        for fd in (cwd_fd, root_fd):
            if fd >= 0:
                os.close(fd)


# /etc/passwd is the container's file: read at most this much of it, as a regular file only (a FIFO or a
# device there must not hang or feed the init).
PASSWD_READ_LIMIT = 1 << 20


def set_home(plan: ProcessPlan) -> None:
    """Give the process ``HOME`` when its env has none (or an empty one), as runc does: the home of its uid
    in the container's /etc/passwd, else ``/``. Runs inside the container's root, before the user switch."""
    if any(entry.startswith("HOME=") and len(entry) > 5 for entry in plan.env):
        return
    home = home_of(plan.uid) or "/"
    plan.env = [entry for entry in plan.env if not entry.startswith("HOME=")] + [f"HOME={home}"]


def home_of(uid: int, passwd: str = "/etc/passwd") -> str | None:
    """The home directory of ``uid`` in ``passwd`` as this process's root sees it; None when there is none."""
    text = _read_in_root(passwd, PASSWD_READ_LIMIT)
    if text is None:
        return None
    for line in text.split(b"\n"):
        fields = line.split(b":")
        if len(fields) >= 6 and fields[2].isdigit() and int(fields[2]) == uid:
            home = fields[5].decode(errors="replace")
            return home or None
    return None


def _read_in_root(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the regular file ``path``, resolved inside this process's root (no magic
    links); None when it is missing, unreadable or not a regular file."""
    import stat

    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    root_fd = fd = -1
    try:
        root_fd = os.open("/", sc.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = sc.openat2(root_fd, path, flags, 0, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            fd = os.open(path, flags)  # after pivot_root "/" is the container's root
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        for opened in (fd, root_fd):
            if opened >= 0:
                os.close(opened)


def env_path(env: list[str]) -> str:
    for entry in env:
        if entry.startswith("PATH="):
            return entry[5:]
    return DEFAULT_PATH


def find_executable(plan: ProcessPlan) -> str:
    """Resolve args[0] the way execvp would, and fail now with the text engines map to exit codes.

    Runs before the user switch and the seccomp filter (``stat`` only: no ``access``/``faccessat2``, which
    older profiles deny), so whether the process user may execute the file is worked out from its mode,
    as the kernel would at execve; execve itself stays the final judge.
    """
    name = plan.args[0]
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in env_path(plan.env).split(":")]
    denied = None
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_mode & 0o170000) != 0o100000:
            denied = denied or path
            continue
        if may_execute(st, plan):
            if (st.st_dev, st.st_ino) == plan.runtime_exe:
                raise OcirtError(f'exec: "{name}": {path} is the runtime\'s own interpreter: refused '
                                 "(a container must not run the host's runtime binary)")
            return path
        denied = denied or path
    if denied is not None:
        raise OcirtError(f'exec: "{name}": {denied}: permission denied', op="execve", path=denied,
                         errno=errno.EACCES)
    if "/" in name:
        raise OcirtError(f'exec: "{name}": stat {name}: no such file or directory', op="execve", path=name,
                         errno=errno.ENOENT)
    raise OcirtError(
        f'exec: "{name}": executable file not found in $PATH: no such file or directory', op="execve",
        path=name, errno=errno.ENOENT,
    )


_CAP_DAC_OVERRIDE = 1


def may_execute(st: os.stat_result, plan: ProcessPlan) -> bool:
    """The kernel's execute check for the process user (uid, gid, additionalGids, effective caps)."""
    mode = st.st_mode
    if plan.capabilities.effective >> _CAP_DAC_OVERRIDE & 1:
        return bool(mode & 0o111)
    if st.st_uid == plan.uid:
        return bool(mode & 0o100)
    if st.st_gid == plan.gid or st.st_gid in plan.additional_gids:
        return bool(mode & 0o010)
    return bool(mode & 0o001)
