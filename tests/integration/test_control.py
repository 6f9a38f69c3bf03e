"""update, pause/resume, ps, events, kill --all and `cgroup delegate`, on real containers through the CLI.

The containers run a small busybox loop that waits for the test: the test writes a sequence number into
the container's /dev/shm/go (a tmpfs, reached through /proc/<pid>/root), the loop runs its action once
and appends "done <n> <exit status>" to /dev/shm/log. So each test can show the same action behaving
differently before and after a command.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import helpers
import pytest


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """The suite's wait_for with a longer default: cgroup effects here can take a few seconds."""
    return helpers.wait_for(predicate, timeout, interval)


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates containers with cgroups and test users")

MiB = 1 << 20
UNLIMITED = 9223372036854771712  # what cgroup v1 shows for an unlimited memory limit

# Waits for a new number in /dev/shm/go, runs ACTION once, logs its exit status; counts in /dev/shm/count.
LOOP = (
    ": > /dev/shm/go; last=0; n=0; "
    "while true; do "
    "n=$((n+1)); echo $n > /dev/shm/count; go=; "
    "read -r go < /dev/shm/go; "
    'if [ -n "$go" ] && [ "$go" != "$last" ]; then last=$go; ACTION; echo "done $go $?" >> /dev/shm/log; fi; '
    "sleep 0.02; "
    "done"
)
HOG = "dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null"
# Six concurrent children in a subshell: a refused fork ends the subshell, never the container's init.
FORKS = "( i=0; while [ $i -lt 6 ]; do sleep 1 & i=$((i+1)); done; wait ) 2>/dev/shm/err$go"


def loop_args(action: str = "true") -> list[str]:
    return ["sh", "-c", LOOP.replace("ACTION", action)]


class Loop:
    """The running container of a LOOP bundle, seen from the host."""

    def __init__(self, bundle: helpers.Bundle):
        self.bundle = bundle
        self.pid = bundle.state()["pid"]
        self.shm = Path(f"/proc/{self.pid}/root/dev/shm")
        self.runs = 0

    def read(self, name: str) -> str:
        try:
            return (self.shm / name).read_text()
        except (FileNotFoundError, ProcessLookupError):
            return ""

    def count(self) -> int:
        text = self.read("count").strip()
        return int(text) if text else 0

    def trigger(self, timeout: float = 15.0) -> int:
        """Run the action once and return its exit status."""
        self.runs += 1
        (self.shm / "go").write_text(f"{self.runs}\n")
        line = wait_for(lambda: next((entry for entry in self.read("log").splitlines()
                                      if entry.startswith(f"done {self.runs} ")), None), timeout)
        assert line, f"the container never ran its action #{self.runs}; log: {self.read('log')!r}"
        return int(line.split()[2])


def start_loop(make_bundle, action: str = "true", *, resources: dict | None = None, user=None,
               explicit_path: bool = True) -> Loop:
    bundle = make_bundle(args=loop_args(action), rootless=user is not None, user=user)
    if user is not None and explicit_path:
        # A relative path of its own (the id) below the delegated ocirt/<user>; delete removes it whole.
        bundle.config["linux"]["cgroupsPath"] = bundle.id
    if user is not None:
        bundle.config["linux"].setdefault("resources", {}).pop("devices", None)
    if resources:
        bundle.config["linux"].setdefault("resources", {}).update(resources)
    result = bundle.run("--detach")
    assert result.returncode == 0, result.stderr
    loop = Loop(bundle)
    assert wait_for(lambda: loop.count() > 0), "the container's loop never started"
    return loop


def cgroup_dir(bundle: helpers.Bundle, controller: str) -> Path:
    """The container's directory of one v1 controller (found by name: the id is in its path)."""
    mount = helpers.CGROUP_ROOT / controller
    found = [path for path in helpers.find_cgroup_dirs([bundle.id]) if mount in path.parents]
    assert len(found) == 1, f"expected one {controller} cgroup for {bundle.id}, found {found}"
    return found[0]


def read_cgroup(bundle: helpers.Bundle, controller: str, name: str) -> str:
    return (cgroup_dir(bundle, controller) / name).read_text().strip()


def delete_and_check(bundle: helpers.Bundle) -> None:
    result = bundle.delete(force=True)
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: not bundle.cgroup_dirs(), 5), f"cgroups left: {bundle.cgroup_dirs()}"
    assert not (bundle.root / bundle.id).exists()


