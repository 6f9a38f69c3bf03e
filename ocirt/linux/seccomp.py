"""The container's seccomp filter: compiled in the runtime's parent, loaded by the init just before execve.

``compile_filter`` turns the spec's ``linux.seccomp`` section into a classic BPF program with libseccomp
(Debian's binding, imported only when a program has to be built) and keeps the result in a cache, so a
profile seen before costs a hash and one file read. ``install_filter`` loads the program with the raw
``seccomp(2)`` call: it needs nothing that is not already imported, so the init may call it after
``pivot_root``. ``send_listener_fd`` hands the ``SCMP_ACT_NOTIFY`` listener to the seccomp agent.

Rules follow runc where the spec is silent:
- syscall names libseccomp does not know are skipped (a profile written for a newer kernel still loads);
- a rule whose action equals the default action is dropped (libseccomp refuses it);
- when two ``args`` of one rule compare the same argument, each comparison becomes a rule of its own
  (so the comparisons are ORed); otherwise the comparisons of a rule are ANDed;
- ``SCMP_ACT_NOTIFY`` may be neither the default action nor the action for ``write`` or ``sendmsg``: the
  init must still be able to send the listener fd out once the filter is loaded.
"""

from __future__ import annotations

import ctypes
import os

from ocirt import log, syscalls
from ocirt.errors import ConfigError, OcirtError, why

SECCOMP_SET_MODE_FILTER = 1

SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

FILTER_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
}

ACTIONS = (
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
)
_ACTIONS_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")

# spec name -> attribute of the binding's Arch class
ARCHITECTURES = {
    "SCMP_ARCH_X86": "X86", "SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X32": "X32",
    "SCMP_ARCH_ARM": "ARM", "SCMP_ARCH_AARCH64": "AARCH64",
    "SCMP_ARCH_MIPS": "MIPS", "SCMP_ARCH_MIPS64": "MIPS64", "SCMP_ARCH_MIPS64N32": "MIPS64N32",
    "SCMP_ARCH_MIPSEL": "MIPSEL", "SCMP_ARCH_MIPSEL64": "MIPSEL64", "SCMP_ARCH_MIPSEL64N32": "MIPSEL64N32",
    "SCMP_ARCH_PPC": "PPC", "SCMP_ARCH_PPC64": "PPC64", "SCMP_ARCH_PPC64LE": "PPC64LE",
    "SCMP_ARCH_S390": "S390", "SCMP_ARCH_S390X": "S390X",
    "SCMP_ARCH_PARISC": "PARISC", "SCMP_ARCH_PARISC64": "PARISC64", "SCMP_ARCH_RISCV64": "RISCV64",
}

# spec name -> attribute of the binding (its comparison operators are module constants)
OPERATORS = {
    "SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ",
    "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ",
}

_NOTIFY_FORBIDDEN = ("write", "sendmsg")
_SYSCALL_MAX_ARGS = 6
_BPF_INSN_SIZE = 8  # struct sock_filter
_BPF_MAXINSNS = 4096
_EPERM = 1
_CAP_SYS_ADMIN = 21
_CACHE_FORMAT = "ocirt-seccomp-bpf-1"

_WHERE = "linux.seccomp"


class CompiledFilter:
    """A BPF program ready for ``seccomp(2)``, with the load flags the section asked for.

    ``flags`` are the kernel's SECCOMP_FILTER_FLAG_* bits, NEW_LISTENER included when a rule notifies.
    ``skipped`` names the syscalls libseccomp did not know. ``from_cache`` tells whether the program was
    read from the cache rather than built.
    """

    __slots__ = ("bpf", "flags", "uses_notify", "listener_path", "listener_metadata", "skipped",
                 "from_cache", "verdicts")

    def __init__(self, bpf: bytes, flags: int, uses_notify: bool, listener_path: str | None,
                 listener_metadata: str | None, skipped: tuple[str, ...], from_cache: bool,
                 verdicts: Verdicts | None = None):
        self.bpf = bpf
        self.flags = flags
        self.uses_notify = uses_notify
        self.listener_path = listener_path
        self.listener_metadata = listener_metadata
        self.skipped = skipped
        self.from_cache = from_cache
        self.verdicts = verdicts

    def denies(self, name: str, err_no: int | None = None) -> bool:
        """Whether the profile makes syscall ``name`` fail (for some arguments at least) with ``err_no``
        (any error when None). Read from the section itself, to explain a failure in the init."""
        return self.verdicts is not None and self.verdicts.denies(name, err_no)

    @property
    def instructions(self) -> int:
        return len(self.bpf) // _BPF_INSN_SIZE

    def __repr__(self) -> str:
        return (f"CompiledFilter(instructions={self.instructions}, flags={self.flags:#x}, "
                f"uses_notify={self.uses_notify}, from_cache={self.from_cache})")


