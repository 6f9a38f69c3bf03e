"""bin/ocirt ends with os._exit (no interpreter teardown, docs/performance.md): what a command wrote to a
pipe or file must still arrive whole, exit codes must be kept, and a write that fails at the final flush
must not pass for success."""

from __future__ import annotations

import subprocess
from pathlib import Path

LAUNCHER = str(Path(__file__).resolve().parents[2] / "bin" / "ocirt")


def test_buffered_output_reaches_a_pipe_whole():
    interpreter = subprocess.run([LAUNCHER, "--help"], capture_output=True, text=True, timeout=30)
    assert interpreter.returncode == 0
    # Long enough to sit in stdout's buffer rather than reach the pipe line by line.
    assert len(interpreter.stdout) > 1000 and interpreter.stdout.endswith("\n")
    spec = subprocess.run([LAUNCHER, "spec", "--help"], capture_output=True, text=True, timeout=30)
    assert spec.returncode == 0 and spec.stdout.strip()


def test_an_error_keeps_its_exit_code_and_message():
    result = subprocess.run([LAUNCHER, "state", "ocirt-no-such-container"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("does not exist")


def test_a_failing_final_flush_is_an_error():
    with open("/dev/full", "w") as full:
        result = subprocess.run([LAUNCHER, "--help"], stdout=full, stderr=subprocess.PIPE, timeout=30)
    assert result.returncode == 120
