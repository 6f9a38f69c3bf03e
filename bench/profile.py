"""Where ocirt's time goes, per command: `python -m bench.profile [--rootless] [--rounds N] [--skip-strace]`.

For create, start, state, kill and delete on real containers (the benchmark's bundles and cleanup), it
prints:
  - floors: the interpreter alone, and each runtime failing fast on a missing container;
  - per command: median wall time, and median import time (the sum of `-X importtime` self times, taken
    in separate runs because importtime slows imports) with the costliest modules;
  - a cProfile of the in-process part of each command (imports included), top functions by own time;
  - `strace -f -c` of every runtime per command: syscalls made, processes forked, programs exec'd.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict

from bench.environment import Environment
from bench.launch import Identity, Runtime, acting_as, call, reap, spawn
from bench.scenarios import wait_stopped

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERPRETER = "/usr/bin/python3"
COMMANDS = ("create", "start", "state", "kill", "delete")


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def timed_spawn(runtime: Runtime, identity: Identity, argv: list[str]) -> tuple[float, int]:
    with acting_as(identity):
        start = time.perf_counter()
        status, _ = reap(spawn(runtime, identity, argv, runtime.output_path("profile")))
        return time.perf_counter() - start, status


def floors(env: Environment, rounds: int) -> list[tuple[str, float, float]]:
    probes: list[tuple[str, Runtime, list[str]]] = []
    host = Runtime("host", INTERPRETER, "", output_dir=env.runtimes[0].output_dir)
    probes.append(("python3 -IS -c pass", host, [INTERPRETER, "-IS", "-c", "pass"]))
    probes.append(("python3 -I -c pass (with site)", host, [INTERPRETER, "-I", "-c", "pass"]))
    for runtime in env.runtimes:
        probes.append((f"{runtime.name} state <missing id>", runtime, runtime.argv("state", "ocirt-bench-none")))
    for runtime in env.runtimes:
        if runtime.name != "ocirt":
            probes.append((f"{runtime.name} --version", runtime, [runtime.binary, "--version"]))
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for label, runtime, argv in probes:
            times[label].append(timed_spawn(runtime, env.identity, argv)[0])
    return [(label, median_ms(times[label]), min(times[label]) * 1000) for label, _, _ in probes]


def state_ladder(env: Environment, rounds: int) -> list[tuple[str, float, float]]:
    """What `ocirt state` costs, one layer at a time: each rung adds one thing to the one before, and all
    rungs run interleaved, so the differences between their fastest runs are the layers' own costs."""
    ocirt = ocirt_runtime(env)
    host = Runtime("host", INTERPRETER, "", output_dir=ocirt.output_dir)
    container_id, bundle = env.new_container(ocirt, "sleep")
    result = call(ocirt, env.identity, "create", "--bundle", bundle, container_id)
    if not result.ok:
        raise RuntimeError(f"create: {result.output().strip()[-300:]}")
    cli_imports = (f"import sys; sys.path.insert(0, {REPO!r}); import os, fcntl; "
                   "import ocirt.cli, ocirt.container, ocirt.state, ocirt.fastjson")
    rungs = [
        ("interpreter: python3 -IS -c pass", host, [INTERPRETER, "-IS", "-c", "pass"]),
        ("+ import os (the launcher's first import)", host, [INTERPRETER, "-IS", "-c", "import os"]),
        ("+ state's imports (cli, container, state, fastjson...)", host, [INTERPRETER, "-IS", "-c", cli_imports]),
        ("ocirt state <missing id> (launcher, parse, lookup)", ocirt, ocirt.argv("state", "ocirt-bench-none")),
        ("ocirt state <created container>", ocirt, ocirt.argv("state", container_id)),
    ]
    for other in env.runtimes:
        if other.name != "ocirt":
            rungs.append((f"{other.name} state <missing id>", other, other.argv("state", "ocirt-bench-none")))
    times: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(rounds):
            for label, runtime, argv in rungs:
                times[label].append(timed_spawn(runtime, env.identity, argv)[0])
    finally:
        call(ocirt, env.identity, "delete", "--force", container_id, tag="cleanup")
        env.drop_bundle(bundle)
    return [(label, min(times[label]) * 1000, median_ms(times[label])) for label, _, _ in rungs]


