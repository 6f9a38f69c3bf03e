"""Inheritable capabilities on exec (CVE-2022-29162): a runtime that fills the inheritable set lets a
program with file capabilities (or an ambient-raising one) gain capabilities beyond the permitted set
across execve, even for a non-root user. ocirt leaves inheritable (and ambient) empty unless the config
names capabilities for them, in run and in exec."""

from __future__ import annotations

import pytest

from security import assert_nothing_left

CAP_SHOW = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status"
CAP_KILL = 5
CAP_NET_BIND_SERVICE = 10


def cap_sets(output: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1], 16) for line in output.splitlines() if line.startswith("Cap")}


@pytest.mark.parametrize("uid", [0, 1000])
def test_inheritable_and_ambient_are_empty_unless_asked(make_bundle, user, uid):
    if user is not None and uid != 0:
        pytest.skip("a rootless container's single-id map has no uid but 0")
    bundle = make_bundle(user=user, args=["sh", "-c", CAP_SHOW])
    bundle.config["process"]["user"] = {"uid": uid, "gid": uid}
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    sets = cap_sets(result.stdout)
    assert sets["CapInh"] == 0 and sets["CapAmb"] == 0, result.stdout
    if uid == 0:
        assert sets["CapEff"] == (1 << CAP_KILL) | (1 << CAP_NET_BIND_SERVICE) | (1 << 29), result.stdout
    else:
        assert sets["CapEff"] == 0 and sets["CapPrm"] == 0, result.stdout
    assert_nothing_left(bundle)


def test_exec_gets_no_inheritable_caps_even_with_cap_flags(make_bundle, user):
    bundle = make_bundle(user=user, args=["sleep", "600"])
    assert bundle.run("-d").returncode == 0
    try:
        for extra in ([], ["--cap", "CAP_CHOWN"], ["-u", "0"]):
            result = bundle.runtime(["exec", *extra, bundle.id, "sh", "-c", CAP_SHOW])
            assert result.returncode == 0, result.stderr
            sets = cap_sets(result.stdout)
            assert sets["CapInh"] == 0, (extra, result.stdout)
            if extra[:1] == ["--cap"]:
                assert sets["CapEff"] & 1, "--cap added CAP_CHOWN to the effective set"
    finally:
        bundle.delete(force=True)
    assert_nothing_left(bundle)


def test_inheritable_caps_the_config_asks_for_are_set(make_bundle, user):
    bundle = make_bundle(user=user, args=["sh", "-c", CAP_SHOW])
    bundle.config["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert cap_sets(result.stdout)["CapInh"] == 1 << CAP_KILL, result.stdout
    assert_nothing_left(bundle)