def ocirt(bundle: helpers.Bundle, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return bundle.runtime([*args], **kwargs)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, f"no error message (exit {result.returncode}, stdout {result.stdout!r})"
    return lines[-1]


# ---- update --------------------------------------------------------------------------------------------

def test_lowering_the_memory_limit_gets_a_hog_oom_killed(make_bundle):
    loop = start_loop(make_bundle, HOG)
    assert loop.trigger() == 0, "48 MiB fit before the update"
    result = ocirt(loop.bundle, "update", "--memory", "16m", loop.bundle.id)
    assert result.returncode == 0, result.stderr
    assert int(read_cgroup(loop.bundle, "memory", "memory.limit_in_bytes")) == 16 * MiB
    assert loop.trigger() == 137, "dd should have been SIGKILLed by the OOM killer"
    assert int(read_cgroup(loop.bundle, "memory", "memory.failcnt")) > 0
    assert loop.bundle.state()["status"] == "running", "the small init survives; only the hog dies"
    delete_and_check(loop.bundle)


def test_lowering_the_pids_limit_blocks_forks(make_bundle):
    loop = start_loop(make_bundle, FORKS, resources={"pids": {"limit": 100}})
    assert loop.trigger() == 0
    assert loop.read("err1") == ""
    result = ocirt(loop.bundle, "update", "--pids-limit", "4", loop.bundle.id)
    assert result.returncode == 0, result.stderr
    assert read_cgroup(loop.bundle, "pids", "pids.max") == "4"
    assert loop.trigger() != 0
    assert "fork" in loop.read("err2"), loop.read("err2")
    assert int(read_cgroup(loop.bundle, "pids", "pids.events").split()[1]) > 0
    # -1 lifts the limit again, and the same forks succeed.
    result = ocirt(loop.bundle, "update", "--pids-limit", "-1", loop.bundle.id)
    assert result.returncode == 0, result.stderr
    assert read_cgroup(loop.bundle, "pids", "pids.max") == "max"
    assert loop.trigger() == 0
    delete_and_check(loop.bundle)


@pytest.mark.parametrize(("value", "expected"), [
    ("33554432", 32 * MiB), ("32m", 32 * MiB), ("32M", 32 * MiB), ("32MiB", 32 * MiB), ("32mb", 32 * MiB),
    ("1g", 1024 * MiB), ("65536k", 64 * MiB), ("1.5g", 1536 * MiB), ("32 m", 32 * MiB), ("67108864b", 64 * MiB), ("100000kb", 102400000),
])
def test_memory_values_take_runc_and_docker_forms(make_bundle, value, expected):
    loop = start_loop(make_bundle, resources={"memory": {"limit": 256 * MiB}})
    result = ocirt(loop.bundle, "update", "--memory", value, loop.bundle.id)
    assert result.returncode == 0, result.stderr
    # The kernel rounds a limit down to whole pages.
    assert int(read_cgroup(loop.bundle, "memory", "memory.limit_in_bytes")) == expected
    delete_and_check(loop.bundle)


def test_memory_minus_one_lifts_memory_and_swap_limits(make_bundle):
    """runc reads `--memory -1` as "memory and memory+swap unlimited": memsw may not stay below it."""
    loop = start_loop(make_bundle, resources={"memory": {"limit": 64 * MiB, "swap": 64 * MiB}})
    assert int(read_cgroup(loop.bundle, "memory", "memory.memsw.limit_in_bytes")) == 64 * MiB
    result = ocirt(loop.bundle, "update", "--memory", "-1", loop.bundle.id)
    assert result.returncode == 0, result.stderr
    assert int(read_cgroup(loop.bundle, "memory", "memory.limit_in_bytes")) == UNLIMITED
    assert int(read_cgroup(loop.bundle, "memory", "memory.memsw.limit_in_bytes")) == UNLIMITED
    delete_and_check(loop.bundle)


def test_flags_reach_their_files(make_bundle):
    loop = start_loop(make_bundle, resources={"memory": {"limit": 256 * MiB}})
    bundle = loop.bundle
    result = ocirt(bundle, "update", "--cpu-share", "512", "--cpu-period", "50000", "--cpu-quota", "25000",
                   "--cpuset-cpus", "0", "--memory-reservation", "8m", "--memory", "128m",
                   "--memory-swap", "200m", "--kernel-memory", "4m", bundle.id)
    assert result.returncode == 0, result.stderr
    assert "ignored" in result.stderr.lower(), "kernel memory limits are accepted but ignored, with a warning"
    assert read_cgroup(bundle, "cpu", "cpu.shares") == "512"
    assert read_cgroup(bundle, "cpu", "cpu.cfs_period_us") == "50000"
    assert read_cgroup(bundle, "cpu", "cpu.cfs_quota_us") == "25000"
    assert read_cgroup(bundle, "cpuset", "cpuset.cpus") == "0"
    assert int(read_cgroup(bundle, "memory", "memory.soft_limit_in_bytes")) == 8 * MiB
    assert int(read_cgroup(bundle, "memory", "memory.limit_in_bytes")) == 128 * MiB
    assert int(read_cgroup(bundle, "memory", "memory.memsw.limit_in_bytes")) == 200 * MiB
    # --cpu-shares (docker's spelling) is the same flag; only the quota changes when only it is given.
    shares_flag = "--cpu-shares" if helpers.runtime_name() == "ocirt" else "--cpu-share"
    result = ocirt(bundle, "update", shares_flag, "256", "--cpu-quota", "-1", bundle.id)
    assert result.returncode == 0, result.stderr
    assert read_cgroup(bundle, "cpu", "cpu.shares") == "256"
    assert read_cgroup(bundle, "cpu", "cpu.cfs_quota_us") == "-1"
    assert read_cgroup(bundle, "cpu", "cpu.cfs_period_us") == "50000"
    blkio = cgroup_dir(bundle, "blkio")
    weight_file = next((blkio / name for name in ("blkio.weight", "blkio.bfq.weight") if (blkio / name).exists()),
                       None)
    if weight_file is not None:
        result = ocirt(bundle, "update", "--blkio-weight", "300", bundle.id)
        assert result.returncode == 0, result.stderr
        assert weight_file.read_text().split()[-1] == "300"
    delete_and_check(bundle)


def test_resources_from_stdin_treat_zero_as_unchanged(make_bundle):
    """docker sends every field, with 0 for "leave it"; only the non-zero ones may change."""
    loop = start_loop(make_bundle, resources={"pids": {"limit": 100}, "cpu": {"shares": 700}})
    bundle = loop.bundle
    docker_body = {
        "memory": {"limit": 64 * MiB, "reservation": 0, "swap": 0, "kernel": 0, "kernelTCP": 0},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0, "realtimePeriod": 0,
                "cpus": "", "mems": ""},
        "blockIO": {"weight": 0},
        "pids": {"limit": 0},
        "devices": None,
    }
    result = ocirt(bundle, "update", "--resources", "-", bundle.id, input=json.dumps(docker_body))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert int(read_cgroup(bundle, "memory", "memory.limit_in_bytes")) == 64 * MiB
    assert read_cgroup(bundle, "pids", "pids.max") == "100"
    assert read_cgroup(bundle, "cpu", "cpu.shares") == "700"
    assert read_cgroup(bundle, "cpu", "cpu.cfs_quota_us") == "-1"
    # The same from a file (podman's form), and the new values are recorded in the container's state.
    body = bundle.path / "resources.json"
    body.write_text(json.dumps({"pids": {"limit": 50}, "cpu": {"shares": 300}}))
    result = ocirt(bundle, "update", f"--resources={body}", bundle.id)
    assert result.returncode == 0, result.stderr
    assert read_cgroup(bundle, "pids", "pids.max") == "50"
    assert read_cgroup(bundle, "cpu", "cpu.shares") == "300"
    if helpers.runtime_name() == "ocirt":
        recorded = json.loads((bundle.root / bundle.id / "state.json").read_text())["ocirt"]["resources"]
        # create records the config's resources (the default device rules among them); updates merge in.
        assert {k: recorded[k] for k in ("memory", "pids", "cpu")} == \
            {"memory": {"limit": 64 * MiB}, "pids": {"limit": 50}, "cpu": {"shares": 300}}
        assert recorded["devices"] == bundle.config["linux"]["resources"]["devices"]
    delete_and_check(bundle)


