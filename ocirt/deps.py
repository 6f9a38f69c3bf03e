"""The Python packages ocirt imports for some features only, and what to install when one is missing.

Every such import goes through ``require``: a missing or too old package ends the command with one line
that names the package and how to get it, never with a traceback or an ``internal error``.

``python -m ocirt.deps`` checks them all (scripts/bootstrap runs it after building the venv).
"""

from __future__ import annotations

import sys

from ocirt.errors import OcirtError

_BOOTSTRAP = "run scripts/bootstrap"

# module -> (distribution, lowest version the code works with, what it is for, how to install it)
REQUIREMENTS = {
    # The explanation of a schema error uses the `referencing` registry, new in jsonschema 4.18.
    "jsonschema": ("jsonschema", (4, 18), "explaining schema errors",
                   f"{_BOOTSTRAP}, or pip install 'jsonschema>=4.18'"),
    "pyroute2": ("pyroute2", (0, 7), "linux.netDevices", f"{_BOOTSTRAP}, or pip install 'pyroute2>=0.7'"),
    # D-Bus for the systemd cgroup driver (--systemd-cgroup).
    "jeepney": ("jeepney", (0, 7), "the systemd cgroup driver", f"{_BOOTSTRAP}, or pip install 'jeepney>=0.7'"),
    # libseccomp's own binding, shipped by Debian only (not on PyPI); pip installs get pyseccomp instead.
    "seccomp": ("seccomp", None, "linux.seccomp",
                "apt-get install python3-seccomp, or pip install 'ocirt[seccomp]' (pyseccomp)"),
}
# module -> a module with the same API that serves when the first one is missing: pyseccomp, a ctypes
# binding over the system's libseccomp.so.2 on PyPI, builds the same programs as Debian's binding.
FALLBACKS = {"seccomp": "pyseccomp"}


class MissingDependency(OcirtError):
    """A package a feature needs is not importable, or too old."""


def version_of(distribution: str) -> tuple[int, ...] | None:
    """The installed version of ``distribution`` on this interpreter's path, as numbers; None if unknown."""
    from importlib import metadata

    try:
        text = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
    numbers = []
    for part in text.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers) or None


def _text(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "unknown"


def problem(module: str) -> str | None:
    """Why ``module`` can't serve ocirt here (one line), or None when it can."""
    distribution, minimum, purpose, install = REQUIREMENTS[module]
    wanted = f"{distribution} >= {_text(minimum)}" if minimum else distribution
    try:
        __import__(module)
        if module == "jsonschema":
            import referencing.jsonschema  # noqa: F401 - ships with jsonschema 4.18 and later
    except ImportError as err:
        if _fallback(module) is not None:
            return None
        found = version_of(distribution) if minimum else None
        what = f"found {_text(found)}" if found else f"{err.name or module} is not importable"
        return f"{purpose} needs {wanted} ({what}): {install}"
    if minimum:
        found = version_of(distribution)
        if found is not None and found < minimum:
            return f"{purpose} needs {wanted} (found {_text(found)}): {install}"
    return None


def require(module: str):
    """Import ``module`` for the feature it serves, or raise MissingDependency saying what to install."""
    if module not in _checked:
        reason = problem(module)
        if reason is not None:
            raise MissingDependency(reason)
        _checked.add(module)
    return sys.modules[module] if module in sys.modules else _fallback(module)


def _fallback(module: str):
    """The importable stand-in for ``module``, or None."""
    name = FALLBACKS.get(module)
    if name is None:
        return None
    try:
        return __import__(name)
    except (ImportError, RuntimeError):  # pyseccomp raises RuntimeError when libseccomp.so is missing
        return None


_checked: set[str] = set()


def main() -> int:
    problems = [reason for reason in map(problem, REQUIREMENTS) if reason]
    for reason in problems:
        print(f"ocirt: {reason}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
