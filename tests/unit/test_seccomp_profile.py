"""Learned seccomp profiles as data: the merge that keeps hand edits, `ocirt seccomp show|diff|apply`,
the learning filter's BPF and the recorder's result line. No root, no kernel feature."""

from __future__ import annotations

import json
import struct

import pytest

from ocirt import seccomp_profile as sp
from ocirt.cli import main
from ocirt.errors import ConfigError, OcirtError
from ocirt.linux import seccomp_learn


def test_the_runtimes_set_is_init_after_filter_computed():
    from ocirt.linux.initproc import AFTER_FILTER

    assert set(sp.runtime_needs()) == {name for names in AFTER_FILTER.values() for name in names}
    assert {"execve", "capset", "setuid", "write"} <= set(sp.runtime_needs())


def test_a_new_profile_denies_by_default_and_allows_what_was_seen_and_the_runtime_needs():
    merge = sp.merge_learned(None, {"read", "exit_group"}, ["SCMP_ARCH_X86_64"], None)
    profile = merge.profile
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"]
    assert profile["syscalls"] == [{"names": sorted({"read", "exit_group", *sp.runtime_needs()}),
                                    "action": "SCMP_ACT_ALLOW"}]
    assert merge.added == profile["syscalls"][0]["names"]


def test_merging_is_a_union_that_keeps_every_hand_edit():
    first = sp.merge_learned(None, {"read"}, ["SCMP_ARCH_X86_64"], 38).profile
    first["comment"] = "mine"
    first["syscalls"].append({"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13})
    first["syscalls"].append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                              "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}], "note": "x"})
    merge = sp.merge_learned(first, {"read", "mkdirat", "ptrace", "personality"}, ["SCMP_ARCH_X86"], None)
    merged = merge.profile
    assert merged["comment"] == "mine" and merged["defaultErrnoRet"] == 38
    assert merged["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"] and merge.new_arches == ["SCMP_ARCH_X86"]
    assert merge.added == ["mkdirat"]
    assert merge.denied_by_rule == ["ptrace"] and merge.narrowed_by_rule == ["personality"]
    assert merged["syscalls"][1:] == first["syscalls"][1:]
    assert "ptrace" not in merged["syscalls"][0]["names"]
    assert first["syscalls"][0]["names"] != merged["syscalls"][0]["names"], "the input was not copied"


def test_an_explicit_errno_replaces_the_default_action():
    profile = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": []}
    merged = sp.merge_learned(profile, set(), [], 1).profile
    assert merged["defaultAction"] == "SCMP_ACT_ERRNO" and merged["defaultErrnoRet"] == 1
    assert sp.merge_learned(profile, set(), [], None).profile["defaultAction"] == "SCMP_ACT_KILL_PROCESS"


def test_the_learned_rule_is_the_first_unconditional_allow():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["b"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["c"], "action": "SCMP_ACT_ALLOW"},
    ]}
    merged = sp.merge_learned(profile, {"d"}, [], None).profile
    assert "d" in merged["syscalls"][2]["names"] and len(merged["syscalls"]) == 3


@pytest.mark.parametrize("text, number", [("EPERM", 1), ("enosys", 38), ("13", 13)])
def test_errnos_by_name_or_number(text, number):
    assert sp.parse_errno(text) == number


@pytest.mark.parametrize("text", ["EBOGUS", "0", "5000", "O_RDONLY", ""])
def test_bad_errnos_are_refused(text):
    with pytest.raises(OcirtError, match="--seccomp-learn-errno"):
        sp.parse_errno(text)


def test_a_file_is_a_section_or_a_config_holding_one(tmp_path):
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    (tmp_path / "p.json").write_text(json.dumps(section))
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.3.0", "linux": {"seccomp": section}}))
    assert sp.read(str(tmp_path / "p.json")) == section == sp.read(str(tmp_path / "config.json"))
    for bad, message in (("[]", "must be a JSON object"), ("{", "malformed JSON"),
                         ('{"a": 1}', "no defaultAction"),
                         ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "x"}]}', "names must"),
                         ('{"linux": {}}', "without linux.seccomp")):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(ConfigError, match=message):
            sp.read(str(tmp_path / "bad.json"))


def test_write_merged_replaces_the_file_keeping_its_mode(tmp_path):
    path = tmp_path / "p.json"
    first = sp.write_merged(str(path), {"read"}, ["SCMP_ARCH_X86_64"], None)
    assert first.added and json.loads(path.read_text()) == first.profile
    path.chmod(0o600)
    second = sp.write_merged(str(path), {"read", "write", "mkdirat"}, ["SCMP_ARCH_X86_64"], None)
    assert second.added == ["mkdirat"] and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"], "no temporary file left"


