"""`seccomp show|diff|apply`: seccomp profiles as files, over ocirt.seccomp_profile."""

from __future__ import annotations

import sys

from ocirt.errors import OcirtError

_USAGE = "usage: ocirt seccomp show PROFILE | diff A B | apply PROFILE [--bundle DIR]"
_ARGS = {"show": 1, "diff": 2, "apply": 1}


def cmd_seccomp(opts, cmd, positional):
    action, files = positional[0], positional[1:]
    if action not in _ARGS:
        raise OcirtError(f"seccomp: expected show, diff or apply, not {action!r}; {_USAGE}")
    if len(files) != _ARGS[action]:
        raise OcirtError(f"seccomp {action}: takes {_ARGS[action]} profile{'s' if _ARGS[action] > 1 else ''}; "
                         f"{_USAGE}")
    if cmd.get("bundle") and action != "apply":
        raise OcirtError(f"seccomp {action}: --bundle is for apply only; {_USAGE}")
    from ocirt import seccomp_profile

    profiles = [seccomp_profile.read(path) for path in files]
    if action == "show":
        sys.stdout.write(seccomp_profile.show(profiles[0]))
        return 0
    if action == "diff":
        lines = seccomp_profile.diff(profiles[0], profiles[1])
        sys.stdout.write("".join(line + "\n" for line in lines))
        return 1 if lines else 0
    import os

    path = seccomp_profile.apply_to_bundle(profiles[0], os.path.abspath(cmd.get("bundle") or "."))
    print(f"{path}: linux.seccomp is now {files[0]}")
    return 0