def test_update_reaches_a_paused_and_a_created_container(make_bundle):
    loop = start_loop(make_bundle)
    assert ocirt(loop.bundle, "pause", loop.bundle.id).returncode == 0
    result = ocirt(loop.bundle, "update", "--pids-limit", "30", loop.bundle.id)
    assert result.returncode == 0, result.stderr
    assert read_cgroup(loop.bundle, "pids", "pids.max") == "30"
    assert loop.bundle.state()["status"] == "paused"
    delete_and_check(loop.bundle)

    created = make_bundle(args=["sleep", "60"])
    assert created.create().returncode == 0
    result = ocirt(created, "update", "--pids-limit", "31", created.id)
    assert result.returncode == 0, result.stderr
    assert read_cgroup(created, "pids", "pids.max") == "31"
    delete_and_check(created)


# ---- pause / resume ------------------------------------------------------------------------------------

def test_pause_freezes_the_processes_and_resume_continues_them(make_bundle):
    loop = start_loop(make_bundle)
    bundle = loop.bundle
    result = ocirt(bundle, "pause", bundle.id)
    assert result.returncode == 0, result.stderr
    assert bundle.state()["status"] == "paused"
    assert read_cgroup(bundle, "freezer", "freezer.state") == "FROZEN"
    frozen_at = loop.count()
    time.sleep(0.4)
    assert loop.count() == frozen_at, "the counter moved while the container was paused"
    result = ocirt(bundle, "resume", bundle.id)
    assert result.returncode == 0, result.stderr
    assert bundle.state()["status"] == "running"
    assert wait_for(lambda: loop.count() > frozen_at + 3), "the counter did not move after resume"
    delete_and_check(bundle)


