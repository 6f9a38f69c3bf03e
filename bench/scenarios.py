"""The measurements. Each one runs in rounds; a round gives every runtime one turn, in an order that rotates
from round to round, so no runtime always goes first (or always follows the same neighbour)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from bench.environment import Environment
from bench.launch import Result, Runtime, acting_as, call, reap, spawn


@dataclass
class Samples:
    """One metric: per runtime, one value per round (None where that runtime's turn failed)."""

    name: str
    unit: str  # "ms", "s" or "MiB"
    values: dict[str, list[float | None]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, runtime: str, value: float | None, error: str = "") -> None:
        self.values.setdefault(runtime, []).append(value)
        self.failures.setdefault(runtime, 0)
        if value is None:
            self.failures[runtime] += 1
            if error and runtime not in self.errors:
                self.errors[runtime] = error

    def add_failure(self, runtime: str, count: int, error: str) -> None:
        self.failures[runtime] = self.failures.get(runtime, 0) + count
        if count and error and runtime not in self.errors:
            self.errors[runtime] = error


def rotation(runtimes: list[Runtime], round_index: int) -> list[Runtime]:
    shift = round_index % len(runtimes)
    return runtimes[shift:] + runtimes[:shift]


def _describe(result: Result) -> str:
    text = result.output().strip().splitlines()
    return f"exit {result.status}: {text[-1] if text else '(no output)'}"


def _check(result: Result) -> tuple[float | None, str]:
    return (result.elapsed * 1000, "") if result.ok else (None, _describe(result))


# -- run of /bin/true -----------------------------------------------------------------------------------------
def measure_run(env: Environment, rounds: int) -> Samples:
    samples = Samples("run /bin/true", "ms")
    for index in range(rounds):
        for runtime in rotation(env.runtimes, index):
            container_id, bundle = env.new_container(runtime, "true")
            value, error = _check(call(runtime, env.identity, "run", "--bundle", bundle, container_id))
            samples.add(runtime.name, value, error)
            env.drop_bundle(bundle)
    return samples


def measure_sequential_runs(env: Environment, blocks: int, block_size: int) -> Samples:
    """Blocks of ``block_size`` back-to-back runs, interleaved block by block; a value is a block's wall
    time scaled to 100 runs, so the medians read as "100 sequential runs"."""
    samples = Samples(f"100 sequential runs ({blocks}x{block_size})", "s")
    scale = 100 / block_size
    for index in range(blocks):
        for runtime in rotation(env.runtimes, index):
            prepared = [env.new_container(runtime, "true") for _ in range(block_size)]
            error = ""
            start = time.perf_counter()
            for container_id, bundle in prepared:
                result = call(runtime, env.identity, "run", "--bundle", bundle, container_id)
                if not result.ok:
                    error = _describe(result)
                    break
            wall = time.perf_counter() - start
            samples.add(runtime.name, None if error else wall * scale, error)
            for _, bundle in prepared:
                env.drop_bundle(bundle)
    return samples


# -- one command at a time ------------------------------------------------------------------------------------
CYCLE_COMMANDS = ("create", "start", "state", "kill", "delete")


# The interpreter's floor: what any command of a CPython runtime costs before its first own import.
FLOOR_ARGV = ["/usr/bin/python3", "-IS", "-c", "import os"]


def _time_floor(env: Environment) -> float | None:
    floor = Runtime("floor", FLOOR_ARGV[0], "", output_dir=env.runtimes[0].output_dir)
    with acting_as(env.identity):
        start = time.perf_counter()
        status, _ = reap(spawn(floor, env.identity, FLOOR_ARGV, floor.output_path()))
        elapsed = time.perf_counter() - start
    return elapsed * 1000 if status == 0 else None


def measure_cycle(env: Environment, rounds: int) -> dict[str, Samples]:
    """create, start, state, kill, delete of a `sleep` container, each timed on its own. Every command is
    interleaved across the runtimes (create A, create B, create C, start A, ...). Between kill and delete
    the bench waits, untimed, until the runtime reports the container stopped."""
    samples = {command: Samples(command, "ms") for command in CYCLE_COMMANDS}
    for index in range(rounds):
        order = rotation(env.runtimes, index)
        live: dict[str, tuple[str, str]] = {}
        for runtime in order:
            container_id, bundle = env.new_container(runtime, "sleep")
            value, error = _check(call(runtime, env.identity, "create", "--bundle", bundle, container_id))
            samples["create"].add(runtime.name, value, error)
            if value is not None:
                live[runtime.name] = (container_id, bundle)
            else:
                _force_delete(env, runtime, container_id)
                env.drop_bundle(bundle)
        for command, args in (("start", ()), ("state", ()), ("kill", ("KILL",))):
            for runtime in order:
                if runtime.name not in live:
                    continue
                container_id = live[runtime.name][0]
                value, error = _check(call(runtime, env.identity, command, container_id, *args))
                samples[command].add(runtime.name, value, error)
                if value is None:
                    _force_delete(env, runtime, container_id)
                    env.drop_bundle(live.pop(runtime.name)[1])
            samples[command].add("floor", _time_floor(env))
        for runtime in order:
            if runtime.name in live:
                wait_stopped(env, runtime, live[runtime.name][0])
        for runtime in order:
            if runtime.name not in live:
                continue
            container_id, bundle = live.pop(runtime.name)
            value, error = _check(call(runtime, env.identity, "delete", container_id))
            samples["delete"].add(runtime.name, value, error)
            if value is None:
                _force_delete(env, runtime, container_id)
            env.drop_bundle(bundle)
        samples["delete"].add("floor", _time_floor(env))
    return samples


def wait_stopped(env: Environment, runtime: Runtime, container_id: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = call(runtime, env.identity, "state", container_id, tag="poll")
        if result.ok:
            try:
                if json.loads(result.output()).get("status") == "stopped":
                    return True
            except ValueError:
                pass
        time.sleep(0.002)
    return False


def _force_delete(env: Environment, runtime: Runtime, container_id: str) -> None:
    call(runtime, env.identity, "delete", "--force", container_id, tag="cleanup")


# -- 20 in parallel -------------------------------------------------------------------------------------------
def measure_parallel(env: Environment, rounds: int, count: int) -> dict[str, Samples]:
    """``count`` containers per runtime: every `create` launched at once, each container's `start` launched
    as soon as its `create` exits; then every `delete --force` at once. Wall times, and every failed call."""
    up = Samples(f"parallel {count}: create+start wall", "ms")
    down = Samples(f"parallel {count}: delete wall", "ms")
    total = Samples(f"parallel {count}: total wall", "ms")
    for index in range(rounds):
        for runtime in rotation(env.runtimes, index):
            prepared = [env.new_container(runtime, "true") for _ in range(count)]
            with acting_as(env.identity):
                failures, error, up_wall = _parallel_create_start(env, runtime, prepared)
                down_failures, down_error, down_wall = _parallel_delete(env, runtime, prepared)
            up.add(runtime.name, up_wall * 1000)
            up.add_failure(runtime.name, failures, error)
            down.add(runtime.name, down_wall * 1000)
            down.add_failure(runtime.name, down_failures, down_error)
            total.add(runtime.name, (up_wall + down_wall) * 1000)
            total.add_failure(runtime.name, failures + down_failures, error or down_error)
            for _, bundle in prepared:
                env.drop_bundle(bundle)
    return {"up": up, "down": down, "total": total}


def _parallel_create_start(env: Environment, runtime: Runtime,
                           prepared: list[tuple[str, str]]) -> tuple[int, str, float]:
    pending: dict[int, tuple[str, str]] = {}  # pid -> (step, container id)
    failures, error = 0, ""
    start = time.perf_counter()
    for container_id, bundle in prepared:
        argv = runtime.argv("create", "--bundle", bundle, container_id)
        pending[spawn(runtime, env.identity, argv, runtime.output_path(container_id))] = ("create", container_id)
    while pending:
        pid, status, _usage = os.wait4(-1, 0)
        if pid not in pending:
            continue
        step, container_id = pending.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            failures += 1
            error = error or _output_tail(runtime.output_path(container_id), step)
            continue
        if step == "create":
            argv = runtime.argv("start", container_id)
            pending[spawn(runtime, env.identity, argv, runtime.output_path(container_id))] = ("start", container_id)
    return failures, error, time.perf_counter() - start


def _parallel_delete(env: Environment, runtime: Runtime, prepared: list[tuple[str, str]]) -> tuple[int, str, float]:
    start = time.perf_counter()
    pids = {spawn(runtime, env.identity, runtime.argv("delete", "--force", container_id),
                  runtime.output_path(container_id)): container_id for container_id, _ in prepared}
    failures, error = 0, ""
    for pid, container_id in pids.items():
        status, _ = reap(pid)
        if status != 0:
            failures += 1
            error = error or _output_tail(runtime.output_path(container_id), "delete --force")
    return failures, error, time.perf_counter() - start


def _output_tail(path: str, step: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
    except OSError:
        lines = []
    return f"{step}: {lines[-1] if lines else '(no output)'}"


# -- peak memory ----------------------------------------------------------------------------------------------
TIME_BINARY = "/usr/bin/time"


def measure_memory(env: Environment, rounds: int) -> Samples:
    """Peak RSS of `run /bin/true`: GNU time's %M, which is ru_maxrss from wait4 on the runtime process,
    i.e. the largest resident set reached by the runtime process or any descendant it reaped (for all three
    runtimes that includes the container's init and the processes between). It is a per-process maximum,
    not a sum over processes alive at once. `time` sits in between because a process's high-water mark
    survives execve: spawned straight from the benchmark, the runtime would inherit the benchmark's own
    RSS; spawned by `time` (about 2 MiB), it inherits only that, below every runtime's own peak."""
    samples = Samples("peak RSS of run", "MiB")
    if not os.access(TIME_BINARY, os.X_OK):
        return samples
    for index in range(rounds):
        for runtime in rotation(env.runtimes, index):
            container_id, bundle = env.new_container(runtime, "true")
            report = os.path.join(env.workdir, "out", f"{runtime.name}-rss")
            argv = [TIME_BINARY, "-f", "%M", "-o", report, *runtime.argv("run", "--bundle", bundle, container_id)]
            with acting_as(env.identity):
                status, _ = reap(spawn(runtime, env.identity, argv, runtime.output_path()))
            if status != 0:
                samples.add(runtime.name, None, _output_tail(runtime.output_path(), "run under time"))
            else:
                with open(report) as f:
                    kib = int(f.read().split()[-1])
                samples.add(runtime.name, kib / 1024)
            env.drop_bundle(bundle)
    return samples
