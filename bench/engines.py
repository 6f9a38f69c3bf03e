"""The engine rows of issue 18: `python -m bench.engines [--rounds N] [--engines podman,ctr,docker]`.

`podman run --rm`, `ctr run --rm` and `docker run --rm` of `true` in the busybox image, each engine once
with runc and once with ocirt, interleaved round by round (the order rotates), timed from the client's
spawn to its exit. The target is ocirt <= 1.0x the same engine with runc. As root.

The engines are the test suite's own (tests/engines/engine_harness.py): private storage, state, sockets
and daemons under one temporary directory, cgroups named after it, everything stopped by pid and checked
for leftovers at the end. Exit status: 0 when every row meets the target, 1 on a miss, 2 when it can't run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNC = "/usr/sbin/runc"
TARGET = 1.0


def _harness():
    for path in (REPO / "tests", REPO / "tests" / "engines"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import engine_harness
    import helpers

    return engine_harness, helpers


def _timed(eh, command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = eh.run(command, env=env, check=False, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"failed: {result.describe()}")
    return elapsed * 1000


def measure(engines: list[str], rounds: int) -> tuple[dict[tuple[str, str], list[float]], list[str]]:
    eh, helpers = _harness()
    ocirt = str(REPO / "bin" / "ocirt")
    base = Path(tempfile.mkdtemp(prefix="ocirt-bench-engines-", dir="/tmp"))
    os.chmod(base, 0o755)
    samples: dict[tuple[str, str], list[float]] = {}
    closers: list = []
    problems: list[str] = []
    try:
        podman = eh.Podman(base / "podman", ocirt)
        closers.append(podman.close)
        podman.import_image(eh.write_rootfs_tar(_rootfs(base), base / "rootfs.tar"))
        commands: dict[tuple[str, str], tuple[list[str], dict[str, str]]] = {}
        for runtime_name, runtime in (("runc", RUNC), ("ocirt", ocirt)):
            if "podman" in engines:
                commands[("podman", runtime_name)] = (
                    ["podman", "--runtime", runtime, *podman.run_args(), "--rm", eh.IMAGE, "true"], podman.env)
        if "ctr" in engines or "docker" in engines:
            archive = base / "image.docker-archive.tar"
            podman("save", "--format", "docker-archive", "--output", str(archive), eh.IMAGE)
            os.chmod(archive, 0o644)
            containerd = eh.Containerd(base / "containerd", ocirt)
            closers.insert(0, containerd.close)
            containerd.ctr("images", "import", str(archive))
            if "ctr" in engines:
                address = ["ctr", "--address", str(containerd.socket), "--namespace", containerd.namespace]
                for runtime_name, runtime in (("runc", RUNC), ("ocirt", ocirt)):
                    commands[("ctr", runtime_name)] = (
                        [*address, "run", "--rm", "--runc-binary", runtime, "--runc-root",
                         str(containerd.runtime_root), *containerd.fifo_args(), eh.IMAGE, "__ID__", "true"],
                        containerd.env)
            if "docker" in engines:
                docker = eh.Docker(base / "docker", ocirt, containerd)
                closers.insert(0, docker.close)
                docker("load", "--input", str(archive))
                for runtime_name, flag in (("runc", []), ("ocirt", ["--runtime", eh.RUNTIME_NAME])):
                    commands[("docker", runtime_name)] = (
                        [eh.DOCKER_CLIENT, "run", "--rm", "--network", "none", *flag, eh.IMAGE, "true"], docker.env)
        keys = list(commands)
        # One warm-up run each: image layers, page cache, the daemons' first-call costs.
        for round_index in range(rounds + 1):
            order = keys[round_index % len(keys):] + keys[:round_index % len(keys)]
            for key in order:
                command, env = commands[key]
                command = [f"bench-{round_index}-{key[1]}" if part == "__ID__" else part for part in command]
                elapsed = _timed(eh, command, env)
                if round_index:
                    samples.setdefault(key, []).append(elapsed)
    finally:
        for close in closers:
            try:
                problems += close()
            except Exception as err:  # noqa: BLE001 - every engine must still be stopped
                problems.append(f"closing an engine: {err}")
        problems += eh.leftovers(base) + eh.remove_engine_cgroups()
        shutil.rmtree(base, ignore_errors=True)
    return samples, problems


def _rootfs(base: Path) -> Path:
    """The busybox rootfs the benchmark's bundles use (the one README's demo runs)."""
    sys.path.insert(0, str(REPO))
    from ocirt.bundle import build_rootfs

    return build_rootfs(base / "rootfs")


def render(samples: dict[tuple[str, str], list[float]]) -> tuple[str, bool]:
    lines = ["| engine, `run --rm ... true` | with runc [ms] | with ocirt [ms] | ocirt / runc | target |",
             "|---|---|---|---|---|"]
    met = True
    for engine in ("podman", "ctr", "docker"):
        if (engine, "runc") not in samples:
            continue
        runc, ocirt = (statistics.median(samples[(engine, name)]) for name in ("runc", "ocirt"))
        ratios = [o / r for o, r in zip(samples[(engine, "ocirt")], samples[(engine, "runc")], strict=True)]
        ratio = statistics.median(ratios)
        ok = ratio <= TARGET
        met &= ok
        lines.append(f"| {engine} | {runc:.0f} | {ocirt:.0f} | {ratio:.2f}x | <= {TARGET:.1f}x "
                     f"{'met' if ok else 'MISSED'} |")
    return "\n".join(lines), met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engines", default="podman,ctr,docker")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.engines: run it as root (it starts containerd and dockerd)", file=sys.stderr)
        return 2
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    eh, _ = _harness()
    missing = [tool for engine in engines for tool in eh.TOOLS["containerd" if engine == "ctr" else engine]
               if shutil.which(tool) is None]
    if missing:
        print(f"bench.engines: missing {', '.join(sorted(set(missing)))}: run scripts/engines-setup",
              file=sys.stderr)
        return 2
    try:
        samples, problems = measure(engines, args.rounds)
    except (RuntimeError, AssertionError) as err:
        print(f"bench.engines: {err}", file=sys.stderr)
        return 2
    table, met = render(samples)
    print(f"medians of {args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.2f}\n")
    print(table)
    for problem in problems:
        print(f"bench.engines: left behind (removed): {problem}", file=sys.stderr)
    return 0 if met and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