def test_a_paused_container_can_be_deleted_by_force(make_bundle):
    loop = start_loop(make_bundle)
    assert ocirt(loop.bundle, "pause", loop.bundle.id).returncode == 0
    delete_and_check(loop.bundle)
    assert not os.path.exists(f"/proc/{loop.pid}/stat") or helpers.describe_pid(loop.pid) == f"[pid {loop.pid}]"


# ---- ps --------------------------------------------------------------------------------------------------

def test_ps_json_lists_the_container_pids_and_nothing_on_stderr(make_bundle):
    loop = start_loop(make_bundle, "sleep 30 & sleep 30 & true")
    bundle = loop.bundle
    loop.trigger()
    procs = cgroup_dir(bundle, "pids") / "cgroup.procs"
    result = ocirt(bundle, "ps", "--format", "json", bundle.id)
    assert result.returncode == 0
    assert result.stderr == ""
    pids = json.loads(result.stdout)
    assert isinstance(pids, list) and all(isinstance(pid, int) for pid in pids)
    assert loop.pid in pids
    sleepers = [pid for pid in pids if helpers.describe_pid(pid) == "sleep 30"]
    assert len(sleepers) == 2, pids
    # Every pid listed is in the container's cgroup (bar the loop's short-lived `sleep 0.02`).
    in_cgroup = {int(pid) for pid in procs.read_text().split()}
    assert {loop.pid, *sleepers} <= in_cgroup
    delete_and_check(bundle)


def test_ps_table_filters_ps_output_to_the_container(make_bundle):
    loop = start_loop(make_bundle)
    bundle = loop.bundle
    result = ocirt(bundle, "ps", bundle.id)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["UID", "PID", "PPID"]
    pids = {int(line.split()[1]) for line in lines[1:]}
    assert loop.pid in pids
    assert os.getpid() not in pids, "rows of host processes must be filtered out"
    forms = [[bundle.id, "-o", "pid,comm"]]
    if helpers.runtime_name() == "ocirt":
        forms.append([bundle.id, "--", "-o", "pid,comm"])  # ocirt also takes `--` before the ps options
    for form in forms:
        result = ocirt(bundle, "ps", *form)
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in result.stdout.splitlines()]
        assert rows[0] == ["PID", "COMMAND"]
        assert [str(loop.pid), "sh"] in rows
    result = ocirt(bundle, "ps", bundle.id, "-o", "comm")
    assert result.returncode == 1
    assert "PID" in error_line(result)
    delete_and_check(bundle)


# ---- events --------------------------------------------------------------------------------------------

