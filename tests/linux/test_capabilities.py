"""ocirt.linux.capabilities: each plan is applied in a forked child that leaves uid 0 the way the init does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import helpers
import pytest

from ocirt import log as ocirt_log
from ocirt import syscalls
from ocirt.errors import ConfigError, OcirtError
from ocirt.linux import capabilities as caps

from .forked import run_forked

prctl = helpers.require_module("prctl", "python3-prctl (apt-get install python3-prctl, or run scripts/bootstrap)")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop bounding caps and switch uid")
PROCESS_UID = PROCESS_GID = 1000


def mask(*names: str) -> int:
    return sum(1 << caps.CAPABILITIES[name] for name in names)


def cap_masks(status_text: str) -> dict[str, int]:
    fields = dict(line.split(":\t", 1) for line in status_text.splitlines() if ":\t" in line)
    return {key: int(fields[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def become_process_user(plan: caps.CapabilityPlan) -> dict:
    """The init's order: bounding, keep-caps, groups/gid/uid, then the sets; returns its own masks."""
    caps.drop_bounding(plan)
    caps.keep_caps_for_uid_switch()
    os.setgroups([])
    os.setresgid(PROCESS_GID, PROCESS_GID, PROCESS_GID)
    os.setresuid(PROCESS_UID, PROCESS_UID, PROCESS_UID)
    caps.apply(plan)
    return {"uid": os.getuid(), **cap_masks(Path("/proc/self/status").read_text())}


def after_exec() -> dict[str, int]:
    """The masks of a program the process user then executes (no file capabilities)."""
    output = subprocess.run(["/bin/cat", "/proc/self/status"], capture_output=True, text=True, check=True)
    return cap_masks(output.stdout)


def test_name_table_matches_the_kernel_headers_as_python_prctl_knows_them():
    assert len(caps.CAPABILITIES) == 41
    assert caps.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    for name, number in caps.CAPABILITIES.items():
        if hasattr(prctl, name):
            assert getattr(prctl, name) == number, name
    assert sorted(caps.CAPABILITIES.values()) == list(range(41))


@needs_root
def test_plan_with_empty_inheritable_across_the_uid_switch():
    bounding = ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID")
    granted = ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE")
    plan = caps.prepare({"bounding": list(bounding), "effective": list(granted), "permitted": list(granted)})

    def child():
        return {"own": become_process_user(plan), "exec": after_exec()}

    result = run_forked(child).ok()
    own, executed = result["own"], result["exec"]
    assert own == {"uid": PROCESS_UID, "CapBnd": mask(*bounding), "CapEff": mask(*granted),
                   "CapPrm": mask(*granted), "CapInh": 0, "CapAmb": 0}
    # A non-root user's execve keeps nothing without inheritable or ambient caps.
    assert executed == {"CapBnd": mask(*bounding), "CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapAmb": 0}


@needs_root
def test_ambient_capability_survives_execve_of_the_process_user():
    bounding = ("CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SETPCAP")
    permitted = ("CAP_CHOWN", "CAP_NET_BIND_SERVICE")
    plan = caps.prepare({"bounding": list(bounding), "effective": ["CAP_CHOWN"], "permitted": list(permitted),
                         "inheritable": ["CAP_NET_BIND_SERVICE"], "ambient": ["CAP_NET_BIND_SERVICE"]})

    def child():
        return {"own": become_process_user(plan), "exec": after_exec()}

    result = run_forked(child).ok()
    nbs = mask("CAP_NET_BIND_SERVICE")
    assert result["own"] == {"uid": PROCESS_UID, "CapBnd": mask(*bounding), "CapEff": mask("CAP_CHOWN"),
                             "CapPrm": mask(*permitted), "CapInh": nbs, "CapAmb": nbs}
    assert result["exec"] == {"CapBnd": mask(*bounding), "CapEff": nbs, "CapPrm": nbs, "CapInh": nbs,
                              "CapAmb": nbs}


@needs_root
def test_absent_capabilities_leave_the_process_with_none():
    plan = caps.prepare(None)

    def child():
        caps.drop_bounding(plan)
        caps.apply(plan)  # staying uid 0: the sets must still come out empty
        return cap_masks(Path("/proc/self/status").read_text())

    assert run_forked(child).ok() == {"CapBnd": 0, "CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapAmb": 0}


