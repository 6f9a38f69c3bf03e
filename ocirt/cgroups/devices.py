"""The container's device access list: what `linux.resources.devices` grants, on top of the spec's defaults.

`linux.devices` only makes nodes; it grants nothing. Access starts from "deny everything", the config's
rules apply in their order, and the default devices come last, so a config can't take away what
config-linux.md "Default Devices" promises (runc does the same). Both the v1 devices controller and a
cgroup v2 device program are built from this one list.
"""

from __future__ import annotations

DENY_ALL = {"allow": False, "type": "a", "access": "rwm"}

# config-linux.md "Default Devices": null, zero, full, random, urandom, tty, the console (a bind of a pty
# from /dev/pts), ptmx; plus mknod of any node, which the rules above still decide who may open.
DEFAULT_RULES: tuple[dict, ...] = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
      for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2))),
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
)


def rules(config_rules: list[dict] | None) -> list[dict]:
    """The ordered rules to apply: deny all, the config's own, then the defaults."""
    return [DENY_ALL, *(config_rules or []), *DEFAULT_RULES]


def with_rules(resources: dict | None) -> dict:
    """``resources`` with its device list replaced by the full ordered list."""
    return dict(resources or {}, devices=rules((resources or {}).get("devices")))


__all__ = ["DEFAULT_RULES", "DENY_ALL", "rules", "with_rules"]