def test_events_stats_prints_runcs_shape(make_bundle):
    loop = start_loop(make_bundle, resources={"memory": {"limit": 96 * MiB}, "pids": {"limit": 64}})
    bundle = loop.bundle
    result = ocirt(bundle, "events", "--stats", bundle.id)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, "--stats prints one event and exits"
    event = json.loads(lines[0])
    assert event["type"] == "stats" and event["id"] == bundle.id
    data = event["data"]
    assert {"cpu", "memory", "pids", "blkio", "hugetlb"} <= set(data)
    assert data["cpu"]["usage"]["total"] > 0
    assert "kernel" in data["cpu"]["usage"] and "user" in data["cpu"]["usage"]
    assert data["memory"]["usage"]["limit"] == 96 * MiB
    assert data["memory"]["usage"]["usage"] > 0
    assert data["memory"]["raw"]["rss"] >= 0
    assert 1 <= data["pids"]["current"] <= 64 and data["pids"]["limit"] == 64
    assert isinstance(data["hugetlb"], dict) and isinstance(data["blkio"], dict)
    # After an update the stats report the new limit.
    assert ocirt(bundle, "update", "--memory", "80m", bundle.id).returncode == 0
    data = json.loads(ocirt(bundle, "events", "--stats", bundle.id).stdout)["data"]
    assert data["memory"]["usage"]["limit"] == 80 * MiB
    delete_and_check(bundle)


def test_events_streams_stats_and_reports_an_oom_kill(make_bundle, test_dir):
    loop = start_loop(make_bundle, HOG, resources={"memory": {"limit": 16 * MiB}})
    bundle = loop.bundle
    out = test_dir / "events.out"
    with open(out, "w") as stdout, open(test_dir / "events.err", "w") as stderr:
        events = subprocess.Popen([bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root),
                                   "events", "--interval", "200ms", bundle.id],
                                  stdout=stdout, stderr=stderr, env=helpers.base_env())
    try:
        def parsed() -> list[dict]:
            return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

        assert wait_for(lambda: any(e["type"] == "stats" for e in parsed())), "no stats within the interval"
        assert loop.trigger() == 137
        assert wait_for(lambda: any(e["type"] == "oom" for e in parsed())), parsed()
        oom = next(e for e in parsed() if e["type"] == "oom")
        assert oom == {"type": "oom", "id": bundle.id}
        assert events.poll() is None, "events keeps streaming while the container runs"
        assert bundle.kill("KILL").returncode == 0
        if helpers.runtime_name() == "ocirt":  # runc streams on until the cgroup is removed
            assert events.wait(timeout=10) == 0, (test_dir / "events.err").read_text()
        stats = [e for e in parsed() if e["type"] == "stats"]
        assert all(e["id"] == bundle.id and "memory" in e["data"] for e in stats)
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()
    delete_and_check(bundle)


@pytest.mark.skipif(helpers.runtime_name() != "ocirt", reason="ocirt's own handling of a closed pipe")
def test_events_ends_quietly_when_its_reader_goes_away(make_bundle, test_dir):
    loop = start_loop(make_bundle)
    bundle = loop.bundle
    with open(test_dir / "events.err", "w+") as stderr:
        events = subprocess.Popen([bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root),
                                   "events", "--interval", "50ms", bundle.id],
                                  stdout=subprocess.PIPE, stderr=stderr, env=helpers.base_env())
        try:
            assert events.stdout is not None
            assert json.loads(events.stdout.readline())["type"] == "stats"
            events.stdout.close()  # like `ocirt events ID | head -1`
            assert events.wait(timeout=10) == 0
        finally:
            if events.poll() is None:
                events.kill()
                events.wait()
        stderr.seek(0)
        assert stderr.read() == ""
    assert bundle.state()["status"] == "running"
    delete_and_check(bundle)


# ---- kill --all ----------------------------------------------------------------------------------------

def test_kill_all_signals_every_process_not_just_the_init(make_bundle):
    bundle = make_bundle(args=["sh", "-c", "sleep 100 & sleep 100 & wait"])
    assert bundle.run("--detach").returncode == 0
    pids = wait_for(lambda: (lambda found: found if len(found) == 3 else None)(
        json.loads(ocirt(bundle, "ps", "--format", "json", bundle.id).stdout)))
    assert pids and len(pids) == 3
    # The init of a pid namespace ignores SIGTERM it has no handler for: alone, it changes nothing.
    assert bundle.kill("TERM").returncode == 0
    time.sleep(0.3)
    assert sorted(json.loads(ocirt(bundle, "ps", "--format", "json", bundle.id).stdout)) == sorted(pids)
    # --all reaches the sleeps too; once they die, the init's `wait` returns and the container stops.
    result = ocirt(bundle, "kill", "--all", bundle.id, "TERM")
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert not json.loads(ocirt(bundle, "ps", "--format", "json", bundle.id).stdout)
    delete_and_check(bundle)


