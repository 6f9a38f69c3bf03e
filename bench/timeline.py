"""One `run` of /bin/true, step by step: `python -m bench.timeline [--rounds N] [--rootless] [--runtimes ...]`.

Prints two markdown tables (docs/performance.md shows them):
  1. ocirt's own steps, from `ocirt --debug --log FILE run`: each trace line's wall-clock stamp less the
     moment the benchmark spawned the process, median over the rounds. Lines from the intermediate and the
     init are stamped when the runtime receives them, which is when it is waiting for them. The first line
     comes after the interpreter has started and the CLI is imported: that time is its own row.
  2. The same milestones for every runtime from `strace -f -tt -T -y`: the runtime's exec, the config read,
     cgroups made and joined, the first fork, unshare, mounts, pivot_root, seccomp, the container's execve
     and the end. strace slows every syscall (several times over for a Go runtime), so these rows compare
     the order and the share of each phase, not absolute times; the first table has the real times.
Runs as root (rootless: as the benchmark's user), on the benchmark's bundles and with its cleanup.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time
from datetime import datetime

from bench.environment import Environment
from bench.launch import Runtime, acting_as, reap, spawn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STAMP = re.compile(r'^time="([^"]+)" level=debug msg="(.*)" ms=[0-9.]+ step=(\S+) total_ms=')
_STRACE = re.compile(r"^(\d+)\s+(\d\d):(\d\d):(\d\d\.\d+) (.*?)(?: <(\d+\.\d+)>)?$")

# (label, pattern on the call text): the first matching call marks the milestone.
MILESTONES = [
    ("config.json opened", re.compile(r'open(at)?\(.*config\.json"')),
    ("first cgroup directory made", re.compile(r'mkdir(at)?\(.*"/sys/fs/cgroup/')),
    ("first write to a cgroup.procs begins", re.compile(r"write\(\d+</sys/fs/cgroup/[^>]*cgroup\.procs>")),
    ("first unshare", re.compile(r"^unshare\(")),
    ("first mount", re.compile(r"^mount(_setattr)?\(")),
    ("pivot_root", re.compile(r"^pivot_root\(")),
    ("seccomp filter loaded", re.compile(r"(seccomp\(SECCOMP_SET_MODE_FILTER.*= 0$|prctl\(PR_SET_SECCOMP.*= 0$)")),
    ("execve of the container's /bin/true", re.compile(r'^execve\("/bin/true"')),
]


def _wall(stamp: str) -> float:
    # RFC 3339 with nanoseconds: datetime takes microseconds.
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def _generic(msg: str) -> str:
    """A trace message without what changes from run to run (paths, ids, pids), so runs line up."""
    msg = re.sub(r"(/[^\s]+)+", "PATH", msg)
    msg = re.sub(r"\bocirt-bench-\S+", "ID", msg)
    msg = re.sub(r"\d+", "N", msg)
    return re.sub(r"(PATH ?)+", "PATH ", msg).strip()[:80]


def ocirt_steps(env: Environment, ocirt: Runtime, rounds: int) -> tuple[list[str], dict[str, list[float]]]:
    labels: list[str] = []
    offsets: dict[str, list[float]] = {}
    for n in range(rounds):
        container_id, bundle = env.new_container(ocirt, "true")
        log_path = os.path.join(env.workdir, f"timeline-{n}.log")
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o666))
        os.chmod(log_path, 0o666)  # rootless, the runtime writes it as the benchmark's user
        argv = [ocirt.binary, "--debug", "--log", log_path] + ocirt.argv("run", "--bundle", bundle,
                                                                        container_id)[1:]
        with acting_as(env.identity):
            began = time.time()
            status, _ = reap(spawn(ocirt, env.identity, argv, ocirt.output_path("timeline")))
            ended = time.time()
        if status != 0:
            raise RuntimeError(f"ocirt run failed ({status}): see {ocirt.output_path('timeline')}")
        rows: list[tuple[str, float]] = []
        with open(log_path) as handle:
            for line in handle:
                match = _STAMP.match(line)
                if match:
                    step, msg = match.group(3), match.group(2)
                    rows.append((f"{step}: {_generic(msg.split(':', 1)[-1].strip())}", _wall(match.group(1)) - began))
        rows.append(("the runtime has exited", ended - began))
        seen: dict[str, int] = {}
        for label, offset in rows:
            seen[label] = seen.get(label, 0) + 1
            key = label if seen[label] == 1 else f"{label} ({seen[label]})"
            if key not in offsets:
                offsets[key] = []
                labels.append(key)
            offsets[key].append(offset)
    return labels, offsets


def strace_milestones(env: Environment, runtime: Runtime, rounds: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for n in range(rounds):
        container_id, bundle = env.new_container(runtime, "true")
        out = os.path.join(env.workdir, f"strace-{runtime.name}-{n}.txt")
        argv = [shutil.which("strace") or "/usr/bin/strace", "-f", "-tt", "-T", "-y", "-o", out] + \
            runtime.argv("run", "--bundle", bundle, container_id)
        with acting_as(env.identity):
            status, _ = reap(spawn(runtime, env.identity, argv, runtime.output_path("strace")))
        if status != 0:
            raise RuntimeError(f"strace {runtime.name} run failed ({status})")
        for label, value in _milestones(out).items():
            found.setdefault(label, []).append(value)
    return found


def _milestones(path: str) -> dict[str, float]:
    first: float | None = None
    last = 0.0
    marks: dict[str, float] = {}
    procs_end = 0.0
    procs_busy = 0.0
    pending: dict[str, float] = {}  # pid -> start of an unfinished write to a cgroup.procs
    procs_write = re.compile(r"write\(\d+</sys/fs/cgroup/[^>]*cgroup\.procs>")
    with open(path) as handle:
        for line in handle:
            match = _STRACE.match(line.rstrip("\n"))
            if not match:
                continue
            pid, hours, minutes, seconds, call, duration = match.groups()
            at = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            if first is None:
                first = at
            at -= first
            took = float(duration or 0)
            last = max(last, at + took)
            if call.startswith("<... "):
                if pid in pending:
                    began = pending.pop(pid)
                    procs_busy += at + took - began
                    procs_end = at + took
                continue
            unfinished = call.endswith("<unfinished ...>")
            for label, pattern in MILESTONES:
                if label not in marks and pattern.search(call):
                    marks[label] = at
            if procs_write.match(call):
                if unfinished:
                    pending[pid] = at
                else:
                    procs_busy += took
                    procs_end = at + took
    if procs_end:
        marks["last write to a cgroup.procs ends"] = procs_end
        marks["time inside cgroup.procs writes (sum)"] = procs_busy
    marks["end (the runtime has exited)"] = last
    return marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--strace-rounds", type=int, default=5)
    parser.add_argument("--rootless", action="store_true")
    parser.add_argument("--runtimes", default="ocirt,runc,crun")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    env = Environment(repo=REPO, rootless=args.rootless, runtime_names=names)
    try:
        env.build_rootfs()
        load = os.getloadavg()[0]
        by_name = {r.name: r for r in env.runtimes}
        print(f"load average {load:.2f}; {'rootless' if args.rootless else 'rootful'}")
        if "ocirt" in by_name:
            labels, offsets = ocirt_steps(env, by_name["ocirt"], args.rounds)
            print(f"\nocirt run /bin/true, --debug steps, median of {args.rounds} (ms since the spawn):\n")
            print("| step | at [ms] | step took [ms] |")
            print("|---|---|---|")
            print("| (the interpreter's start, the CLI's imports, and the first step are in the first line) | | |")
            previous = 0.0
            for label in labels:
                if len(offsets[label]) != args.rounds:
                    continue
                at = statistics.median(offsets[label]) * 1000
                print(f"| {label} | {at:.1f} | {max(at - previous, 0):.1f} |")
                previous = at
        tables = {r.name: strace_milestones(env, r, args.strace_rounds) for r in env.runtimes}
        print(f"\nunder strace -f -tt -T, median of {args.strace_rounds} runs (ms since the runtime's execve):\n")
        print("| milestone | " + " | ".join(tables) + " |")
        print("|---|" + "---|" * len(tables))
        labels = [label for label, _ in MILESTONES] + ["last write to a cgroup.procs ends",
                                                       "time inside cgroup.procs writes (sum)",
                                                       "end (the runtime has exited)"]
        for label in labels:
            cells = []
            for name in tables:
                values = tables[name].get(label)
                cells.append(f"{statistics.median(values) * 1000:.1f}" if values else "-")
            print(f"| {label} | " + " | ".join(cells) + " |")
        print(f"\nload average {os.getloadavg()[0]:.2f} after")
    finally:
        for problem in env.cleanup():
            print(f"bench.timeline: cleanup: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
