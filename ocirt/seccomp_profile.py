"""Seccomp profiles as files: the ``linux.seccomp`` section of runtime-spec, learned, merged, shown, diffed.

A learned profile denies by default (``SCMP_ACT_ERRNO``) and allows, in one ``SCMP_ACT_ALLOW`` rule without
arguments (the *learned rule*), the syscalls a learning run observed plus ``RUNTIME_NEEDS``: what the
runtime calls between loading the filter and execve. Learning again merges into the file:
- the architectures and the learned rule's names grow (a union; nothing is ever taken away);
- every other key and rule is the user's and stays as written;
- a name another rule already decides (a rule that denies it, or allows it only for some arguments) is
  left to that rule, and the merge says so: a hand edit wins over what a run observed.

Nothing here touches the kernel or libseccomp: ``ocirt seccomp show`` and ``diff`` work on any machine.
"""

from __future__ import annotations

import errno as errno_mod
import os

from ocirt.errors import ConfigError, OcirtError, why

ALLOW = "SCMP_ACT_ALLOW"
DENY = "SCMP_ACT_ERRNO"
_ALLOWING = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
_OPERATORS = {"SCMP_CMP_NE": "!=", "SCMP_CMP_LT": "<", "SCMP_CMP_LE": "<=", "SCMP_CMP_EQ": "==",
              "SCMP_CMP_GE": ">=", "SCMP_CMP_GT": ">"}
_LARGEST_FILE = 16 << 20


def runtime_needs() -> tuple[str, ...]:
    """The syscalls the init and an exec'd process make between loading the filter and execve: the
    union of the steps of ``ocirt.linux.initproc.AFTER_FILTER`` (runc's set), so a profile that allows them
    starts whatever noNewPrivileges says."""
    from ocirt.linux.initproc import AFTER_FILTER

    return tuple(sorted({name for step in AFTER_FILTER.values() for name in step}))


def parse_errno(text: str) -> int:
    """``EPERM``, ``eperm`` or ``1`` -> 1; a one-line error for anything else."""
    value = text.strip()
    if value.isascii() and value.isdigit():
        number = int(value)
        if 0 < number <= 4095:
            return number
        raise OcirtError(f"--seccomp-learn-errno: {text!r} is not an errno in 1..4095")
    code = getattr(errno_mod, value.upper(), None)
    if not isinstance(code, int) or not value.upper().startswith("E"):
        raise OcirtError(f"--seccomp-learn-errno: unknown errno {text!r} (use a name such as EPERM or "
                         "ENOSYS, or a number)")
    return code


def errno_name(number: object) -> str:
    return errno_mod.errorcode.get(number, "?") if isinstance(number, int) else "?"


# ------------------------------------------------------------------------------------------------ files


def read(path: str, *, missing_ok: bool = False, follow: bool = True) -> dict | None:
    """The profile at ``path``: a seccomp section, or a whole config.json (its ``linux.seccomp``).
    None when the file does not exist and ``missing_ok``. Without ``follow`` a symlink is refused."""
    try:
        fd = _open_regular(path, follow)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise OcirtError(f"cannot read seccomp profile {path}: no such file or directory") from None
    except OSError as err:
        raise OcirtError(f"cannot read seccomp profile {path}: {why(err)}") from None
    try:
        return read_fd(fd, path)
    finally:
        os.close(fd)