def import_costs(env: Environment, rounds: int) -> list[tuple[str, float, float]]:
    """Single imports and launcher choices, each as `python3 -IS -c ...` against a bare `-c pass`; fastest
    and median of interleaved runs, as the difference from the bare interpreter (ms)."""
    venv_site = os.path.join(REPO, ".venv", "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                             "site-packages")
    dist = f"/usr/lib/python{sys.version_info[0]}/dist-packages"
    state_path = "import os, fcntl; import ocirt.cli, ocirt.container, ocirt.state, ocirt.fastjson"
    probes = [
        ("bare interpreter", "pass"),
        ("import __future__", "import __future__"),
        ("import re", "import re"),
        ("import enum", "import enum"),
        ("import ctypes", "import ctypes"),
        ("import signal", "import signal"),
        ("import socket", "import socket"),
        ("import json", "import json"),
        ("import ocirt.spec._fastvalidate", f"import sys; sys.path.insert(0, {REPO!r}); import ocirt.spec._fastvalidate"),
        ("import ocirt.syscalls", f"import sys; sys.path.insert(0, {REPO!r}); import ocirt.syscalls"),
        ("state's imports, repo + venv + dist-packages first on sys.path (the launcher today)",
         f"import sys; sys.path[0:0] = [{REPO!r}, {venv_site!r}, {dist!r}]; {state_path}"),
        ("state's imports, only the repo first on sys.path",
         f"import sys; sys.path.insert(0, {REPO!r}); {state_path}"),
    ]
    host = Runtime("host", INTERPRETER, "", output_dir=env.runtimes[0].output_dir)
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for label, code in probes:
            times[label].append(timed_spawn(host, env.identity, [INTERPRETER, "-IS", "-c", code])[0])
    base_min, base_median = min(times["bare interpreter"]), statistics.median(times["bare interpreter"])
    return [(label, (min(times[label]) - base_min) * 1000, (statistics.median(times[label]) - base_median) * 1000)
            for label, _ in probes[1:]]


def ocirt_runtime(env: Environment) -> Runtime:
    for runtime in env.runtimes:
        if runtime.name == "ocirt":
            return runtime
    raise SystemExit("bench.profile needs ocirt among the runtimes")


def cycle(env: Environment, runtime: Runtime, wrap=None) -> dict[str, object]:
    """One create/start/state/kill/delete cycle; ``wrap(command)`` gives a Runtime to use for that command
    (a profiling wrapper) or None for the plain one. Returns each command's Result."""
    container_id, bundle = env.new_container(runtime, "sleep")
    results = {}
    steps = (("create", ("create", "--bundle", bundle, container_id)), ("state", ("state", container_id)),
             ("start", ("start", container_id)), ("kill", ("kill", container_id, "KILL")))
    try:
        for command, args in steps:
            chosen = (wrap(command) if wrap else None) or runtime
            results[command] = call(chosen, env.identity, *args, tag=f"{runtime.name}-{command}")
            if not results[command].ok:
                raise RuntimeError(f"{command}: {results[command].output().strip()[-300:]}")
        wait_stopped(env, runtime, container_id)
        chosen = (wrap("delete") if wrap else None) or runtime
        results["delete"] = call(chosen, env.identity, "delete", container_id, tag=f"{runtime.name}-delete")
    finally:
        call(runtime, env.identity, "delete", "--force", container_id, tag="cleanup")
        env.drop_bundle(bundle)
    return results


def wrapped(runtime: Runtime, wrapper: tuple[str, ...]) -> Runtime:
    return Runtime(runtime.name, runtime.binary, runtime.state_root, runtime.mntns_fd, runtime.output_dir,
                   wrapper)


IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse_imports(text: str) -> dict[str, int]:
    found = {}
    for line in text.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            found[match.group(4)] = int(match.group(1))
    return found


def imports_and_walls(env: Environment, rounds: int) -> dict[str, dict]:
    ocirt = ocirt_runtime(env)
    importing = wrapped(ocirt, (INTERPRETER, "-IS", "-X", "importtime"))
    walls: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, list[float]] = defaultdict(list)
    per_module: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(rounds):
        for command, result in cycle(env, ocirt).items():
            walls[command].append(result.elapsed)
        for command, result in cycle(env, ocirt, lambda _command: importing).items():
            modules = parse_imports(result.output())
            totals[command].append(sum(modules.values()) / 1e6)
            for name, self_us in modules.items():
                per_module[command][name].append(self_us)
    report = {}
    for command in COMMANDS:
        top = sorted(((statistics.median(v) / 1000, name) for name, v in per_module[command].items()),
                     reverse=True)
        own = sum(ms for ms, name in top if name == "ocirt" or name.startswith("ocirt."))
        report[command] = {"wall_ms": median_ms(walls[command]), "wall_min_ms": min(walls[command]) * 1000,
                           "imports_ms": median_ms(totals[command]),
                           "imports_min_ms": min(totals[command]) * 1000,
                           "ocirt_modules_ms": own, "modules": len(top), "top": top[:8]}
    return report


