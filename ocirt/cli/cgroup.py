"""`cgroup delegate|undelegate`: hand cgroup subtrees to a user, over ocirt.cgroups.delegate (root only)."""

from __future__ import annotations

import os

from ocirt.errors import OcirtError

_USAGE = "usage: ocirt cgroup delegate|undelegate --user NAME [--controllers LIST] [--path PATH]"


def cmd_cgroup(opts, cmd, positional):
    if positional[0] not in ("delegate", "undelegate"):
        raise OcirtError(f"cgroup: expected `delegate` or `undelegate`; {_USAGE}")
    action = positional[0]
    user = cmd.get("user")
    if not user:
        raise OcirtError(f"cgroup {action}: --user is required; {_USAGE}")
    if os.geteuid() != 0:
        raise OcirtError(f"cgroup {action}: only root can change cgroup ownership; run it as root "
                         f"(e.g. `sudo ocirt cgroup {action} --user {user}`)")
    controllers = None
    if cmd.get("controllers"):
        controllers = [item.strip() for item in cmd["controllers"].split(",") if item.strip()]
        if not controllers:
            raise OcirtError(f"cgroup {action}: --controllers needs a comma-separated list; {_USAGE}")
    from ocirt.cgroups import delegate as delegation

    if action == "delegate":
        directories = delegation.delegate(user, controllers, cmd.get("path"))
    else:
        directories = delegation.undelegate(user, controllers, cmd.get("path"))
    for directory in directories:
        print(directory)