def _open_regular(path: str, follow: bool = True) -> int:
    """An fd of the regular file at ``path``: never a fifo or device, whose open or read could block."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    if os.fstat(fd).st_mode & 0o170000 != 0o100000:
        os.close(fd)
        raise OcirtError(f"cannot read seccomp profile {path}: not a regular file")
    return fd


def read_fd(fd: int, path: str) -> dict:
    try:
        raw = b""
        while len(raw) <= _LARGEST_FILE:
            chunk = os.read(fd, _LARGEST_FILE + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
    except OSError as err:
        raise OcirtError(f"cannot read seccomp profile {path}: {why(err)}") from None
    if len(raw) > _LARGEST_FILE:
        raise ConfigError(f"seccomp profile {path}: larger than {_LARGEST_FILE >> 20} MiB")
    import json

    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"seccomp profile {path}: malformed JSON: {err}") from None
    return section_of(document, path)


def section_of(document: object, where: str) -> dict:
    if isinstance(document, dict) and "defaultAction" not in document and isinstance(document.get("linux"), dict):
        if not isinstance(document["linux"].get("seccomp"), dict):
            raise ConfigError(f"{where}: a config without linux.seccomp")
        document = document["linux"]["seccomp"]
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: a seccomp profile must be a JSON object")
    if not isinstance(document.get("defaultAction"), str):
        raise ConfigError(f"{where}: not a seccomp profile (no defaultAction)")
    rules = document.get("syscalls", [])
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise ConfigError(f"{where}: syscalls must be an array of objects")
    for i, rule in enumerate(rules):
        names = rule.get("names")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ConfigError(f"{where}: syscalls[{i}].names must be an array of syscall names")
        if not isinstance(rule.get("action"), str):
            raise ConfigError(f"{where}: syscalls[{i}] has no action")
    architectures = document.get("architectures", [])
    if not isinstance(architectures, list) or not all(isinstance(arch, str) for arch in architectures):
        raise ConfigError(f"{where}: architectures must be an array of names")
    return document


def check_learning_target(path: str) -> None:
    """Before a learning run starts: the profile can be written where asked, and an existing one can be
    merged into. The run would otherwise end with nothing to show for it."""
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(directory)
    except OSError as err:
        raise OcirtError(f"--seccomp-learn: cannot write {path}: {why(err)}") from None
    if st.st_mode & 0o170000 != 0o040000:
        raise OcirtError(f"--seccomp-learn: cannot write {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OcirtError(f"--seccomp-learn: cannot write {path}: permission denied")
    if os.path.isdir(path):
        raise OcirtError(f"--seccomp-learn: {path} is a directory")
    read(path, missing_ok=True, follow=False)


def write_merged(path: str, observed: set[str], architectures: list[str], errno_ret: int | None) -> Merge:
    """Merge a run's syscalls into the profile at ``path`` (made when missing) and replace the file
    atomically. Runs that learn into one file at the same time take turns (flock on the file itself)."""
    import fcntl

    while True:
        try:
            # Not followed: the path was resolved when the run began, and a link put there since (in a
            # directory someone else can write) must not make the runtime read another file.
            fd = _open_regular(path, follow=False)
        except FileNotFoundError:
            fd = -1
        except OSError as err:
            raise OcirtError(f"cannot read seccomp profile {path}: {why(err)}") from None
        if fd < 0:
            lock_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            lock_fd = fd
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            # Another learner may have replaced (or made) the file while this one waited for the lock.
            if not _still_current(path, fd):
                continue
            if fd < 0 and os.path.lexists(path):
                continue
            profile = read_fd(fd, path) if fd >= 0 else None
            merge = merge_learned(profile, observed, architectures, errno_ret)
            _replace(path, merge.profile, None if fd < 0 else os.fstat(fd))
            return merge
        finally:
            os.close(lock_fd)


def _still_current(path: str, fd: int) -> bool:
    try:
        on_disk = os.lstat(path)
    except FileNotFoundError:
        return fd < 0
    if fd < 0:
        return False
    mine = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _replace(path: str, profile: dict, old: os.stat_result | None) -> None:
    """Write ``profile`` next to ``path`` and rename it over; the old file's mode and owner are kept."""
    import json

    text = json.dumps(profile, indent=2) + "\n"
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            if old is not None:
                os.fchmod(fd, old.st_mode & 0o7777)
                if os.geteuid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
                    os.fchown(fd, old.st_uid, old.st_gid)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OcirtError(f"cannot write seccomp profile {path}: {why(err)}") from None


# ------------------------------------------------------------------------------------------------ merging


