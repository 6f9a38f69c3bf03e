"""A foreground `run` never outlives its caller unnoticed, and its container never outlives `run`.

Slurm (tests/slurm, docs/slurm.md) is the caller that needs it: scancel kills the `/bin/sh -c` that started
`run`, or SIGKILLs `run` itself, and with the container left behind the step's output stays open. Each
case runs rootful and rootless. On 10b516e every one of them left the container running."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import helpers
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts containers as root and as a test user")

CALLER_GONE_SIGNAL = 64


@pytest.fixture(params=["rootful", "rootless"])
def bundle(request, make_bundle):
    return make_bundle(args=["sleep", "100"], rootless=request.param == "rootless")


def run_command(bundle) -> list[str]:
    bundle.write()
    return [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), "run", "--bundle",
            str(bundle.path), bundle.id]


def identity(bundle) -> dict:
    if bundle.user is None:
        return {"env": helpers.base_env()}
    user = bundle.user
    return {"env": helpers.base_env(user), "user": user.uid, "group": user.gid, "extra_groups": [],
            "cwd": user.home}


def running_pid(bundle) -> int:
    def pid() -> int:
        if not (bundle.root / bundle.id).exists():
            return 0
        result = bundle.runtime(["state", bundle.id])
        return result.returncode == 0 and '"running"' in result.stdout and int(
            result.stdout.split('"pid":')[1].split(",")[0])
    found = helpers.wait_for(pid, timeout=20, interval=0.05)
    assert found, "the container never ran"
    return found


def test_run_ends_the_container_when_its_caller_dies(bundle, test_dir):
    go, pid_file = test_dir / f"go-{bundle.id}", test_dir / f"run-{bundle.id}.pid"
    script = (f'"$@" </dev/null >/dev/null 2>&1 & echo $! > {pid_file}; '
              f'while [ ! -e {go} ]; do sleep 0.05; done')
    # Sticky, as /tmp: the caller (maybe a test user) writes its pid file here, and a root runtime still
    # trusts the state directory below it.
    os.chmod(test_dir, 0o1777)
    caller = subprocess.Popen(["sh", "-c", script, "caller", *run_command(bundle)], **identity(bundle))
    init = running_pid(bundle)
    run = int(pid_file.read_text())
    go.touch()
    caller.wait(timeout=10)
    assert helpers.wait_for(lambda: not helpers.pid_alive(init), timeout=10), "the container outlived run's caller"
    assert helpers.wait_for(lambda: not helpers.pid_alive(run), timeout=10), "run outlived its caller"
    assert not (bundle.root / bundle.id).exists(), "run did not delete the container after its caller died"


def test_a_sigkilled_run_takes_its_container_with_it(bundle):
    run = subprocess.Popen(run_command(bundle), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, **identity(bundle))
    init = running_pid(bundle)
    run.kill()
    run.wait(timeout=10)
    assert helpers.wait_for(lambda: not helpers.pid_alive(init), timeout=10), "the container outlived run"
    assert bundle.state()["status"] == "stopped"
    assert bundle.delete().returncode == 0


def test_a_stray_caller_gone_signal_while_the_caller_lives_changes_nothing(bundle):
    run = subprocess.Popen(run_command(bundle), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, **identity(bundle))
    try:
        init = running_pid(bundle)
        os.kill(run.pid, CALLER_GONE_SIGNAL)
        time.sleep(0.5)
        assert run.poll() is None and helpers.pid_alive(init)
        assert bundle.state()["status"] == "running"
        assert bundle.kill("KILL").returncode == 0
        assert run.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert not (bundle.root / bundle.id).exists()