def cprofiles(env: Environment) -> dict[str, list[tuple[float, float, int, str]]]:
    ocirt = ocirt_runtime(env)
    launcher = os.path.join(REPO, "bench", "_cprofile_launcher.py")
    out_dir = os.path.join(env.workdir, "prof")
    os.makedirs(out_dir, exist_ok=True)
    if not env.identity.is_root:
        os.chown(out_dir, env.identity.uid, env.identity.gid)

    def wrap(command: str) -> Runtime:
        return wrapped(ocirt, (INTERPRETER, "-IS", launcher, os.path.join(out_dir, f"{command}.prof")))

    cycle(env, ocirt, wrap)
    report = {}
    for command in COMMANDS:
        stats = pstats.Stats(os.path.join(out_dir, f"{command}.prof"))
        rows = []
        for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            where = filename.replace(REPO + "/", "") if filename != "~" else ""
            rows.append((tottime * 1000, cumtime * 1000, calls, f"{where}:{line}({func})" if where else func))
        rows.sort(reverse=True)
        report[command] = rows[:10]
    return report


STRACE_SUMMARY = re.compile(r"^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(?:(\d+)\s+)?(\w+)$")


def parse_strace_summary(text: str) -> dict[str, int]:
    calls = {}
    for line in text.splitlines():
        match = STRACE_SUMMARY.match(line)
        if match and match.group(6) != "total":
            calls[match.group(6)] = int(match.group(4))
    return calls


def straces(env: Environment) -> dict[str, dict[str, dict]]:
    """One cycle per runtime with every command under `strace -f -c`. `create` is started in the
    background: strace follows the container's init, which outlives `create`, so that trace ends only when
    `kill` has stopped the container (its count then also holds the init's few calls after the fifo, the
    same for every runtime)."""
    strace = shutil.which("strace")
    if strace is None:
        return {}
    report: dict[str, dict[str, dict]] = {}
    out_dir = os.path.join(env.workdir, "strace")
    os.makedirs(out_dir, exist_ok=True)
    if not env.identity.is_root:
        os.chown(out_dir, env.identity.uid, env.identity.gid)
    for runtime in env.runtimes:

        def traced(command: str, runtime=runtime) -> Runtime:
            return wrapped(runtime, (strace, "-f", "-c", "-o", os.path.join(out_dir, f"{runtime.name}-{command}.txt")))

        container_id, bundle = env.new_container(runtime, "sleep")
        try:
            creator = traced("create")
            with acting_as(env.identity):
                create_pid = spawn(creator, env.identity, creator.argv("create", "--bundle", bundle, container_id),
                                   runtime.output_path("strace-create"))
            if not _wait_created(env, runtime, container_id, create_pid):
                raise RuntimeError(f"{runtime.name} create under strace failed")
            for command, args in (("start", (container_id,)), ("state", (container_id,)),
                                  ("kill", (container_id, "KILL"))):
                result = call(traced(command), env.identity, command, *args, tag="strace")
                if not result.ok:
                    raise RuntimeError(f"{runtime.name} {command}: {result.output().strip()[-300:]}")
            reap(create_pid)
            wait_stopped(env, runtime, container_id)
            call(traced("delete"), env.identity, "delete", container_id, tag="strace")
        finally:
            call(runtime, env.identity, "delete", "--force", container_id, tag="cleanup")
            env.drop_bundle(bundle)
        report[runtime.name] = {}
        for command in COMMANDS:
            with open(os.path.join(out_dir, f"{runtime.name}-{command}.txt")) as f:
                calls = parse_strace_summary(f.read())
            forks = sum(calls.get(name, 0) for name in ("clone", "clone3", "fork", "vfork"))
            top = sorted(calls.items(), key=lambda item: -item[1])[:6]
            report[runtime.name][command] = {"syscalls": sum(calls.values()), "forks": forks,
                                             "execs": calls.get("execve", 0), "top": top}
    return report