class Merge:
    """A merged profile and what the merge did: ``added`` names new to the learned rule, ``new_arches``,
    and the observed names another rule decides, ``denied_by_rule`` and ``narrowed_by_rule``."""

    def __init__(self, profile: dict):
        self.profile = profile
        self.added: list[str] = []
        self.new_arches: list[str] = []
        self.denied_by_rule: list[str] = []
        self.narrowed_by_rule: list[str] = []

    def allowed(self) -> int:
        return len(learned_rule(self.profile)["names"])

    def summary(self, path: str) -> str:
        new = f"{len(self.added)} new" + (f" ({' '.join(self.added)})" if 0 < len(self.added) <= 12 else "")
        parts = [f"{path}: {self.allowed()} syscalls allowed, {new}"]
        arches = self.profile.get("architectures") or []
        if arches:
            parts.append(f"architectures {' '.join(arches)}")
        line = "; ".join(parts)
        if self.denied_by_rule:
            line += f"; observed but denied by a rule of the profile, left so: {' '.join(self.denied_by_rule)}"
        if self.narrowed_by_rule:
            line += (f"; observed, allowed by the profile only for some arguments, left so: "
                     f"{' '.join(self.narrowed_by_rule)}")
        return line


def new_profile(errno_ret: int | None) -> dict:
    return {"defaultAction": DENY, "defaultErrnoRet": errno_ret or errno_mod.EPERM, "architectures": [],
            "syscalls": []}


def learned_rule(profile: dict) -> dict:
    """The first rule that allows without arguments: where learned names go (made when missing)."""
    for rule in profile.setdefault("syscalls", []):
        if rule.get("action") == ALLOW and not rule.get("args") and "errnoRet" not in rule:
            return rule
    rule = {"names": [], "action": ALLOW}
    profile["syscalls"].insert(0, rule)
    return rule


def merge_learned(profile: dict | None, observed: set[str], architectures: list[str],
                  errno_ret: int | None) -> Merge:
    """``profile`` (None: a new one) with ``observed`` and ``runtime_needs()`` allowed and
    ``architectures`` added. ``errno_ret``, when given, becomes the default action's errno."""
    import copy

    merged = new_profile(errno_ret) if profile is None else copy.deepcopy(profile)
    result = Merge(merged)
    if errno_ret is not None:
        merged["defaultAction"] = DENY
        merged["defaultErrnoRet"] = errno_ret
    arches = merged.setdefault("architectures", [])
    for arch in architectures:
        if arch not in arches:
            arches.append(arch)
            result.new_arches.append(arch)
    rule = learned_rule(merged)
    decided: dict[str, str] = {}
    narrowed: set[str] = set()
    for other in merged["syscalls"]:
        if other is rule:
            continue
        for name in other.get("names", []):
            if other.get("args"):
                narrowed.add(name)
            else:
                decided.setdefault(name, other.get("action", ""))
    present = set(rule["names"])
    for name in sorted(set(observed) | set(runtime_needs())):
        if name in present:
            continue
        if name in decided:
            if decided[name] not in _ALLOWING:
                result.denied_by_rule.append(name)
            continue
        if name in narrowed:
            result.narrowed_by_rule.append(name)
            continue
        present.add(name)
        result.added.append(name)
    rule["names"] = sorted(present)
    return result


# ------------------------------------------------------------------------------------------------ showing


def verdict(rule: dict) -> str:
    """A rule's action as one phrase: ``SCMP_ACT_ERRNO(EPERM)``, ``SCMP_ACT_ALLOW if arg0 == 0x8``."""
    action = str(rule.get("action"))
    if action in _WITH_ERRNO:
        number = rule.get("errnoRet", errno_mod.EPERM)
        action += f"({errno_name(number)})" if errno_name(number) != "?" else f"({number})"
    conditions = [condition(arg) for arg in rule.get("args") or []]
    if conditions:
        action += " if " + " and ".join(conditions)
    return action


def condition(arg: object) -> str:
    if not isinstance(arg, dict):
        return "?"
    index, op, value, value_two = arg.get("index"), arg.get("op"), arg.get("value"), arg.get("valueTwo", 0)
    if op == "SCMP_CMP_MASKED_EQ":
        return f"arg{index} & {_number(value)} == {_number(value_two)}"
    return f"arg{index} {_OPERATORS.get(str(op), str(op))} {_number(value)}"


def _number(value: object) -> str:
    return hex(value) if isinstance(value, int) else repr(value)


def default_verdict(profile: dict) -> str:
    return verdict({"action": profile.get("defaultAction"), "errnoRet": profile.get("defaultErrnoRet", 1)})


_KNOWN_KEYS = ("defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath",
               "listenerMetadata", "syscalls")


