"""Slurm 22.05's `srun --container` and `sbatch --container` through the runtime under test, as two
different unprivileged users, with the oci.conf of docs/slurm.md.

What Slurm does with it (read from 22.05.8's source and seen in slurmd's log): slurmstepd, as root, rewrites
the bundle's config.json into the step's spool dir (process.args, process.env, terminal false, root.path
``<bundle>/rootfs``, and for a batch step bind mounts of the script and its output files), then the task,
already switched to the user, runs RunTimeRun through ``/bin/sh -c`` with slurmstepd's environment
(HOME=/root, no XDG_RUNTIME_DIR). When the step ends, slurmstepd runs RunTimeQuery, RunTimeKill and
RunTimeDelete as root.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
import slurm_harness as sh  # noqa: E402

pytestmark = pytest.mark.slurm

USERS = ["first", "second"]


@pytest.fixture(params=USERS)
def user(request, slurm_users) -> helpers.UnprivilegedUser:
    return slurm_users[USERS.index(request.param)]


@pytest.fixture
def bundle(bundles, user) -> Path:
    return bundles[user.name]


def test_srun_id_is_root_inside_mapped_to_the_user(slurm, user, bundle) -> None:
    result = slurm.srun(user, bundle, "sh", "-c", "id; cat /proc/self/uid_map /proc/self/gid_map")
    assert result.returncode == 0, result.describe()
    lines = result.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0(root)"), result.describe()
    assert lines[1].split() == ["0", str(user.uid), "1"], result.describe()
    assert lines[2].split() == ["0", str(user.gid), "1"], result.describe()
    assert result.stderr == "", f"something besides the job wrote to stderr:\n{result.describe()}"


def test_srun_keeps_stdout_and_stderr_apart_and_returns_the_exit_code(slurm, user, bundle) -> None:
    result = slurm.srun(user, bundle, "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3")
    assert result.returncode == 3, result.describe()
    assert result.stdout == "to-stdout\n", result.describe()
    # srun adds one line of its own about the exit code (in either order with the job's); nothing else.
    assert sorted(result.stderr.splitlines()) == sorted(
        ["to-stderr", f"srun: error: {slurm.node}: task 0: Exited with exit code 3"]), result.describe()


def test_sbatch_wait_returns_the_exit_code_and_the_output_files(slurm, user, bundle) -> None:
    out, err = user.home / "batch.out", user.home / "batch.err"
    job, result = slurm.sbatch(user, bundle, "#!/bin/sh\necho batch-stdout; echo batch-stderr >&2\n"
                                             "id -u; exit 5\n", wait=True, output=out, error=err)
    assert result.returncode == 5, result.describe()
    assert out.read_text() == "batch-stdout\n0\n"
    assert err.read_text() == "batch-stderr\n", "something besides the job wrote to the error file"
    assert slurm.job_field(job.id, "ExitCode") == "5:0"


def test_a_job_that_cannot_start_shows_the_runtime_s_one_line_error(slurm, user, bundle, test_dir) -> None:
    """A bundle without its rootfs: the step fails and the job's stderr holds the runtime's one line."""
    broken = helpers.world_reachable_dir(test_dir / f"no-rootfs-{user.name}")
    (broken / "config.json").write_bytes((bundle / "config.json").read_bytes())
    result = slurm.srun(user, broken, "true")
    assert result.returncode != 0, result.describe()
    ours = [line for line in result.stderr.splitlines() if not line.startswith("srun:")]
    assert len(ours) == 1, result.describe()
    assert re.match(r"^ocirt: .*rootfs", ours[0]), result.describe()
    assert result.stdout == "", result.describe()


def test_root_s_own_job_runs_a_rootful_container_with_the_same_oci_conf(slurm, harness_session, test_dir) -> None:
    """srun --container as root: the runtime runs as root (no user namespace), its state in
    ``<state>/root``, and the same checks hold."""
    import subprocess

    bundle = helpers.world_reachable_dir(test_dir / "root-bundle")
    subprocess.run(["cp", "-a", str(harness_session.rootfs()), str(bundle / "rootfs")], check=True)
    subprocess.run([slurm.runtime, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["cgroupsPath"] = helpers.cgroups_path(helpers.new_container_id())
    (bundle / "config.json").write_text(json.dumps(config))
    result = slurm.run(["srun", f"--container={bundle}", "sh", "-c",
                        "echo $SLURM_JOB_ID; cat /proc/self/uid_map; echo to-stderr >&2; exit 4"])
    job_id, uid_map = result.stdout.splitlines()
    slurm.record(int(job_id), None)
    assert result.returncode == 4, result.describe()
    assert uid_map.split() == ["0", "0", "4294967295"], result.describe()
    assert sorted(result.stderr.splitlines()) == sorted(
        ["to-stderr", f"srun: error: {slurm.node}: task 0: Exited with exit code 4"]), result.describe()
    assert slurm.state_root(None).stat().st_uid == 0


def test_ten_jobs_at_once_each_get_their_own_container(slurm, slurm_users, bundles) -> None:
    """Five batch jobs of each user overlap; each sees its own pid namespace, and all ten containers
    exist at one moment."""
    jobs = []
    for i in range(10):
        user = slurm_users[i % 2]
        output = user.home / f"ten-{i}.out"
        job, result = slurm.sbatch(user, bundles[user.name], "#!/bin/sh\nreadlink /proc/self/ns/pid\nsleep 8\n",
                                   output=output)
        assert result.returncode == 0, result.describe()
        jobs.append((job, output))
    roots = [slurm.state_root(u) for u in slurm_users]

    def containers() -> set[str]:
        return {entry.name for root in roots if root.is_dir() for entry in root.iterdir()}

    expected = {job.container_id("batch") for job, _ in jobs}
    seen = helpers.wait_for(lambda: containers() >= expected, timeout=30, interval=0.1)
    assert seen, f"not all ten containers existed at once: {sorted(containers())} of {sorted(expected)}"
    gone = slurm.wait_gone([job.id for job, _ in jobs], timeout=60)
    assert len(gone) == 10, f"jobs still queued: {set(j.id for j, _ in jobs) - set(gone)}"
    namespaces = set()
    for job, output in jobs:
        assert slurm.job_field(job.id, "ExitCode") == "0:0", (job, output.read_text())
        text = output.read_text()
        assert re.fullmatch(r"pid:\[\d+\]\n", text), text
        namespaces.add(text)
    assert len(namespaces) == 10, namespaces


IGNORES_TERM = "trap '' TERM; echo started; while :; do sleep 1; done"
HANDLES_TERM = "trap 'echo got TERM; exit 0' TERM; echo started; while :; do sleep 1; done"


@pytest.mark.parametrize("tracker", ["linuxproc", "pgid"])
@pytest.mark.parametrize("oci_conf", ["documented", "slurm-example"])
def test_scancel_stops_sigterm_ignoring_jobs_within_kill_wait(request, tracker, oci_conf, slurm_users,
                                                              bundles) -> None:
    """Each user runs an srun step and a batch job whose container ignores SIGTERM, and a batch job that
    handles it. scancel of all of them: every job is gone within KillWait + 5 s, with nothing left (the
    leak check after the test). With the documented oci.conf, the handler runs (Slurm's SIGTERM reaches
    the container and KillWait is its grace); with Slurm's own example, the `/bin/sh -c` that runs the
    runtime dies of that SIGTERM and the runtime ends the container at once.

    On 10b516e (no parent-death handling), Slurm's example took ~70 s with either tracker, and the
    documented one ~70 s with pgid: the container outlived the runtime and kept the step's output open."""
    cluster: sh.SlurmCluster = request.getfixturevalue("slurm" if tracker == "linuxproc" else "slurm_pgid")
    cluster.write_oci_conf(sh.OCI_CONF if oci_conf == "documented" else sh.OCI_CONF_SLURM_EXAMPLE)
    try:
        _scancel_all(cluster, slurm_users, bundles, grace=oci_conf == "documented")
    finally:
        cluster.settle(cluster.kill_wait + 30)
        cluster.write_oci_conf(sh.OCI_CONF)