_ALLOWING = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY")
_ENOSYS = 38


class Verdicts:
    """What the profile answers for a syscall by name, arguments aside: the default action, and per
    name the actions of the rules that name it (conditional rules count as "for some arguments")."""

    __slots__ = ("default", "by_name")

    def __init__(self, seccomp: dict):
        self.default = _errno_of(seccomp.get("defaultAction"), seccomp.get("defaultErrnoRet"))
        self.by_name: dict[str, list[tuple[int, bool]]] = {}
        for rule in seccomp.get("syscalls") or []:
            if not isinstance(rule, dict) or not isinstance(rule.get("names"), list):
                continue
            verdict = (_errno_of(rule.get("action"), rule.get("errnoRet")), bool(rule.get("args")))
            for name in rule["names"]:
                if isinstance(name, str):
                    self.by_name.setdefault(name, []).append(verdict)

    def denies(self, name: str, err_no: int | None) -> bool:
        rules = self.by_name.get(name)
        if not rules:
            outcomes = [self.default]
        else:
            unconditional = [ret for ret, conditional in rules if not conditional]
            outcomes = unconditional[:1] or [ret for ret, _ in rules] + [self.default]
        # An outcome is 0 for allowed, -1 for a kill or trap (no errno to compare), or the errno returned.
        return any(ret != 0 and (err_no is None or ret in (-1, err_no)) for ret in outcomes)


def _errno_of(action: object, errno_ret: object) -> int:
    if action in _ALLOWING:
        return 0
    if action == "SCMP_ACT_ERRNO":
        return errno_ret if isinstance(errno_ret, int) and errno_ret > 0 else _EPERM
    if action == "SCMP_ACT_TRACE":
        return _ENOSYS  # what a traced syscall returns when no tracer is attached
    return -1


def cache_dir(rootless: bool) -> str:
    """Where compiled programs are kept: the user's cache rootless, the host's otherwise."""
    if rootless:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "ocirt")
    return "/var/cache/ocirt"


def compile_filter(seccomp: dict, *, cache_dir: str | None) -> CompiledFilter:
    """Build (or fetch from ``cache_dir``) the BPF program for the spec's ``linux.seccomp`` section.

    Raises ``ConfigError`` for anything the section gets wrong. ``cache_dir`` must be writable by this
    user only: a program read from it is loaded as is.
    """
    if not isinstance(seccomp, dict):
        raise ConfigError(f"{_WHERE} must be an object")
    uses_notify = _uses_notify(seccomp)
    flags = _load_flags(seccomp, uses_notify)
    listener_path, listener_metadata = _listener(seccomp, uses_notify)

    cache_path = None
    if cache_dir is not None:
        cache_path = os.path.join(cache_dir, _cache_key(seccomp) + ".bpf")
        cached = _read_cache(cache_path)
        if cached is not None:
            bpf, skipped = cached
            return CompiledFilter(bpf, flags, uses_notify, listener_path, listener_metadata, skipped, True,
                                  Verdicts(seccomp))

    bpf, skipped = _build(seccomp)
    if len(bpf) // _BPF_INSN_SIZE > _BPF_MAXINSNS:
        raise ConfigError(f"{_WHERE}: the filter needs {len(bpf) // _BPF_INSN_SIZE} BPF instructions, "
                          f"more than the kernel's limit of {_BPF_MAXINSNS}")
    if cache_path is not None:
        _write_cache(cache_path, bpf, skipped)
    return CompiledFilter(bpf, flags, uses_notify, listener_path, listener_metadata, skipped, False,
                          Verdicts(seccomp))


def _uses_notify(seccomp: dict) -> bool:
    syscalls_ = seccomp.get("syscalls") or []
    if not isinstance(syscalls_, list):
        raise ConfigError(f"{_WHERE}.syscalls must be an array")
    return any(isinstance(rule, dict) and rule.get("action") == "SCMP_ACT_NOTIFY" for rule in syscalls_)