def test_show_lists_rules_and_what_the_runtime_lacks():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "comment": "x",
                             "args": [{"index": 0, "value": 255, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]}]}
    text = sp.show(profile)
    assert text.splitlines()[:4] == ["default: SCMP_ACT_ERRNO(ENOSYS)", "architectures: SCMP_ARCH_X86_64",
                                     "rule 0: SCMP_ACT_ALLOW (2 syscalls)", "  read write"]
    assert "rule 1: SCMP_ACT_ALLOW if arg0 & 0xff == 0x8 (1 syscall)" in text
    assert "other keys: comment" in text
    assert "does not allow: capget capset" in text
    learned = sp.merge_learned(None, set(), [], None).profile
    assert "the runtime's syscalls between loading the filter and execve: all allowed" in sp.show(learned)


def test_diff_names_what_changes():
    a = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [
        {"names": ["read", "ptrace"], "action": "SCMP_ACT_ALLOW"}]}
    b = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
         "syscalls": [{"names": ["read", "mkdirat"], "action": "SCMP_ACT_ALLOW"},
                      {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    assert sp.diff(a, b) == [
        "~ default: SCMP_ACT_ERRNO(EPERM) -> SCMP_ACT_ERRNO(ENOSYS)",
        "+ architecture SCMP_ARCH_X86",
        "+ mkdirat: SCMP_ACT_ALLOW",
        "~ ptrace: SCMP_ACT_ALLOW -> SCMP_ACT_ERRNO(EPERM)",
    ]
    assert sp.diff(b, b) == []
    assert sp.diff(b, a)[-2] == "- mkdirat: SCMP_ACT_ALLOW (now the default: SCMP_ACT_ERRNO(EPERM))"


def test_the_seccomp_command(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}))
    b.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}))
    assert main(["seccomp", "show", str(a)]) == 0
    assert "rule 0: SCMP_ACT_ALLOW (1 syscall)\n  read\n" in capsys.readouterr().out
    assert main(["seccomp", "diff", str(a), str(b)]) == 1
    assert capsys.readouterr().out == "+ write: SCMP_ACT_ALLOW\n"
    assert main(["seccomp", "diff", str(a), str(a)]) == 0
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.3.0", "process": {"args": ["sh"]}}))
    assert main(["seccomp", "apply", str(b), "--bundle", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["linux"]["seccomp"] == json.loads(b.read_text()) and config["process"] == {"args": ["sh"]}
    capsys.readouterr()
    for argv, message in ((["seccomp", "show", str(tmp_path / "missing.json")], "no such file or directory"),
                          (["seccomp", "frob", str(a)], "expected show, diff or apply"),
                          (["seccomp", "diff", str(a)], "takes 2 profiles"),
                          (["seccomp", "show", str(a), "--bundle", "x"], "--bundle is for apply only")):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_learning_program_allows_only_the_handoff():
    program = seccomp_learn.learning_program(901)
    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert insns[-2] == (0x06, 0, 0, seccomp_learn.SECCOMP_RET_ALLOW)
    assert insns[-1] == (0x06, 0, 0, seccomp_learn.SECCOMP_RET_USER_NOTIF)
    assert (0x15, 0, 3, 901) in insns
    # Every jump that fails lands on USER_NOTIF.
    for index, (code, jt, jf, _) in enumerate(insns):
        if code == 0x15:
            assert jt == 0 and index + 1 + jf == len(insns) - 1


def test_the_recorders_result_line_round_trips():
    result = seccomp_learn.Result(True, "p.json: 3 syscalls allowed", ("capset", "write"), 17)
    back = seccomp_learn.Result.decode(result.encode())
    assert (back.ok, back.message, back.runtime, back.notifications) == (True, result.message, result.runtime, 17)
    for garbage in (b"", b"ok", b"ok x\nmsg", b"what 1\nmsg\n"):
        assert not seccomp_learn.Result.decode(garbage).ok


@pytest.mark.parametrize("module", ["seccomp", "pyseccomp"])
def test_recorded_numbers_become_names_per_architecture(monkeypatch, module):
    binding = pytest.importorskip(module)
    monkeypatch.setattr("ocirt.linux.seccomp.binding", lambda: binding)
    x86_64, x86 = 0xC000003E, 0x40000003
    recorded = {x86_64 << 32 | 1, x86_64 << 32 | (0x40000000 | 519), x86 << 32 | 4, x86_64 << 32 | 99999,
                0x12345678 << 32 | 1}
    names, arches, unknown = seccomp_learn.names_of(recorded)
    assert names == {"write", "recvmsg"}
    assert arches == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert unknown == ["1 (audit arch 0x12345678)", "99999 (SCMP_ARCH_X86_64)"]


def test_a_fifo_or_a_late_link_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(OcirtError, match="not a regular file"):
        sp.read(str(fifo))
    with pytest.raises(OcirtError, match="not a regular file"):
        sp.check_learning_target(str(fifo))
    (tmp_path / "elsewhere.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    (tmp_path / "link.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(OcirtError, match="too many levels of symbolic links"):
        sp.write_merged(str(tmp_path / "link.json"), {"read"}, [], None)
    assert json.loads((tmp_path / "elsewhere.json").read_text()) == {"defaultAction": "SCMP_ACT_ALLOW"}


def test_a_profile_given_through_a_link_is_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "real" / "p.json")
    assert seccomp_learn.LearnOptions(str(tmp_path / "link.json")).profile == str(tmp_path / "real" / "p.json")