def _scancel_all(cluster: sh.SlurmCluster, users, bundles, *, grace: bool) -> None:
    clients = []
    jobs: dict[int, str] = {}
    outputs = {}
    for user in users:
        bundle = bundles[user.name]
        out = user.home / "scancel-srun.out"
        job, client = cluster.srun_background(user, bundle, "sh", "-c", IGNORES_TERM, out=out)
        clients.append(client)
        jobs[job.id] = "srun, ignores SIGTERM"
        outputs[job.id] = out
        for kind, script in (("ignores", IGNORES_TERM), ("handles", HANDLES_TERM)):
            output = user.home / f"scancel-{kind}.out"
            job, result = cluster.sbatch(user, bundle, f"#!/bin/sh\n{script}\n", output=output)
            assert result.returncode == 0, result.describe()
            jobs[job.id] = f"sbatch, {kind} SIGTERM"
            outputs[job.id] = output

    def text(path: Path) -> str:
        return path.read_text() if path.exists() else ""

    started = helpers.wait_for(lambda: all("started" in text(p) for p in outputs.values()), timeout=30,
                               interval=0.1)
    assert started, {j: text(p) for j, p in outputs.items()}
    cluster.run(["scancel", *map(str, jobs)], check=True)
    gone = cluster.wait_gone(list(jobs), timeout=cluster.kill_wait + 30)
    for client in clients:
        client.wait(timeout=30)
    limit = cluster.kill_wait + 5
    report = {f"{job_id} ({what})": round(gone.get(job_id, float("inf")), 1) for job_id, what in jobs.items()}
    print(f"proctrack/{cluster.proctrack}: seconds from scancel to gone: {report}")
    assert all(seconds < limit for seconds in report.values()), f"seconds from scancel to gone: {report}"
    if grace:
        for job_id, what in jobs.items():
            if "handles" in what:
                assert "got TERM" in text(outputs[job_id]), text(outputs[job_id])