def _load_flags(seccomp: dict, uses_notify: bool) -> int:
    names = seccomp.get("flags") or []
    if not isinstance(names, list):
        raise ConfigError(f"{_WHERE}.flags must be an array")
    flags = 0
    for i, name in enumerate(names):
        if name not in FILTER_FLAGS:
            raise ConfigError(f"{_WHERE}.flags[{i}]: unknown seccomp flag {name!r}")
        flags |= FILTER_FLAGS[name]
    if uses_notify:
        flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER
        if flags & SECCOMP_FILTER_FLAG_TSYNC:
            # The kernel refuses TSYNC with a listener unless a failed sync reports ESRCH instead of a
            # thread id (it could not tell that id from the listener fd).
            flags |= SECCOMP_FILTER_FLAG_TSYNC_ESRCH
    elif flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
        # The flag only changes how notified syscalls wait; the kernel refuses it without a listener.
        log.debug("seccomp: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV ignored: no rule uses SCMP_ACT_NOTIFY")
        flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    return flags


def _listener(seccomp: dict, uses_notify: bool) -> tuple[str | None, str | None]:
    path = seccomp.get("listenerPath") or None
    metadata = seccomp.get("listenerMetadata") or None
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"{_WHERE}.listenerPath must be a string")
    if metadata is not None:
        if not isinstance(metadata, str):
            raise ConfigError(f"{_WHERE}.listenerMetadata must be a string")
        if path is None:
            raise ConfigError(f"{_WHERE}.listenerMetadata is set but listenerPath is not")
    if uses_notify and path is None:
        raise ConfigError(f"{_WHERE}: a rule uses SCMP_ACT_NOTIFY but listenerPath is not set, "
                          "so no seccomp agent could ever answer")
    return path, metadata


# ---------------------------------------------------------------------------------------------- building


def _action(libseccomp, name: object, errno_ret: object, where: str) -> int:
    if name not in ACTIONS:
        raise ConfigError(f"{where}: unknown seccomp action {name!r}")
    if errno_ret is not None:
        if name not in _ACTIONS_WITH_ERRNO:
            raise ConfigError(f"{where}: an errno return value is only valid with SCMP_ACT_ERRNO or "
                              f"SCMP_ACT_TRACE, not {name}")
        if not isinstance(errno_ret, int) or isinstance(errno_ret, bool) or not 0 <= errno_ret <= 0xFFFF:
            raise ConfigError(f"{where}: errno return value {errno_ret!r} is not an integer in 0..65535")
    code = _EPERM if errno_ret is None else errno_ret
    match name:
        case "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD":
            return libseccomp.KILL
        case "SCMP_ACT_KILL_PROCESS":
            return libseccomp.KILL_PROCESS
        case "SCMP_ACT_TRAP":
            return libseccomp.TRAP
        case "SCMP_ACT_ERRNO":
            return libseccomp.ERRNO(code)
        case "SCMP_ACT_TRACE":
            return libseccomp.TRACE(code)
        case "SCMP_ACT_ALLOW":
            return libseccomp.ALLOW
        case "SCMP_ACT_LOG":
            return libseccomp.LOG
        case _:
            return libseccomp.NOTIFY


def _comparison(libseccomp, arg: object, where: str) -> tuple[int, object]:
    if not isinstance(arg, dict):
        raise ConfigError(f"{where} must be an object")
    index, value, value_two, op = arg.get("index"), arg.get("value"), arg.get("valueTwo", 0), arg.get("op")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < _SYSCALL_MAX_ARGS:
        raise ConfigError(f"{where}.index: {index!r} is not an argument index in 0..5")
    for field, number in (("value", value), ("valueTwo", value_two)):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 1 << 64:
            raise ConfigError(f"{where}.{field}: {number!r} is not an unsigned 64-bit integer")
    if op not in OPERATORS:
        raise ConfigError(f"{where}.op: unknown seccomp operator {op!r}")
    # For SCMP_CMP_MASKED_EQ libseccomp reads the first datum as the mask and the second as the value,
    # which is the spec's order of value and valueTwo.
    return index, libseccomp.Arg(index, getattr(libseccomp, OPERATORS[op]), value, value_two)


# A classic BPF program holds at most BPF_MAXINSNS (4096) instructions, and every rule takes at least one.
BPF_MAXINSNS = 4096


