"""The man pages and the bash completion: made from the command table, in step with it, installed by pip.

As any user, no root: the completion runs in a real bash with COMP_WORDS set as readline would set it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from ocirt.cli import COMMANDS, GLOBAL_FLAGS
from ocirt.cli.manual import COMPLETION, MAN_DIR, generated

REPO = Path(__file__).resolve().parents[2]
SHARE = REPO / "share"
SCRIPT = SHARE / COMPLETION


def test_the_checked_in_files_are_what_the_table_makes():
    made = generated()
    on_disk = {str(p.relative_to(SHARE)) for p in SHARE.rglob("*") if p.is_file()}
    assert on_disk == set(made), "run `python -m ocirt.cli.manual` and commit share/"
    for relative, content in made.items():
        assert (SHARE / relative).read_text() == content, f"{relative} is stale: run `python -m ocirt.cli.manual`"


def test_one_page_per_command_and_each_names_its_flags():
    made = generated()
    for command in COMMANDS:
        if command.name == "help":
            continue
        page = made[os.path.join(MAN_DIR, f"ocirt-{command.name}.8")]
        assert page.startswith(f'.TH OCIRT-{command.name.upper()} 8 ')
        for flag in command.flags:
            for name in flag[0]:
                assert f"\\fB{name.replace('-', chr(92) + '-')}\\fR" in page, (command.name, name)
    main = made[os.path.join(MAN_DIR, "ocirt.8")]
    for flag in GLOBAL_FLAGS:
        assert f"\\fB{flag[0][0].replace('-', chr(92) + '-')}\\fR" in main


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed")
def test_the_pages_render_without_warnings():
    for page in sorted((SHARE / MAN_DIR).glob("*.8")):
        done = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(page)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0 and done.stderr == "", (page.name, done.stderr)
    text = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", str(SHARE / MAN_DIR / "ocirt-kill.8")],
                          capture_output=True, text=True, timeout=30).stdout
    assert "--all, -a" in text and "ocirt [global options]" in text


def test_pip_installs_the_pages_and_the_completion(tmp_path):
    """pyproject's data-files put share/ into the wheel, so `pip install` puts them under the prefix."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["data-files"]) == {"share/man/man8", "share/bash-completion/completions"}
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv to build a wheel with")
    # A copy of what the wheel is built from: the build writes its egg-info beside the sources, and the
    # checkout may not be ours to write (the suite runs as any user).
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("ocirt", "schemas", "share"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "--disable-pip-version-check", "-w", str(tmp_path),
                            str(source)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={**os.environ, "HOME": str(tmp_path)})
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("ocirt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    assert data == {os.path.join("share", relative) for relative in generated()}
    assert {"ocirt/cli/__init__.py", "ocirt/cli/manual.py"} <= names


# ---- bash completion ---------------------------------------------------------------------------------------

def complete(*words: str, launcher: str = "ocirt") -> list[str]:
    """What bash offers after ``words`` (the last one is the word being completed)."""
    program = (f"source {SCRIPT}\nCOMP_WORDS=({' '.join(_bash_quote(w) for w in (launcher, *words))})\n"
               f"COMP_CWORD={len(words)}\n_ocirt\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


def _bash_quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def test_completion_offers_commands_flags_and_values():
    assert complete("") == [c.name for c in COMMANDS] + ["h"]
    assert complete("st") == ["start", "state"]
    assert complete("--log-format", "") == ["text", "json"]
    assert complete("--root", "/tmp", "--rootless", "") == ["auto", "true", "false"]
    assert set(complete("run", "--")) == {n for f in BY("run").flags for n in f[0] if n.startswith("--")} | {"--help"}
    assert complete("list", "-f", "") == ["table", "json"]
    assert complete("delete", "-f", "") == []  # delete's -f is --force, a switch: then comes the id
    assert complete("spec", "--rootless", "") == []  # spec's --rootless is a switch, not the global value
    assert complete("kill", "box", "KI") == ["KILL"]
    assert complete("help", "up") == ["update"]
    assert complete("cgroup", "") == ["delegate", "undelegate"]


def test_completion_offers_the_container_ids_under_root(tmp_path):
    """The ids come from `ocirt [--root R] list --quiet`, run as the command line names it."""
    calls = tmp_path / "calls"
    stub = tmp_path / "ocirt"
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nprintf 'alpha\\nbeta\\n'\n")
    stub.chmod(0o755)
    assert complete("--root", "/r", "state", "", launcher=str(stub)) == ["alpha", "beta"]
    assert calls.read_text() == "--root /r list --quiet\n"
    assert complete("exec", "-t", "a", launcher=str(stub)) == ["alpha"]
    assert complete("kill", "alpha", "", launcher=str(stub)) != ["alpha", "beta"]  # the signal comes second
    assert complete("list", "", launcher=str(stub)) == []


def BY(name: str):
    return next(c for c in COMMANDS if c.name == name)


def test_generating_writes_the_files(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ocirt.cli.manual", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / COMPLETION).read_text() == SCRIPT.read_text()