def derived_bundle(directory: Path, user: helpers.UnprivilegedUser, source: Path, change) -> Path:
    """A bundle of ``user`` at ``directory`` sharing ``source``'s rootfs, its config changed by ``change``."""
    helpers.world_reachable_dir(directory)
    config = json.loads((source / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "rootfs").symlink_to(source / "rootfs")
    helpers.chown_tree(directory, user.uid, user.gid)
    return directory


def ocirt_admin(*args: str):
    """ocirt's root-only admin command, whichever runtime is under test (runc has no such command)."""
    import subprocess

    return subprocess.run([str(helpers.REPO / "bin" / "ocirt"), *args], capture_output=True, text=True,
                          timeout=30, env=helpers.base_env())


def test_limits_apply_in_a_subtree_root_delegated_once(slurm, slurm_users, bundles, test_dir) -> None:
    """The administrator's one-time `ocirt cgroup delegate --user NAME`: a job's pids limit (from the
    user's config.json) holds in the container, and Slurm's RunTimeDelete removes the container's cgroup."""
    if "ocirt" not in os.path.basename(slurm.runtime):
        pytest.skip("delegated cgroups through `ocirt cgroup delegate` are ocirt's")
    user = slurm_users[1]
    made = ocirt_admin("cgroup", "delegate", "--user", user.name, "--controllers", "pids")
    assert made.returncode == 0, made.stderr
    delegated = Path(made.stdout.split()[0])
    try:
        limited = derived_bundle(test_dir / f"limited-{user.name}", user, bundles[user.name],
                                 lambda config: config["linux"].update(resources={"pids": {"limit": 12}}))
        output = user.home / "limited.out"
        job, result = slurm.sbatch(user, limited, "#!/bin/sh\nfor i in $(seq 30); do sleep 6 & done 2>&1 | head -1\n"
                                                  "echo forked; sleep 4\n", output=output)
        assert result.returncode == 0, result.describe()
        cgroup = delegated / job.container_id("batch")
        seen = helpers.wait_for(lambda: (cgroup / "pids.max").exists() and (cgroup / "pids.max").read_text(),
                                timeout=30, interval=0.1)
        assert seen == "12\n", f"{cgroup}/pids.max: {seen!r}"
        assert slurm.wait_gone([job.id], timeout=60), "the job did not finish"
        text = output.read_text()
        assert "can't fork" in text or "Resource temporarily unavailable" in text, text
        assert helpers.wait_for(lambda: not cgroup.exists(), timeout=30), f"{cgroup} outlived the job"
    finally:
        undone = ocirt_admin("cgroup", "undelegate", "--user", user.name, "--controllers", "pids")
        assert undone.returncode == 0, undone.stderr


CREATE_START_DETACHED = """\
RunTimeQuery="{runtime} --root={state}/%u state %n.%u.%j.%s.%t"
RunTimeCreate="{runtime} --root={state}/%u create --bundle %b %n.%u.%j.%s.%t </dev/null >/dev/null 2>&1"
RunTimeStart="{runtime} --root={state}/%u start %n.%u.%j.%s.%t"
RunTimeKill="{runtime} --root={state}/%u kill --all %n.%u.%j.%s.%t"
RunTimeDelete="{runtime} --root={state}/%u delete --force %n.%u.%j.%s.%t"
"""


def test_create_start_runs_the_container_but_22_05_cannot_give_it_the_job_s_stdio(slurm, user, bundle,
                                                                                  test_dir) -> None:
    """Slurm's create/start split (docs/slurm.md says why it is not the recommended set-up): with
    create's stdio detached from the pipe slurmstepd reads it through, the container is created, started,
    polled to `stopped` and deleted, and nothing is left; but its output goes nowhere and 22.05 reports
    exit code 0 whatever the container returned (it exits with RunTimeStart's raw wait status)."""
    shared = helpers.world_reachable_dir(test_dir / f"out-{user.name}")
    os.chown(shared, user.uid, user.gid)
    mount = {"destination": "/out", "type": "bind", "source": str(shared), "options": ["rbind", "rw"]}
    marked = derived_bundle(test_dir / f"marked-{user.name}", user, bundle,
                            lambda config: config["mounts"].append(mount))
    marker = shared / "ran"
    slurm.write_oci_conf(CREATE_START_DETACHED)
    try:
        result = slurm.srun(user, marked, "sh", "-c", "echo lost; touch /out/ran; exit 3")
        slurm.settle(30)
    finally:
        slurm.write_oci_conf(sh.OCI_CONF)
    assert helpers.wait_for(marker.exists, timeout=10), result.describe()
    assert result.stdout == "", result.describe()
    assert result.returncode == 0, result.describe()