def test_kill_all_sigkill_empties_a_paused_container(make_bundle):
    loop = start_loop(make_bundle, "sleep 30 & true")
    loop.trigger()
    bundle = loop.bundle
    assert ocirt(bundle, "pause", bundle.id).returncode == 0
    assert ocirt(bundle, "kill", "--all", bundle.id, "KILL").returncode == 0
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    assert wait_for(lambda: not (cgroup_dir(bundle, "pids") / "cgroup.procs").read_text().strip())
    delete_and_check(bundle)


# ---- bad input -----------------------------------------------------------------------------------------

BAD_UPDATES = [
    (["--memory", "lots"], "invalid value for --memory"),
    (["--memory", "-5"], "invalid value for --memory"),
    (["--memory-swap", "12q"], "invalid value for --memory-swap"),
    (["--cpu-share", "-5"], "invalid value for --cpu-shares"),
    (["--cpu-quota", "1.5"], "invalid value for --cpu-quota"),
    (["--pids-limit", "ten"], "invalid value for --pids-limit"),
    (["--l3-cache-schema", "L3:0=f"], "not supported"),
    (["--mem-bw-schema", "MB:0=70"], "not supported"),
    (["--cpu-shares", "1"], "cannot set cpu.shares to 1"),
    (["--memory", "1m", "--memory-swap", "512k"], "memory+swap limit (524288) cannot be below the memory limit"),
    (["--cpuset-cpus", "4096"], "cannot set cpuset.cpus to 4096"),
    (["--resources", "/nonexistent/resources.json"], "cannot read --resources /nonexistent/resources.json"),
    (["--no-such-flag"], "flag provided but not defined: --no-such-flag"),
]


@pytest.mark.parametrize(("args", "message"), BAD_UPDATES, ids=[" ".join(a) for a, _ in BAD_UPDATES])
def test_bad_update_flags_are_refused_and_change_nothing(make_bundle, args, message):
    loop = start_loop(make_bundle, resources={"pids": {"limit": 77}})
    bundle = loop.bundle
    limit_before = read_cgroup(bundle, "memory", "memory.limit_in_bytes")
    result = ocirt(bundle, "update", *args, bundle.id)
    assert result.returncode == 1, result.stdout
    assert message in error_line(result), result.stderr
    assert read_cgroup(bundle, "pids", "pids.max") == "77"
    assert read_cgroup(bundle, "memory", "memory.limit_in_bytes") == limit_before
    assert bundle.state()["status"] == "running"
    delete_and_check(bundle)