@needs_root
def test_uid_switch_without_keep_caps_is_reported():
    plan = caps.prepare({"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]})

    def child():
        caps.drop_bounding(plan)
        os.setresuid(PROCESS_UID, PROCESS_UID, PROCESS_UID)
        try:
            caps.apply(plan)
        except OcirtError as err:
            return str(err)
        return None

    assert run_forked(child).ok() == "cannot grant CAP_CHOWN: the runtime does not hold them"


@needs_root
def test_dropping_the_bounding_set_needs_cap_setpcap():
    plan = caps.prepare({"bounding": ["CAP_CHOWN"]})

    def child():
        effective, permitted, inheritable = syscalls.capget()
        setpcap = 1 << caps.CAPABILITIES["CAP_SETPCAP"]
        syscalls.capset(effective & ~setpcap, permitted & ~setpcap, inheritable)
        try:
            caps.drop_bounding(plan)
        except OcirtError as err:
            return str(err)
        return None

    assert run_forked(child).ok() == "cannot drop CAP_DAC_OVERRIDE from the bounding set: operation not permitted"


def test_malformed_name_is_a_config_error_naming_it_and_its_place():
    with pytest.raises(ConfigError) as caught:
        caps.prepare({"bounding": ["CAP_CHOWN", "cap_make_coffee"]})
    assert str(caught.value).startswith("unknown capability 'cap_make_coffee' in process.capabilities.bounding[1]")
    with pytest.raises(ConfigError, match=r"unknown capability 'chown' in process.capabilities.ambient\[0\]"):
        caps.capability_mask(["chown"], "process.capabilities.ambient")


def test_well_formed_unknown_name_is_a_config_error_too():
    # A typo must not run the container with fewer capabilities than asked for (issue 14, item 4: "an
    # unknown or malformed name stays an error").
    with pytest.raises(ConfigError, match=r"^unknown capability 'CAP_MAKE_COFFEE' in process.capabilities.bounding\[1\]$"):
        caps.prepare({"bounding": ["CAP_CHOWN", "CAP_MAKE_COFFEE"]})


def test_known_capability_beyond_this_kernel_is_a_warning(monkeypatch, capsys):
    # config.md: a value that "cannot be mapped to a relevant kernel interface ... MUST be logged as a warning".
    monkeypatch.setattr(caps, "_last_cap", caps.CAPABILITIES["CAP_BPF"])
    plan = caps.prepare({"bounding": ["CAP_CHOWN", "CAP_CHECKPOINT_RESTORE"]})
    assert plan.bounding == 1 << caps.CAPABILITIES["CAP_CHOWN"]
    assert "warning: capability CAP_CHECKPOINT_RESTORE in process.capabilities.bounding is not known to this " \
        "kernel" in capsys.readouterr().err


def test_effective_outside_permitted_is_a_config_error():
    with pytest.raises(ConfigError, match="process.capabilities.effective has CAP_KILL, which "
                                          "process.capabilities.permitted lacks"):
        caps.prepare({"effective": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN"]})


def test_ambient_cap_that_cannot_be_raised_is_left_out_with_a_debug_line(tmp_path, capsys):
    """The kernel's own rule, not a warning: runc's `spec` writes such a config (issue 14, item 11)."""
    log_file = tmp_path / "ocirt.log"
    saved = (ocirt_log.config.path, ocirt_log.config.json, ocirt_log.config.threshold)
    ocirt_log.configure(str(log_file), debug=True)
    try:
        plan = caps.prepare({"permitted": ["CAP_NET_RAW", "CAP_KILL"], "inheritable": ["CAP_KILL"],
                             "ambient": ["CAP_NET_RAW", "CAP_KILL"]})
    finally:
        ocirt_log.config.path, ocirt_log.config.json, ocirt_log.config.threshold = saved
    assert plan.ambient == mask("CAP_KILL")
    assert ("level=debug msg=\"ambient capabilities CAP_NET_RAW are not both permitted and inheritable"
            in log_file.read_text())
    assert capsys.readouterr().err == ""


def test_last_cap_is_the_kernel_s():
    assert caps.last_cap() == int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert caps.prepare({"bounding": list(caps.CAPABILITIES)}).bounding == (1 << (caps.last_cap() + 1)) - 1
