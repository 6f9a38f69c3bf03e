"""The hot commands stay cheap to start: create, start, state, kill and delete never import jsonschema,
attrs or pyroute2 (tens of milliseconds each, against runc's 4-5 ms for a whole `state`).

Each command runs under `python -X importtime` through the real launcher on a real container, so the import
graph checked is the one an engine gets. The ocirt modules' own import time is recorded (``record_property``
and the ``-s`` output) but never asserted: it depends on the machine's load.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest

# Top-level packages the hot path must never load (fastjsonschema and referencing only ever arrive with
# jsonschema or the build-time schema compiler). The standard library's second row costs 1-8 ms each here,
# cumulative (typing alone pulled in re, enum, functools and contextlib: 8 ms of every `run`).
FORBIDDEN = ("jsonschema", "attr", "attrs", "pyroute2", "fastjsonschema", "referencing",
             "typing", "re", "enum", "shutil", "subprocess", "threading", "json", "logging", "socket")
INTERPRETER = "/usr/bin/python3"  # the launcher's own shebang interpreter


@dataclass(frozen=True)
class ImportRecord:
    module: str
    self_us: int
    cumulative_us: int


def parse_importtime(stderr: str) -> list[ImportRecord]:
    """The ``import time:`` lines of ``-X importtime`` output, in import order."""
    records = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|", 2)
        records.append(ImportRecord(name.strip(), int(self_us), int(cumulative_us)))
    return records


def forbidden_imports(records: list[ImportRecord]) -> list[str]:
    return sorted({r.module for r in records if r.module.split(".")[0] in FORBIDDEN})


def ocirt_self_ms(records: list[ImportRecord]) -> float:
    return sum(r.self_us for r in records if r.module == "ocirt" or r.module.startswith("ocirt.")) / 1000


def importtime_launcher(directory: Path, runtime: str) -> str:
    """A wrapper that runs the launcher under ``-X importtime`` (the launcher's ``-I`` ignores
    PYTHONPROFILEIMPORTTIME, so the flag must be on the interpreter's command line)."""
    wrapper = directory / "ocirt-importtime"
    wrapper.write_text(f'#!/bin/sh\nexec {INTERPRETER} -IS -X importtime {runtime} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP
                  | stat.S_IROTH)
    return str(wrapper)


def wait_stopped(bundle: helpers.Bundle, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bundle.state()["status"] == "stopped":
            return
        time.sleep(0.01)
    pytest.fail(f"container {bundle.id} still not stopped {timeout} s after kill KILL")


def check_command(name: str, result, record_property) -> list[ImportRecord]:
    records = parse_importtime(result.stderr)
    assert records, f"{name}: no -X importtime output; stderr was:\n{result.stderr[-2000:]}"
    assert forbidden_imports(records) == [], f"`{name}` imported {forbidden_imports(records)}"
    own = ocirt_self_ms(records)
    record_property(f"{name}_ocirt_import_ms", round(own, 2))
    record_property(f"{name}_modules", len(records))
    print(f"\n{name}: {len(records)} modules, ocirt's own {own:.1f} ms self time")
    return records


@pytest.mark.skipif(not os.access(INTERPRETER, os.X_OK), reason=f"{INTERPRETER} is missing")
@pytest.mark.parametrize("rootless", [False, pytest.param(True, marks=pytest.mark.rootless)],
                         ids=["rootful", "rootless"])
def test_hot_commands_skip_heavy_imports(make_bundle, harness, record_property, rootless):
    if os.geteuid() != 0:
        pytest.skip("builds real containers as root (and, rootless, as a test user)")
    bundle = make_bundle(args=["sleep", "600"], rootless=rootless)
    wrapper = importtime_launcher(harness.dir, bundle.runtime_path or helpers.runtime_path())
    label = "rootless" if rootless else "rootful"

    created = bundle.create(runtime=wrapper)
    assert created.returncode == 0, created.stderr[-2000:]
    create_records = check_command(f"{label} create", created, record_property)
    modules = {r.module for r in create_records}
    assert "ocirt.spec._fastvalidate" in modules, "create no longer validates with the generated validator"

    state = bundle.runtime(["state", bundle.id], runtime=wrapper)
    assert state.returncode == 0, state.stderr[-2000:]
    assert json.loads(state.stdout)["status"] == "created"
    check_command(f"{label} state", state, record_property)

    for name, args in (("start", ["start", bundle.id]), ("kill", ["kill", bundle.id, "KILL"])):
        result = bundle.runtime(args, runtime=wrapper)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        check_command(f"{label} {name}", result, record_property)
    wait_stopped(bundle)

    deleted = bundle.runtime(["delete", bundle.id], runtime=wrapper)
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    check_command(f"{label} delete", deleted, record_property)
    assert not (bundle.root / bundle.id).exists()


@pytest.mark.skipif(not os.access(INTERPRETER, os.X_OK), reason=f"{INTERPRETER} is missing")
def test_state_of_missing_container_skips_heavy_imports(runtime_root, harness, record_property):
    wrapper = importtime_launcher(harness.dir, helpers.runtime_path())
    result = helpers.run_runtime(["state", "ocirt-test-nosuch"], root=runtime_root, runtime=wrapper)
    assert result.returncode != 0
    assert "does not exist" in result.stderr
    check_command("state (missing container)", result, record_property)


def test_detector_sees_a_forbidden_import(tmp_path):
    """The check above would pass vacuously if parsing missed modules: show it catches a real one."""
    venv_python = helpers.REPO / ".venv" / "bin" / "python"
    if not venv_python.exists():
        pytest.skip("no .venv with attrs installed")
    import subprocess

    done = subprocess.run([str(venv_python), "-X", "importtime", "-c", "import attr"], capture_output=True,
                          text=True, cwd=tmp_path, check=True)
    records = parse_importtime(done.stderr)
    assert "attr" in forbidden_imports(records)
    assert all(r.cumulative_us >= r.self_us for r in records)


def test_import_ocirt_leaves_the_api_for_first_use():
    """`import ocirt` (what every command's launcher does first) loads no part of ocirt.api and nothing
    heavy; the first use of a name of the API loads it."""
    import subprocess

    def python(code: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([INTERPRETER, "-IS", "-X", "importtime", "-c",
                               f"import sys; sys.path.insert(0, {str(helpers.REPO)!r}); {code}"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done

    bare = python("import ocirt")
    assert forbidden_imports(parse_importtime(bare.stderr)) == []
    assert not [r for r in parse_importtime(bare.stderr) if r.module.startswith("ocirt.")]
    used = python("import ocirt; ocirt.Sandbox; print('ocirt.api' in sys.modules)")
    assert used.stdout.split() == ["True"]