def _wait_created(env: Environment, runtime: Runtime, container_id: str, create_pid: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = call(runtime, env.identity, "state", container_id, tag="poll")
        if result.ok and '"created"' in result.output():
            return True
        finished, _ = os.waitpid(create_pid, os.WNOHANG)
        if finished:
            return False
        time.sleep(0.01)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--rootless", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runtimes", default="ocirt,runc,crun")
    parser.add_argument("--skip-strace", action="store_true")
    args = parser.parse_args(argv)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    env = Environment(repo=REPO, rootless=args.rootless, runtime_names=args.runtimes.split(","))
    try:
        env.build_rootfs()
        print(f"profile: {'rootless' if args.rootless else 'rootful'}, {args.rounds} rounds, "
              f"load {os.getloadavg()[0]:.2f}")
        print("\n## floors (median wall and fastest, ms)")
        for label, ms, fastest in floors(env, args.rounds):
            print(f"  {label:40s} {ms:7.2f}  (min {fastest:.2f})")
        print("\n## the cost ladder of `ocirt state` (fastest and median of interleaved runs, ms)")
        previous = None
        for label, fastest, middle in state_ladder(env, max(args.rounds * 2, 20)):
            step = f"  (+{fastest - previous:.2f})" if previous is not None and label.startswith(("+", "ocirt")) else ""
            print(f"  {label:58s} {fastest:6.2f}  median {middle:6.2f}{step}")
            previous = fastest
        print("\n## single imports and launcher choices: cost over a bare `python3 -IS -c pass` (fastest / median, ms)")
        for label, fastest, middle in import_costs(env, max(args.rounds * 2, 20)):
            print(f"  {label:88s} {fastest:6.2f} / {middle:6.2f}")
        print("\n## ocirt per command: wall, imports (sum of -X importtime self times), costliest modules")
        for command, row in imports_and_walls(env, args.rounds).items():
            print(f"  {command:7s} wall {row['wall_ms']:6.1f} ms (min {row['wall_min_ms']:.1f})  imports "
                  f"{row['imports_ms']:5.1f} ms (min {row['imports_min_ms']:.1f}) "
                  f"({row['modules']} modules, ocirt's own {row['ocirt_modules_ms']:.1f} ms)")
            print("          " + ", ".join(f"{name} {ms:.2f}" for ms, name in row["top"]))
        print("\n## cProfile of ocirt's process (own time / cumulative ms, calls)")
        for command, rows in cprofiles(env).items():
            print(f"  {command}:")
            for tottime, cumtime, calls, where in rows:
                print(f"    {tottime:6.2f} {cumtime:7.2f} {calls:5d}  {where}")
        if not args.skip_strace:
            print("\n## strace -f -c: syscalls / forks / execs per command")
            for name, commands in straces(env).items():
                for command, row in commands.items():
                    top = ", ".join(f"{n} {c}" for n, c in row["top"])
                    print(f"  {name:5s} {command:7s} {row['syscalls']:5d} syscalls, {row['forks']} forks, "
                          f"{row['execs']} execve; {top}")
    finally:
        for problem in env.cleanup():
            print(f"profile: cleanup: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
