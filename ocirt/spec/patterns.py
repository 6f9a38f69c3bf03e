"""Matchers for the regular expressions the bundled schemas use, written without ``re``.

Importing ``re`` (and ``enum`` under it) costs about 8 ms here, a third of a whole `runc run`, and the
create path only ever needs these few patterns. Each matcher answers exactly what ``re.search(pattern, s)``
answers, including ``$`` also matching before one final newline; tests/unit/test_patterns.py checks each
against ``re``. Patterns without a matcher here fall back to ``re`` in the generated validator.
"""

_DIGITS = frozenset("0123456789")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_IDENT = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")


def _body(text: str) -> str:
    """What a pattern anchored with ``^...$`` must match in full: ``$`` also matches before a final \\n."""
    return text[:-1] if text.endswith("\n") else text


def _number_no_leading_zero(part: str) -> bool:
    return bool(part) and set(part) <= _DIGITS and (part == "0" or part[0] != "0")


def _dot_identifiers(part: str) -> bool:
    return all(piece and set(piece) <= _IDENT for piece in part.split("."))


def semver(text: str) -> bool:
    body = _body(text)
    for candidate in {body, text}:
        if _semver_exact(candidate):
            return True
    return False


def _semver_exact(body: str) -> bool:
    core, plus, build = body.partition("+")
    if plus and not _dot_identifiers(build):
        return False
    version, dash, pre = core.partition("-")
    if dash and not _dot_identifiers(pre):
        return False
    numbers = version.split(".")
    return len(numbers) == 3 and all(_number_no_leading_zero(n) for n in numbers)


def _range(part: str) -> bool:
    low, dash, high = part.partition("-")
    return bool(low) and set(low) <= _DIGITS and (not dash or (bool(high) and set(high) <= _DIGITS))


def cpu_list(text: str) -> bool:
    body = _body(text)
    for candidate in {body, text}:
        if candidate == "" or all(_range(part) for part in candidate.split(",")):
            return True
    return False


def any_char(text: str) -> bool:
    return text != ""


def absolute(text: str) -> bool:
    return text.startswith("/")


def rlimit_name(text: str) -> bool:
    body = _body(text)
    return body.startswith("RLIMIT_") and len(body) > 7 and set(body[7:]) <= _UPPER


def hugepage_size(text: str) -> bool:
    body = _body(text)
    return (len(body) >= 3 and body[0] in "123456789" and body[-1] == "B" and body[-2] in "KMG"
            and set(body[1:-2]) <= _DIGITS)


def device_access(text: str) -> bool:
    return set(_body(text)) <= frozenset("rwm")


def rdt_memory_bandwidth(text: str) -> bool:
    return text.startswith("MB:") and "\n" not in _body(text)


KNOWN = {
    "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?"
    "(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$": semver,
    "^([0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)?$": cpu_list,
    "[\\s\\S]": any_char,
    "^/": absolute,
    "^RLIMIT_[A-Z]+$": rlimit_name,
    "^[1-9][0-9]*[KMG]B$": hugepage_size,
    "^[rwm]*$": device_access,
    "^MB:[^\\n]*$": rdt_memory_bandwidth,
}