BAD_BODIES = [
    ("{", "standard input: malformed JSON"),
    ("[1, 2]", "standard input: the resources must be a JSON object"),
    ('{"memory": {"limit": "1g"}}', "standard input: memory.limit must be an integer"),
    ('{"cpu": {"shares": -2}}', "standard input: cpu.shares cannot be negative"),
    ('{"cpu": {"cpus": 3}}', "standard input: cpu.cpus must be a string"),
    ('{"pids": 5}', "standard input: pids must be an object"),
    ('{"unified": {"memory.max": 5}}', "standard input: unified must map file names to strings"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES, ids=[m.split(": ", 1)[1] for _, m in BAD_BODIES])
def test_bad_resources_json_is_refused(make_bundle, body, message):
    loop = start_loop(make_bundle, resources={"pids": {"limit": 77}})
    result = ocirt(loop.bundle, "update", "--resources", "-", loop.bundle.id, input=body)
    assert result.returncode == 1
    assert message in error_line(result), result.stderr
    assert read_cgroup(loop.bundle, "pids", "pids.max") == "77"
    delete_and_check(loop.bundle)


def test_commands_on_a_stopped_container_say_it_is_not_running(make_bundle):
    bundle = make_bundle(args=["true"])
    assert bundle.run("--detach").returncode == 0
    assert wait_for(lambda: bundle.state()["status"] == "stopped")
    for args, message in ((["update", "--memory", "32m"], "container not running"),
                          (["pause"], "container not running"),
                          (["resume"], "container not paused"),
                          (["events", "--stats"], "is not running"),
                          (["events"], "is not running")):
        result = ocirt(bundle, *args, bundle.id, timeout=10)
        assert result.returncode == 1, args
        assert message in error_line(result), (args, result.stderr)
        assert result.stdout == ""
    delete_and_check(bundle)


@pytest.mark.skipif(helpers.runtime_name() != "ocirt", reason="runc freezes a created container")
def test_pause_refuses_a_created_container(make_bundle):
    """A frozen init could never open the exec fifo, so `start` would hang: ocirt refuses up front."""
    created = make_bundle(args=["sleep", "60"])
    assert created.create().returncode == 0
    result = ocirt(created, "pause", created.id)
    assert result.returncode == 1
    assert "container not running (it is created)" in error_line(result)
    assert created.state()["status"] == "created"
    delete_and_check(created)


def test_pause_and_resume_refuse_the_wrong_status(make_bundle):

    loop = start_loop(make_bundle)
    result = ocirt(loop.bundle, "resume", loop.bundle.id)
    assert result.returncode == 1
    assert "container not paused" in error_line(result)
    assert ocirt(loop.bundle, "pause", loop.bundle.id).returncode == 0
    result = ocirt(loop.bundle, "pause", loop.bundle.id)
    assert result.returncode == 1
    assert "container not running" in error_line(result)
    assert loop.bundle.state()["status"] == "paused"
    delete_and_check(loop.bundle)


@pytest.mark.parametrize("command", [["update", "--memory", "1m"], ["pause"], ["resume"], ["ps"],
                                     ["ps", "--format", "json"], ["events", "--stats"], ["events"]])
def test_commands_on_a_missing_container_say_it_does_not_exist(runtime, container_id, command):
    result = runtime([*command, container_id], timeout=10)
    assert result.returncode == 1
    assert f"container '{container_id}' does not exist" in error_line(result) or "does not exist" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["update"], '"update" requires exactly 1 argument(s)'),
    (["update", "a", "b"], '"update" requires exactly 1 argument(s)'),
    (["pause"], '"pause" requires exactly 1 argument(s)'),
    (["resume", "a", "b"], '"resume" requires exactly 1 argument(s)'),
    (["ps"], '"ps" requires a minimum of 1 argument(s)'),
    (["ps", "--format", "yaml", "x"], "invalid --format 'yaml'"),
    (["ps", "--format", "json", "x", "aux"], "ps options cannot be combined with --format json"),
    (["events"], '"events" requires exactly 1 argument(s)'),
    (["events", "--interval", "0s", "x"], "--interval must be greater than 0"),
    (["events", "--interval", "5", "x"], "invalid duration '5'"),
    (["events", "--interval", "fast", "x"], "invalid duration 'fast'"),
    (["cgroup"], '"cgroup" requires exactly 1 argument(s)'),
    (["cgroup", "borrow"], "cgroup: expected `delegate` or `undelegate`"),
    (["cgroup", "delegate"], "cgroup delegate: --user is required"),
    (["cgroup", "delegate", "--user", "no-such-user-ocirt"], "no user named 'no-such-user-ocirt'"),
    (["cgroup", "delegate", "--user", "root", "--controllers", "nonsense"],
     "cannot delegate the nonsense controller"),
    (["cgroup", "delegate", "--user", "root", "--path", "/"], "cannot delegate the root cgroup"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_usage_errors(runtime, args, message):
    result = runtime(args, timeout=10)
    assert result.returncode == 1
    assert message in error_line(result), result.stderr
    if "argument(s)" in message:
        # As runc: a wrong number of arguments also prints the command's usage on stdout.
        assert result.stdout.startswith(f"Incorrect Usage.\n\nNAME:\n   ocirt {args[0]} - "), result.stdout
    else:
        assert result.stdout == ""


# ---- rootless, with and without delegation ----------------------------------------------------------------

@contextlib.contextmanager
def delegated(runtime, user: helpers.UnprivilegedUser, controllers: str):
    """`ocirt cgroup delegate` for the test, undone afterwards (by force when the test failed midway)."""
    result = runtime(["cgroup", "delegate", "--user", user.name, "--controllers", controllers])
    made = [Path(line) for line in result.stdout.split()]
    assert result.returncode == 0, result.stderr
    try:
        yield made
    except BaseException:
        for path in made:
            helpers.remove_cgroup(path)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise
    undo = runtime(["cgroup", "undelegate", "--user", user.name, "--controllers", controllers])
    left = [path for path in made if path.exists()]
    for path in left:
        helpers.remove_cgroup(path)
    assert undo.returncode == 0, undo.stderr
    assert not left, f"undelegate left {left}"


@pytest.mark.rootless
def test_delegate_prints_the_directories_it_gives_to_the_user(runtime, unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, "memory,pids") as made:
        assert {path.parent.parent for path in made} == {helpers.CGROUP_ROOT / "memory", helpers.CGROUP_ROOT / "pids"}
        for path in made:
            assert path.name == user.name and path.stat().st_uid == user.uid
            assert (path / "cgroup.procs").stat().st_uid == user.uid
    assert not any(path.exists() for path in made)


@pytest.mark.rootless
def test_delegate_refuses_a_non_root_caller(runtime, unprivileged_user):
    result = runtime(["cgroup", "delegate", "--user", unprivileged_user.name], user=unprivileged_user)
    assert result.returncode == 1
    assert "only root can change cgroup ownership" in error_line(result)
    assert not (helpers.CGROUP_ROOT / "memory" / "ocirt" / unprivileged_user.name).exists()


@pytest.mark.rootless
def test_rootless_update_pause_ps_events_in_a_delegated_cgroup(make_bundle, runtime, unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, "memory,pids,cpu,freezer"):
        loop = start_loop(make_bundle, FORKS, user=user)
        bundle = loop.bundle
        assert f"/ocirt/{user.name}/" in str(cgroup_dir(bundle, "pids"))
        assert loop.trigger() == 0
        result = ocirt(bundle, "update", "--pids-limit", "4", "--memory", "64m", bundle.id)
        assert result.returncode == 0, result.stderr
        assert read_cgroup(bundle, "pids", "pids.max") == "4"
        assert int(read_cgroup(bundle, "memory", "memory.limit_in_bytes")) == 64 * MiB
        assert loop.trigger() != 0 and "fork" in loop.read("err2")

        assert ocirt(bundle, "pause", bundle.id).returncode == 0
        assert bundle.state()["status"] == "paused"
        frozen_at = loop.count()
        time.sleep(0.3)
        assert loop.count() == frozen_at
        assert ocirt(bundle, "resume", bundle.id).returncode == 0
        assert wait_for(lambda: loop.count() > frozen_at + 2)

        result = ocirt(bundle, "ps", "--format", "json", bundle.id)
        assert result.returncode == 0 and result.stderr == ""
        assert loop.pid in json.loads(result.stdout)
        event = json.loads(ocirt(bundle, "events", "--stats", bundle.id).stdout)
        assert event["data"]["memory"]["usage"]["limit"] == 64 * MiB and event["data"]["pids"]["limit"] == 4
        delete_and_check(bundle)


@pytest.mark.rootless
def test_rootless_pause_without_a_delegated_freezer_names_the_fix(make_bundle, runtime, unprivileged_user):
    user = unprivileged_user
    with delegated(runtime, user, "memory,pids"):
        loop = start_loop(make_bundle, user=user)
        result = ocirt(loop.bundle, "pause", loop.bundle.id)
        assert result.returncode == 1
        message = error_line(result)
        assert "freezer" in message and f"ocirt cgroup delegate --user {user.name} --controllers freezer" in message
        assert loop.bundle.state()["status"] == "running"
        delete_and_check(loop.bundle)


@pytest.mark.rootless
def test_rootless_update_without_delegation_names_the_fix(make_bundle, unprivileged_user):
    user = unprivileged_user
    # No cgroupsPath: the default path, which rootless without delegation runs without cgroups (a path the
    # config names and the user can't use is an error instead).
    loop = start_loop(make_bundle, user=user, explicit_path=False)
    bundle = loop.bundle
    result = ocirt(bundle, "update", "--memory", "64m", bundle.id)
    assert result.returncode == 1
    message = error_line(result)
    assert "memory" in message and f"ocirt cgroup delegate --user {user.name}" in message
    # Without a cgroup, ps still finds the container's processes through its pid namespace.
    result = ocirt(bundle, "ps", "--format", "json", bundle.id)
    assert result.returncode == 0 and result.stderr == ""
    assert loop.pid in json.loads(result.stdout)
    delete_and_check(bundle)