def _check_rule_count(rules: object) -> None:
    """More rules than a filter can hold would only make libseccomp build a program the kernel refuses."""
    if not isinstance(rules, list):
        return
    count = 0
    for rule in rules:
        if isinstance(rule, dict):
            names, args = rule.get("names"), rule.get("args")
            count += (len(names) if isinstance(names, list) else 1) * max(1, len(args) if isinstance(args, list) else 1)
    if count > BPF_MAXINSNS:
        raise ConfigError(f"{_WHERE}.syscalls: {count} rules, more than a seccomp filter of at most {BPF_MAXINSNS} "
                          "instructions can hold")


def binding():
    """libseccomp's Python binding: Debian's python3-seccomp, or else pyseccomp from PyPI (the
    ``ocirt[seccomp]`` extra), which has the same API and builds the same programs (ocirt.deps)."""
    from ocirt.deps import require

    return require("seccomp")


def seccomp_support() -> str:
    """libseccomp's version, and whether profiles can be compiled here (for --version)."""
    try:
        version = libseccomp_version()
    except OSError:
        return "unavailable (libseccomp.so.2 is missing: seccomp profiles are refused)"
    try:
        binding()
    except OcirtError:
        return f"{version} (no Python binding: seccomp profiles are refused; install python3-seccomp " \
               "or pyseccomp)"
    return version


def _build(seccomp: dict, libseccomp=None) -> tuple[bytes, tuple[str, ...]]:
    libseccomp = libseccomp or binding()

    default_name = seccomp.get("defaultAction")
    if default_name == "SCMP_ACT_NOTIFY":
        raise ConfigError(f"{_WHERE}.defaultAction: SCMP_ACT_NOTIFY cannot be the default action")
    default = _action(libseccomp, default_name, seccomp.get("defaultErrnoRet"), f"{_WHERE}.defaultAction")
    try:
        program = libseccomp.SyscallFilter(default)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"{_WHERE}: libseccomp refused the default action: {err}") from None

    architectures = seccomp.get("architectures") or []
    if not isinstance(architectures, list):
        raise ConfigError(f"{_WHERE}.architectures must be an array")
    for i, arch_name in enumerate(architectures):
        if arch_name not in ARCHITECTURES:
            raise ConfigError(f"{_WHERE}.architectures[{i}]: unknown architecture {arch_name!r}")
        arch = getattr(libseccomp.Arch, ARCHITECTURES[arch_name])
        if not program.exist_arch(arch):
            program.add_arch(arch)

    _check_rule_count(seccomp.get("syscalls") or [])
    native = libseccomp.Arch.NATIVE
    skipped: list[str] = []
    for i, rule in enumerate(seccomp.get("syscalls") or []):
        where = f"{_WHERE}.syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where} must be an object")
        action_name = rule.get("action")
        action = _action(libseccomp, action_name, rule.get("errnoRet"), f"{where}.action")
        names = rule.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}.names must be a non-empty array of syscall names")
        args = rule.get("args") or []
        if not isinstance(args, list):
            raise ConfigError(f"{where}.args must be an array")
        comparisons = [_comparison(libseccomp, arg, f"{where}.args[{j}]") for j, arg in enumerate(args)]
        if action_name == "SCMP_ACT_NOTIFY":
            for name in names:
                if name in _NOTIFY_FORBIDDEN:
                    raise ConfigError(f"{where}: SCMP_ACT_NOTIFY cannot be used for {name!r}: the runtime "
                                      "needs it to hand the listener to the seccomp agent")
        if action == default:
            log.debug(f"seccomp: {where} has the default action; its rule is not needed")
            continue
        indexes = [index for index, _ in comparisons]
        if len(set(indexes)) == len(indexes):
            condition_sets = [[cmp for _, cmp in comparisons]]
        else:
            condition_sets = [[cmp] for _, cmp in comparisons]
        for name in names:
            # -1 is libseccomp's "unknown name"; other negative numbers are its pseudo-syscalls, which
            # stand for syscalls that exist only on an added architecture (socketcall on x86).
            if libseccomp.resolve_syscall(native, name) == -1:
                log.debug(f"seccomp: unknown syscall {name!r} in {where} skipped")
                skipped.append(name)
                continue
            for conditions in condition_sets:
                try:
                    program.add_rule(action, name, *conditions)
                except (RuntimeError, ValueError, TypeError) as err:
                    raise ConfigError(f"{where}: libseccomp refused the rule for {name!r}: {err}") from None
    return _export(program), tuple(skipped)


