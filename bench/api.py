"""100 containers through `import ocirt` (one Runtime, so one helper process, no `ocirt` per container)
against 100 `runc run`s of the same bundles, interleaved block by block.

A block runs in a worker process as the bench's identity (rootless: the bench user): it starts a Runtime
(timed on its own: the helper's start, paid once per program), then for each bundle create, start, wait,
delete, which is what `runc run` does; the block's wall time excludes the worker's own interpreter start."""

from __future__ import annotations

import json
import os
import sys
import time

from bench.environment import Environment
from bench.launch import Runtime, acting_as, call, reap, spawn
from bench.scenarios import Samples, _describe, rotation

WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
job = json.load(open(sys.argv[2]))
started = time.perf_counter()
import ocirt
runtime = ocirt.Runtime(job["root"])
runtime.state  # noqa: B018
helper = time.perf_counter() - started
error = ""
start = time.perf_counter()
try:
    for container_id, bundle in job["containers"]:
        runtime.create(container_id, bundle)
        runtime.start(container_id)
        code = runtime.wait(container_id, timeout=30)
        runtime.delete(container_id, force=code is None)
        if code != 0:
            error = f"{container_id}: exit {code}"
            break
except ocirt.errors.OcirtError as err:
    error = str(err)
wall = time.perf_counter() - start
runtime.close()
json.dump({"helper": helper, "wall": wall, "error": error}, open(sys.argv[3], "w"))
"""


def measure_api_runs(env: Environment, blocks: int, block_size: int) -> dict[str, Samples]:
    runc = next((r for r in env.runtimes if r.name == "runc"), None)
    ocirt = next((r for r in env.runtimes if r.name == "ocirt"), None)
    samples = Samples(f"100 containers through the API vs runc run ({blocks}x{block_size})", "s")
    helper = Samples("API helper process start", "ms")
    if ocirt is None:
        return {"api100": samples, "api_helper": helper}
    api = Runtime("ocirt", sys.executable, os.path.join(os.path.dirname(ocirt.state_root), "ocirt-api"),
                  output_dir=ocirt.output_dir)
    contenders = [api] + ([runc] if runc is not None else [])
    scale = 100 / block_size
    for index in range(blocks):
        for runtime in rotation(contenders, index):
            prepared = [env.new_container(runtime, "true") for _ in range(block_size)]
            if runtime is api:
                wall, started, error = _api_block(env, api, prepared, index)
                helper.add("ocirt", None if started is None else started * 1000)
            else:
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
    return {"api100": samples, "api_helper": helper}


def _api_block(env: Environment, api: Runtime, prepared: list[tuple[str, str]], index: int):
    job = os.path.join(env.workdir, f"api-job-{index}.json")
    result = os.path.join(env.workdir, f"api-result-{index}.json")
    with open(job, "w") as f:
        json.dump({"root": api.state_root, "containers": prepared}, f)
    if not env.identity.is_root:
        os.chown(env.workdir, env.identity.uid, env.identity.gid)
    argv = [sys.executable, "-IS", "-c", WORKER, env.repo, job, result]
    with acting_as(env.identity):
        status, _ = reap(spawn(api, env.identity, argv, api.output_path("api")))
    try:
        with open(result) as f:
            outcome = json.load(f)
    except (OSError, ValueError):
        with open(api.output_path("api"), errors="replace") as f:
            tail = f.read().strip().splitlines()
        return 0.0, None, f"API worker exit {status}: {tail[-1] if tail else '(no output)'}"
    return outcome["wall"], outcome["helper"], outcome["error"]
