"""Device rules on cgroup v2 as an eBPF program, checked against the kernel.

The program is attached to a fresh cgroup2 directory (here the hybrid host's /sys/fs/cgroup/unified, on
a pure v2 host its root); a child placed there tries every access to real device nodes and the answers
must be what `ebpf.evaluate` (the v1 devices controller's rule semantics) says, rule set by rule set.
"""

from __future__ import annotations

import json
import os
import posixpath

import pytest

from ocirt import cgroups
from ocirt.cgroups import ebpf
from ocirt.errors import CgroupError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF programs needs root")

# (path, type, major, minor) of nodes every Linux host has.
NODES = [("/dev/null", "c", 1, 3), ("/dev/zero", "c", 1, 5), ("/dev/full", "c", 1, 7),
         ("/dev/urandom", "c", 1, 9)]
DENY_ALL = {"allow": False, "access": "rwm"}
RULE_SETS = {
    "deny all, allow null rw": [DENY_ALL, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
    "deny all, allow major 1 read": [DENY_ALL, {"allow": True, "type": "c", "major": 1, "access": "r"}],
    "allow all, deny zero write": [{"allow": True, "access": "rwm"},
                                   {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"}],
    "later deny all wins": [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}, DENY_ALL],
    "block only": [DENY_ALL, {"allow": True, "type": "b", "access": "rwm"}],
    "mknod anything, open null": [DENY_ALL, {"allow": True, "type": "c", "access": "m"},
                                  {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
}

PROBE = """
import json, os, sys
result = {}
for path, mode in json.loads(sys.argv[1]):
    try:
        os.close(os.open(path, {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[mode]))
        result[path + " " + mode] = True
    except PermissionError:
        result[path + " " + mode] = False
for target, major, minor in json.loads(sys.argv[2]):
    try:
        os.mknod(target, 0o600 | 0o020000, os.makedev(major, minor))
        os.unlink(target)
        result["mknod %d:%d" % (major, minor)] = True
    except PermissionError:
        result["mknod %d:%d" % (major, minor)] = False
print(json.dumps(result))
"""


@pytest.fixture
def v2_cgroup(cgroup_prefix):
    table = cgroups.mounts()
    if table.v2 is None:
        pytest.skip("no cgroup2 mount")
    directory = posixpath.join(table.v2.mountpoint, cgroup_prefix)
    os.mkdir(directory)
    yield directory


def _probe(spawn, directory: str, tmp_path) -> dict[str, bool]:
    opens = [(path, mode) for path, *_ in NODES for mode in ("r", "w", "rw")]
    nodes = [(str(tmp_path / f"n{major}-{minor}"), major, minor) for _p, _t, major, minor in NODES]
    child = spawn(f"import sys\nsys.argv[1:] = {[json.dumps(opens), json.dumps(nodes)]!r}\n" + PROBE)
    with open(os.path.join(directory, "cgroup.procs"), "w") as handle:
        handle.write(str(child.pid))
    child.release()
    status, out = child.wait()
    assert status == 0, out
    return json.loads(out)


def _expected(rules: list[dict]) -> dict[str, bool]:
    expected = {}
    for path, kind, major, minor in NODES:
        for mode in ("r", "w", "rw"):
            expected[f"{path} {mode}"] = ebpf.evaluate(rules, kind, major, minor, mode)
    for _path, kind, major, minor in NODES:
        expected[f"mknod {major}:{minor}"] = ebpf.evaluate(rules, kind, major, minor, "m")
    return expected


@pytest.mark.parametrize("name", sorted(RULE_SETS))
def test_the_kernel_enforces_what_the_rules_say(v2_cgroup, spawn, tmp_path, name):
    rules = RULE_SETS[name]
    ebpf.apply(v2_cgroup, rules)
    fd = os.open(v2_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(ebpf.attached(fd)) == 1
    finally:
        os.close(fd)
    assert _probe(spawn, v2_cgroup, tmp_path) == _expected(rules)


def test_update_replaces_the_program(v2_cgroup, spawn, tmp_path):
    ebpf.apply(v2_cgroup, RULE_SETS["deny all, allow null rw"])
    ebpf.apply(v2_cgroup, RULE_SETS["allow all, deny zero write"])
    fd = os.open(v2_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(ebpf.attached(fd)) == 1
    finally:
        os.close(fd)
    seen = _probe(spawn, v2_cgroup, tmp_path)
    assert seen == _expected(RULE_SETS["allow all, deny zero write"])
    assert seen["/dev/full rw"] and not seen["/dev/zero w"]


def test_without_rules_a_fresh_cgroup_allows_everything(v2_cgroup, spawn, tmp_path):
    assert all(_probe(spawn, v2_cgroup, tmp_path).values())


def test_bad_rules_are_refused_before_anything_is_loaded():
    with pytest.raises(CgroupError, match="invalid device type"):
        ebpf.compile_rules([{"allow": True, "type": "x"}])
    with pytest.raises(CgroupError, match="invalid device access"):
        ebpf.compile_rules([{"allow": True, "type": "c", "access": "rwx"}])


def test_instruction_encoding():
    assert ebpf.Insn(0xB7, ebpf.R0, imm=1).encode() == bytes([0xB7, 0, 0, 0, 1, 0, 0, 0])
    assert ebpf.Insn(0x61, ebpf.R2, ebpf.R1, off=4).encode() == bytes([0x61, 0x12, 4, 0, 0, 0, 0, 0])
    assert ebpf.Insn(0x55, ebpf.R4, off=-1, imm=-1).encode() == bytes([0x55, 4, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