def _export(program) -> bytes:
    fd = os.memfd_create("ocirt-seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:
            program.export_bpf(out)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while size > 0 and (chunk := os.read(fd, size)):
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- caching

_libseccomp_version: str | None = None


class _ScmpVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def libseccomp_version() -> str:
    """The loaded libseccomp's version, read without importing the binding."""
    global _libseccomp_version
    if _libseccomp_version is None:
        lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_version.restype = ctypes.POINTER(_ScmpVersion)
        version = lib.seccomp_version().contents
        _libseccomp_version = f"{version.major}.{version.minor}.{version.micro}"
    return _libseccomp_version


def _cache_key(seccomp: dict) -> str:
    import hashlib
    import json

    canonical = json.dumps(seccomp, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    identity = "\0".join((_CACHE_FORMAT, libseccomp_version(), os.uname().machine, canonical))
    return hashlib.sha256(identity.encode()).hexdigest()


def _read_cache(path: str) -> tuple[bytes, tuple[str, ...]] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # Only a file this user wrote, and nobody else could have rewritten, is trusted to be loaded.
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.debug(f"seccomp: cache file {path} ignored: not private to this user")
            return None
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    header_end = data.find(b"\n")
    if header_end < 0:
        return None
    import json

    try:
        header = json.loads(data[:header_end])
        bpf = data[header_end + 1:]
        if (header.get("format") != _CACHE_FORMAT or header.get("size") != len(bpf)
                or not bpf or len(bpf) % _BPF_INSN_SIZE):
            return None
        return bpf, tuple(header.get("skipped", ()))
    except (ValueError, AttributeError, TypeError):
        return None


def _write_cache(path: str, bpf: bytes, skipped: tuple[str, ...]) -> None:
    import json

    header = json.dumps({"format": _CACHE_FORMAT, "size": len(bpf), "skipped": list(skipped)},
                        separators=(",", ":")).encode()
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, header + b"\n" + bpf)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        log.debug(f"seccomp: cannot cache the compiled filter in {directory}: {err.strerror}")
        try:
            os.unlink(tmp)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- loading


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(compiled: CompiledFilter) -> int | None:
    """Load the filter into the calling process; return the listener fd when a rule notifies.

    Precondition: the caller has set no_new_privs, or holds CAP_SYS_ADMIN in its user namespace (the
    kernel refuses the filter otherwise). Safe to call after ``pivot_root``: it imports nothing. The
    listener fd is close-on-exec.
    """
    if syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) != 1:
        effective = syscalls.capget()[0]
        if not effective >> _CAP_SYS_ADMIN & 1:
            raise OcirtError("cannot load the seccomp filter: the process has neither no_new_privs set "
                             "nor CAP_SYS_ADMIN")
    count = len(compiled.bpf) // _BPF_INSN_SIZE
    program = ctypes.create_string_buffer(compiled.bpf, len(compiled.bpf))
    fprog = _SockFprog(count, ctypes.addressof(program))
    try:
        result = syscalls.seccomp(SECCOMP_SET_MODE_FILTER, compiled.flags,
                                  ctypes.c_void_p(ctypes.addressof(fprog)))
    except OSError as err:
        raise OcirtError(f"cannot load the seccomp filter (flags {compiled.flags:#x}): "
                         f"{why(err)}", op="seccomp") from None
    return result if compiled.uses_notify else None


def send_listener_fd(listener_path: str, notify_fd: int, state: dict, metadata: str | None, *,
                     pid: int | None = None) -> None:
    """Send the seccomp agent at ``listener_path`` the container process state and the listener fd.

    One connection, one message: the JSON payload of the spec's "container process state" with the
    fd attached (SCM_RIGHTS) to its first bytes, then the connection is closed.
    """
    import json
    import socket

    from ocirt.version import OCI_VERSION

    if "pid" not in state:
        raise OcirtError("cannot send the seccomp listener: the container state has no pid")
    # An exec'd process is not the container's init: ``pid`` names the process the filter belongs to.
    process_state: dict = {"ociVersion": OCI_VERSION, "fds": ["seccompFd"],
                           "pid": state["pid"] if pid is None else pid}
    if metadata:
        process_state["metadata"] = metadata
    process_state["state"] = state
    payload = json.dumps(process_state, separators=(",", ":")).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as agent:
            agent.settimeout(10)
            agent.connect(listener_path)
            sent = socket.send_fds(agent, [payload], [notify_fd])
            if sent < len(payload):
                agent.sendall(payload[sent:])
    except OSError as err:
        reason = err.strerror or str(err)
        raise OcirtError(f"cannot send the seccomp listener to {listener_path}: {reason.lower()}") from None
