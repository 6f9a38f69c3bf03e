"""The README's layout section is the checkout's real layout: every path it names exists, and every
top-level entry of the repository, every module and package of ocirt/ and every module of ocirt/cli/
is named there."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def layout_paths() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")]


def tracked_top_level() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout: what is there, less the build's leftovers
        return {p.name for p in REPO.iterdir() if not p.name.startswith(".") or p.name == ".ci"} - {
            "build", "ocirt.egg-info", "__pycache__"}
    return {line.split("/")[0] for line in listed.stdout.splitlines()}


def test_every_path_the_layout_names_exists():
    missing = [p for p in layout_paths() if not (REPO / p.rstrip("/")).exists()]
    assert missing == []


def test_the_layout_names_every_top_level_entry_and_module():
    named = {p.rstrip("/") for p in layout_paths()}
    top = {name for name in tracked_top_level() if name not in (".gitignore", "README.md", "tox.ini")}
    assert {t for t in top if not any(n == t or n.startswith(t + "/") for n in named)} == set()
    modules = {f"ocirt/{p.name}" for p in (REPO / "ocirt").iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    modules |= {f"ocirt/cli/{p.name}" for p in (REPO / "ocirt" / "cli").glob("*.py") if p.name != "__init__.py"}
    assert modules - named == set()
