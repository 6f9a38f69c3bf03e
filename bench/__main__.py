"""`python -m bench [--rootless] [--runtimes ocirt,runc,crun] [--quick] [--json FILE]`

Exit status: 0 when every target is met, 1 when one is missed, 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time

from bench.api import measure_api_runs
from bench.environment import Environment
from bench.launch import BenchError, launch_overhead
from bench.report import build_rows, render
from bench.scenarios import (
    measure_cycle,
    measure_memory,
    measure_parallel,
    measure_run,
    measure_sequential_runs,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# rounds per measurement: (full, --quick)
PLAN = {
    "run": (30, 8),
    "run100_blocks": (10, 2),
    "cycle": (20, 6),
    "parallel": (5, 2),
    "memory": (10, 4),
    "api100_blocks": (10, 2),
}
RUN100_BLOCK = 10
PARALLEL_COUNT = 20


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="ocirt against runc and crun, interleaved")
    parser.add_argument("--rootless", action="store_true",
                        help="run every runtime as the unprivileged user ocirt-bench (created if missing)")
    parser.add_argument("--runtimes", default="ocirt,runc,crun",
                        help="comma-separated, of ocirt, runc, crun (default: all that are installed)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run, not a measurement")
    parser.add_argument("--json", metavar="FILE", help="also write every sample and the table to FILE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    pick = 1 if args.quick else 0
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    # A Ctrl-C or SIGTERM must still reach the cleanup below.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        env = Environment(repo=REPO, rootless=args.rootless, runtime_names=names)
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    results = {}
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        if not env.runtimes:
            raise BenchError("none of the requested runtimes is installed")
        env.build_rootfs()
        overhead = launch_overhead(env.identity)
        mode = "rootless (as user ocirt-bench)" if args.rootless else "rootful"
        print(f"bench: {mode}; runtimes {', '.join(r.name for r in env.runtimes)}; "
              f"{'quick' if args.quick else 'full'} plan; work dir {env.workdir}", flush=True)
        steps = [
            ("run", lambda: measure_run(env, PLAN["run"][pick])),
            ("run100", lambda: measure_sequential_runs(env, PLAN["run100_blocks"][pick], RUN100_BLOCK)),
            ("cycle", lambda: measure_cycle(env, PLAN["cycle"][pick])),
            ("parallel", lambda: measure_parallel(env, PLAN["parallel"][pick], PARALLEL_COUNT)),
            ("memory", lambda: measure_memory(env, PLAN["memory"][pick])),
            ("api100", lambda: measure_api_runs(env, PLAN["api100_blocks"][pick], RUN100_BLOCK)),
        ]
        for key, step in steps:
            t0 = time.monotonic()
            outcome = step()
            print(f"bench: {key} done in {time.monotonic() - t0:.1f} s", flush=True)
            if key in ("cycle", "api100"):
                results.update(outcome)
            elif key == "parallel":
                results["parallel"] = outcome["total"]
                results["parallel_up"] = outcome["up"]
                results["parallel_down"] = outcome["down"]
            else:
                results[key] = outcome
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return _finish(env, 2)
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return _finish(env, 2)
    load_after = os.getloadavg()
    order = ["run", "run100", "create", "start", "state", "kill", "delete", "parallel", "parallel_up",
             "parallel_down", "memory", "api100", "api_helper"]
    runtime_names = [r.name for r in env.runtimes]
    rows = build_rows({k: results[k] for k in order if k in results}, runtime_names)
    print()
    print(render(rows, runtime_names))
    print()
    print(f"medians of {'quick' if args.quick else 'full'} rounds; ratios are medians of per-round ratios, "
          f"IQR their spread across rounds.")
    print(f"launch floor (the bench's posix_spawn of the host's /bin/true): {overhead * 1000:.2f} ms, in every "
          "time above.")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {os.cpu_count()} CPUs; "
          f"{time.monotonic() - started:.0f} s in all. The machine is shared: rerun before trusting a near miss.")
    missed = [row["metric"] for row in rows if row.get("verdict") == "MISS"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "rootless" if args.rootless else "rootful", "quick": args.quick,
                       "kernel": platform.release(), "launch_floor_ms": overhead * 1000,
                       "load": [load_before, load_after], "rows": rows,
                       "samples": {k: {"name": s.name, "unit": s.unit, "values": s.values, "failures": s.failures}
                                   for k, s in results.items()}}, f, indent=1)
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return _finish(env, 1 if missed else 0)


def _interrupted(_signum, _frame) -> None:
    raise KeyboardInterrupt


def _finish(env: Environment, code: int) -> int:
    problems = env.cleanup()
    for problem in problems:
        print(f"bench: cleanup: {problem}", file=sys.stderr)
    return code if not problems or code else 2


if __name__ == "__main__":
    sys.exit(main())
