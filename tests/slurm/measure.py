"""Figures for docs/slurm.md: a trivial job's time through Slurm with ocirt, with runc and without a
container, and scancel's time for a job whose container ignores SIGTERM.

    .venv/bin/python tests/slurm/measure.py [--rounds N] [--no-scancel]

As root, on a machine with Slurm (scripts/slurm-setup). It starts its own cluster (tests/slurm's harness)
with one throwaway user, alternates the runtimes round by round (oci.conf is read at each step's start)
and prints medians. The machine is shared: compare the columns of one run, never runs of different days.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

import helpers  # noqa: E402
import slurm_harness as sh  # noqa: E402

RUNTIMES = {"ocirt": str(helpers.REPO / "bin" / "ocirt"), "runc": "/usr/sbin/runc"}
IGNORES_TERM = "trap '' TERM; echo started; while :; do sleep 1; done"


def trivial_jobs(cluster: sh.SlurmCluster, user, bundle: Path, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"no container": [], **{name: [] for name in RUNTIMES}}
    for i in range(rounds):
        order = list(times)
        order = order[i % len(order):] + order[:i % len(order)]
        for name in order:
            if name == "no container":
                result = cluster.run(["srun", "true"], user=user)
            else:
                cluster.runtime = RUNTIMES[name]
                cluster.write_oci_conf(sh.OCI_CONF)
                result = cluster.srun(user, bundle, "true")
            if result.returncode != 0:
                raise SystemExit(f"{name}: {result.describe()}")
            times[name].append(result.seconds)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def scancel_time(cluster: sh.SlurmCluster, user, bundle: Path, runtime: str, oci_conf: str) -> float:
    cluster.runtime = runtime
    cluster.write_oci_conf(oci_conf)
    out = Path(tempfile.mkdtemp(dir=user.home)) / "out"
    os.chown(out.parent, user.uid, user.gid)
    job, client = cluster.srun_background(user, bundle, "sh", "-c", IGNORES_TERM, out=out)
    helpers.wait_for(lambda: "started" in out.read_text(), timeout=30, interval=0.05)
    subprocess.run(["scancel", str(job.id)], env=cluster.env(), check=True)
    gone = cluster.wait_gone([job.id], timeout=cluster.kill_wait + 90)
    client.wait(timeout=60)
    cluster.settle(60)
    return gone.get(job.id, float("inf"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-scancel", action="store_true", help="skip the scancel figures (about 3 minutes)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("measure.py: needs root (it starts slurmctld and slurmd and creates a user)", file=sys.stderr)
        return 2
    missing = sh.missing_tools()
    if missing:
        print(f"measure.py: missing {', '.join(missing)}: {sh.SETUP_HINT}", file=sys.stderr)
        return 2
    base = helpers.world_reachable_dir(Path(tempfile.mkdtemp(prefix="ocirt-slurm-measure-")))
    user = helpers.create_user()
    cluster = sh.SlurmCluster(base / "cluster", RUNTIMES["ocirt"])
    try:
        from ocirt.bundle import build_rootfs

        rootfs = build_rootfs(base / "rootfs")
        bundle = sh.make_user_bundle(base / "bundle", user, RUNTIMES["ocirt"], rootfs)
        cluster.start()
        trivial_jobs(cluster, user, bundle, 2)  # warm the page cache and slurmd
        medians = trivial_jobs(cluster, user, bundle, args.rounds)
        print(f"trivial job (`srun [--container=B] true`), median of {args.rounds}:")
        for name, ms in medians.items():
            print(f"  {name:13} {ms:6.0f} ms")
        if not args.no_scancel:
            print(f"scancel of an srun job whose container ignores SIGTERM (KillWait={cluster.kill_wait}):")
            for name, runtime in RUNTIMES.items():
                for label, conf in (("documented oci.conf", sh.OCI_CONF),
                                    ("Slurm's example", sh.OCI_CONF_SLURM_EXAMPLE)):
                    seconds = scancel_time(cluster, user, bundle, runtime, conf)
                    print(f"  {name:6} {label:20} {seconds:5.1f} s", flush=True)
    finally:
        problems = cluster.close()
        helpers.remove_user(user)
        subprocess.run(["rm", "-rf", str(base)], check=False)
        for problem in problems:
            print(f"measure.py: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