def show(profile: dict, *, width: int = 100) -> str:
    """The profile's rules, one block per rule in the kernel's order of precedence for a name (the
    profile's order), each with its syscall names wrapped; then what the runtime needs and whether the
    profile allows it."""
    lines = [f"default: {default_verdict(profile)}",
             f"architectures: {' '.join(profile.get('architectures') or []) or '(native only)'}"]
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            value = profile[key]
            lines.append(f"{key}: {' '.join(value) if isinstance(value, list) else value}")
    for key in profile:
        if key not in _KNOWN_KEYS:
            lines.append(f"{key}: (not runtime-spec; ignored by runtimes)")
    rules = profile.get("syscalls") or []
    for i, rule in enumerate(rules):
        names = rule.get("names") or []
        lines.append(f"rule {i}: {verdict(rule)} ({len(names)} syscall{'s' if len(names) != 1 else ''})")
        lines.extend(_wrapped(names, width))
        extra = sorted(key for key in rule if key not in ("names", "action", "errnoRet", "args"))
        if extra:
            lines.append(f"  other keys: {' '.join(extra)} (not runtime-spec; ignored by runtimes)")
    verdicts = verdicts_by_name(profile)
    missing = [name for name in runtime_needs()
               if not any(v.startswith(_ALLOWING) for v in verdicts.get(name, [default_verdict(profile)]))]
    if missing:
        lines.append(f"the runtime needs between loading the filter and execve, and the profile does not "
                     f"allow: {' '.join(missing)}")
    else:
        lines.append("the runtime's syscalls between loading the filter and execve: all allowed")
    return "\n".join(lines) + "\n"


def _wrapped(names: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for name in names:
        if line and len(line) + 1 + len(name) > width - 2:
            lines.append("  " + line)
            line = name
        else:
            line = f"{line} {name}" if line else name
    if line:
        lines.append("  " + line)
    return lines


def verdicts_by_name(profile: dict) -> dict[str, list[str]]:
    """Syscall name -> the verdicts of the rules that name it, in the profile's order."""
    out: dict[str, list[str]] = {}
    for rule in profile.get("syscalls") or []:
        phrase = verdict(rule)
        for name in rule.get("names") or []:
            if phrase not in out.setdefault(name, []):
                out[name].append(phrase)
    return out


def diff(a: dict, b: dict) -> list[str]:
    """What changes from profile ``a`` to ``b``, one line each: the default action, the architectures,
    and per syscall ``+ name: verdict`` (decided in b only), ``- name: verdict`` (in a only) or
    ``~ name: verdict -> verdict``. Empty when they decide everything alike."""
    lines = []
    if default_verdict(a) != default_verdict(b):
        lines.append(f"~ default: {default_verdict(a)} -> {default_verdict(b)}")
    arches_a, arches_b = a.get("architectures") or [], b.get("architectures") or []
    lines += [f"+ architecture {arch}" for arch in arches_b if arch not in arches_a]
    lines += [f"- architecture {arch}" for arch in arches_a if arch not in arches_b]
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if a.get(key) != b.get(key):
            lines.append(f"~ {key}: {a.get(key)!r} -> {b.get(key)!r}")
    by_a, by_b = verdicts_by_name(a), verdicts_by_name(b)
    for name in sorted(set(by_a) | set(by_b)):
        left, right = "; ".join(by_a.get(name, [])), "; ".join(by_b.get(name, []))
        if left == right:
            continue
        if not left:
            lines.append(f"+ {name}: {right}")
        elif not right:
            lines.append(f"- {name}: {left} (now the default: {default_verdict(b)})")
        else:
            lines.append(f"~ {name}: {left} -> {right}")
    return lines


def apply_to_bundle(profile: dict, bundle: str) -> str:
    """Put ``profile`` into the bundle's config.json as its ``linux.seccomp`` (the file replaced
    atomically, its other keys untouched). Returns the config's path."""
    import json

    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read())
    except OSError as err:
        raise OcirtError(f"cannot read {path}: {why(err)}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    linux = config.setdefault("linux", {})
    if not isinstance(linux, dict):
        raise ConfigError(f"{path}: linux must be an object")
    linux["seccomp"] = profile
    _replace(path, config, os.stat(path))
    return path
