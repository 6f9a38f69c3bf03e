"""The command table and what is made from it: the parser, --help/-h, `ocirt help`, usage errors.

No root and no container: each test runs the launcher (or the parser) as whoever runs the suite.
runc, where installed, is the oracle for the words and exit codes of a wrong command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ocirt import cli
from ocirt.cli import BY_NAME, COMMANDS, GLOBAL_FLAGS, LIST, SWITCH, UsageError, parse

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = str(REPO / "bin" / "ocirt")
RUNC = shutil.which("runc") or "/usr/sbin/runc"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
NAMES = [c.name for c in COMMANDS]


def ocirt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=ENV)


# ---- the table ---------------------------------------------------------------------------------------------

def test_every_command_has_a_handler_and_every_flag_its_words():
    for command in COMMANDS:
        assert command.summary and command.summary == command.summary.strip(), command.name
        if command.name != "help":
            module = __import__(f"ocirt.cli.{command.module}", fromlist=("_",))
            assert callable(getattr(module, f"cmd_{command.name}")), command.name
        names = [name for flag in command.flags for name in flag[0]]
        assert len(names) == len(set(names)), f"{command.name}: a flag name twice"
        for names_, dest, takes, words in command.flags + GLOBAL_FLAGS:
            assert all(n.startswith("-") for n in names_) and dest.isidentifier()
            assert takes in (SWITCH, cli.VALUE, LIST) and words, (command.name, names_)
        assert command.max_args is None or command.max_args >= command.min_args


def test_the_flags_are_runcs():
    """Every flag runc's `COMMAND --help` lists is in ocirt's table for that command (runc's words differ)."""
    if not os.access(RUNC, os.X_OK):
        pytest.skip("runc is not installed")
    for command in COMMANDS:
        shown = subprocess.run([RUNC, command.name, "--help"], capture_output=True, text=True, timeout=30)
        if shown.returncode != 0 or f"runc {command.name} -" not in shown.stdout:
            continue  # validate, cgroup: ocirt's own commands
        runc_flags = {word.rstrip(",") for line in shown.stdout.split("OPTIONS:")[-1].splitlines()
                      for word in line.split() if word.startswith("-") and len(word) > 1
                      and line.lstrip().startswith("-")}
        ours = {name for flag in command.flags for name in flag[0]}
        # runc-only: --no-subreaper (run), runc's own checkpoint flags.
        assert runc_flags - ours <= {"--no-subreaper"}, (command.name, runc_flags - ours)


# ---- the parser --------------------------------------------------------------------------------------------

def test_parse_switches_values_lists_and_the_double_dash():
    lookup = BY_NAME["exec"].lookup()
    into: dict = {}
    rest = parse(["-t", "--detach=false", "-e", "A=1", "--env=B=2", "--user", "5:6", "--", "-x"], lookup, into)
    assert into == {"tty": True, "detach": False, "env": ["A=1", "B=2"], "user": "5:6"}
    assert rest == ["-x"]


def test_parse_stops_at_the_first_argument_when_not_interspersed():
    into: dict = {}
    rest = parse(["--tty", "box", "ls", "-l", "--tty"], BY_NAME["exec"].lookup(), into, interspersed=False)
    assert into == {"tty": True} and rest == ["box", "ls", "-l", "--tty"]
    into = {}
    assert parse(["a", "--force", "b"], BY_NAME["delete"].lookup(), into) == ["a", "b"]
    assert into == {"force": True}


@pytest.mark.parametrize(("argv", "message"), [
    (["--bogus"], "flag provided but not defined: --bogus"),
    (["--pid-file"], "flag needs an argument: --pid-file"),
])
def test_parse_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        parse(argv, BY_NAME["create"].lookup(), {})


def test_global_flags_count_after_the_command_too():
    into: dict = {}
    parse(["--root", "/r", "--log-format", "json", "x"], BY_NAME["state"].lookup(), into)
    assert into == {"root": "/r", "log_format": "json"}
    # A command's own flag of the same name wins: spec's --rootless is a switch, the global one a value.
    into = {}
    assert parse(["--rootless"], BY_NAME["spec"].lookup(), into) == [] and into == {"rootless_spec": True}


# ---- --help, -h, ocirt help --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_command_answers_help_and_writes_nothing(name, tmp_path):
    command = BY_NAME[name]
    outputs = []
    for args in ([name, "--help"], [name, "-h"], ["help", name]):
        result = ocirt(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr == "", args
        outputs.append(result.stdout)
    assert len(set(outputs)) == 1, "--help, -h and `help NAME` differ"
    text = outputs[0]
    assert text.startswith(f"NAME:\n   ocirt {name} - {command.summary}\n\nUSAGE:\n   ocirt {name}")
    for flag in command.flags:
        assert f"   {cli_label(flag)}  " in text, flag[0]
    assert list(tmp_path.iterdir()) == [], "help wrote a file"


def cli_label(flag) -> str:
    return ", ".join(n + ("" if flag[2] == SWITCH else " value") for n in flag[0])


def test_spec_help_writes_no_config(tmp_path):
    """`ocirt spec --help` once wrote config.json into the current directory."""
    for args in (["spec", "--help"], ["spec", "-h"], ["spec", "--rootless", "--help"], ["spec", "--help=true"]):
        result = ocirt(*args, cwd=tmp_path)
        assert result.returncode == 0 and "OPTIONS:" in result.stdout, args
    assert not (tmp_path / "config.json").exists()


def test_global_help_lists_every_command_and_global_flag():
    for args in (["--help"], ["-h"], ["help"], ["h"]):
        result = ocirt(*args)
        assert result.returncode == 0 and result.stderr == ""
        assert "USAGE:\n   ocirt [global options] command" in result.stdout
        for command in COMMANDS:
            assert f"\n   {command.name}" in result.stdout and command.summary in result.stdout
        for flag in GLOBAL_FLAGS:
            assert cli_label(flag) in result.stdout
    assert ocirt().returncode == 0  # no command at all: runc 1.1.5 prints its help and exits 0 too


def test_help_of_an_unknown_topic_and_an_unknown_command():
    topic = ocirt("help", "frobnicate")
    assert topic.returncode == 3 and topic.stdout == ""  # runc's exit code for both
    assert topic.stderr == "ocirt: no help topic for 'frobnicate': run `ocirt help` for the commands\n"
    unknown = ocirt("frobnicate")
    assert unknown.returncode == 3 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and "frobnicate" in unknown.stderr


# ---- wrong command lines -----------------------------------------------------------------------------------

def _wrong_counts() -> list[tuple[str, list[str]]]:
    cases = []
    for command in COMMANDS:
        if command.min_args > 0:
            cases.append((command.name, ["x"] * (command.min_args - 1)))
        if command.max_args is not None:
            cases.append((command.name, ["x"] * (command.max_args + 1)))
    return cases


@pytest.mark.parametrize(("name", "args"), _wrong_counts(), ids=lambda v: v if isinstance(v, str) else str(len(v)))
def test_a_wrong_argument_count_gets_runcs_usage_error(name, args, tmp_path):
    result = ocirt(name, *args, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'ocirt: "{name}" requires '), result.stderr
    assert result.stdout == "Incorrect Usage.\n\n" + ocirt(name, "--help").stdout
    assert list(tmp_path.iterdir()) == []
    if os.access(RUNC, os.X_OK) and subprocess.run([RUNC, name, "--help"], capture_output=True,
                                                   timeout=30).returncode == 0 and name != "help":
        theirs = subprocess.run([RUNC, "--root", str(tmp_path / "runc"), name, *args], capture_output=True,
                                text=True, timeout=30)
        assert theirs.returncode == result.returncode
        # runc logs `runc: "state" requires exactly 1 argument(s)` through logrus.
        assert lines[0].removeprefix("ocirt: ") in theirs.stderr.replace('\\"', '"'), theirs.stderr


def test_an_unknown_flag_prints_the_commands_usage():
    result = ocirt("kill", "--signal", "x")
    assert result.returncode == 1
    assert result.stderr == "ocirt: flag provided but not defined: --signal\n"
    assert result.stdout.startswith("Incorrect Usage: flag provided but not defined: --signal\n\nNAME:\n   ocirt kill")


def test_a_usage_error_goes_to_the_log_too(tmp_path):
    log = tmp_path / "log.json"
    result = ocirt("--log", str(log), "--log-format", "json", "delete")
    assert result.returncode == 1
    assert '"msg":"\\"delete\\" requires exactly 1 argument(s)"' in log.read_text()
