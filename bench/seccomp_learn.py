"""The cost of learning a seccomp profile: `python -m bench.seccomp_learn [--rounds N] [--count N]`.

Runs the same busybox programs in the foreground three ways, interleaved round by round so load from the
rest of the machine lands on all alike: a normal run, a learning run (`--seccomp-learn`, every syscall
a round trip to the recorder) and a run under the learned profile (the BPF filter alone). As root the
runs are rootful; as any other user they are rootless (the config maps the caller to root). Prints the
median wall time of each, the ratios, and the learning run's cost per syscall. See docs/sandboxing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = os.path.join(REPO, "bin", "ocirt")


def workloads(count: int) -> dict[str, tuple[list[str], int]]:
    """name -> (args, syscalls the loop itself makes, about)."""
    return {
        # One read and one write per byte.
        f"dd bs=1 count={count}": (["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}"],
                                   2 * count),
        # A fork, an exec and a wait per iteration (tens of syscalls each).
        "200 x fork+exec /bin/true": (["sh", "-c", "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done"],
                                      0),
    }


def config_for(args: list[str], rootfs: str) -> dict:
    sys.path.insert(0, REPO)
    from ocirt.spec.default import default_config

    rootless = os.geteuid() != 0
    config = default_config(rootless=rootless, uid=os.geteuid() if rootless else None,
                            gid=os.getegid() if rootless else None, args=args, terminal=False)
    config["root"]["path"] = rootfs
    return config


def timed_run(root: str, bundle: str, name: str, *extra: str) -> float:
    started = time.monotonic()
    done = subprocess.run([RUNTIME, "--root", root, "run", *extra, "--bundle", bundle, name],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=200000, help="bytes dd copies one at a time")
    options = parser.parse_args()
    sys.path.insert(0, REPO)
    from ocirt.bundle import build_rootfs

    work = tempfile.mkdtemp(prefix="ocirt-bench-learn-")
    try:
        from pathlib import Path

        rootfs = str(build_rootfs(Path(work) / "rootfs"))
        root = os.path.join(work, "state")
        print(f"{'rootful' if os.geteuid() == 0 else 'rootless'}, {options.rounds} rounds, medians")
        print(f"{'workload':32} {'normal':>9} {'learning':>9} {'learned':>9} {'learn/normal':>13} "
              f"{'per syscall':>12}")
        for label, (args, loop_syscalls) in workloads(options.count).items():
            bundle = os.path.join(work, f"bundle-{len(os.listdir(work))}")
            os.mkdir(bundle)
            profile = os.path.join(work, f"profile-{os.path.basename(bundle)}.json")
            with open(os.path.join(bundle, "config.json"), "w") as f:
                json.dump(config_for(args, rootfs), f)
            timed_run(root, bundle, "warm", "--seccomp-learn", profile)  # the profile the third run uses
            enforced = os.path.join(work, f"enforced-{os.path.basename(bundle)}")
            os.mkdir(enforced)
            config = config_for(args, rootfs)
            with open(profile) as f:
                config["linux"]["seccomp"] = json.load(f)
            with open(os.path.join(enforced, "config.json"), "w") as f:
                json.dump(config, f)
            normal, learning, learned = [], [], []
            for i in range(options.rounds):
                normal.append(timed_run(root, bundle, f"n{i}"))
                learning.append(timed_run(root, bundle, f"l{i}", "--seccomp-learn", profile))
                learned.append(timed_run(root, enforced, f"e{i}"))
            n, le, ld = (statistics.median(x) for x in (normal, learning, learned))
            per = f"{(le - n) / loop_syscalls * 1e6:.1f} us" if loop_syscalls else "-"
            print(f"{label:32} {n:8.3f}s {le:8.3f}s {ld:8.3f}s {le / n:12.1f}x {per:>12}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
