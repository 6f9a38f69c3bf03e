"""Inputs whose size a hostile bundle chooses (issue 16, items 7 and 8).

Every range, list and count from a config is bounded before anything is allocated for it (a memoryPolicy
of "0-9876543210" nodes once built a set of ten billion ints and took the machine down), and input the
parser or the kernel can't take (JSON nested 1000 deep, lone surrogates, a file of many megabytes) is a
one-line error. The runtime runs here under a 1 GiB address-space limit, so a missed bound fails the test
with a MemoryError instead of taking the machine: no such config is ever run unbounded.
"""

from __future__ import annotations

import json
import resource
import subprocess

import helpers
import pytest

from security import assert_clear_error, assert_nothing_left

ADDRESS_SPACE = 1 << 30


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


def run_bounded(bundle: helpers.Bundle, config_text: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`run` of the bundle with the runtime's address space capped; ``config_text`` replaces config.json."""
    bundle.write()
    if config_text is not None:
        (bundle.path / "config.json").write_bytes(config_text)
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), "run", "--bundle",
               str(bundle.path), bundle.id]
    identity = {} if bundle.user is None else {"user": bundle.user.uid, "group": bundle.user.gid,
                                               "extra_groups": []}

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    helpers._record_root(bundle.root)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=helpers.base_env(bundle.user), cwd=bundle.user.home if bundle.user else None,
                          preexec_fn=cap_memory, **identity)


def edit(path: tuple, value):
    def apply(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return apply


BOUNDED = {
    "memory-policy-nodes": (edit(("linux", "memoryPolicy"), {"mode": "MPOL_BIND", "nodes": "0-9876543210"}),
                            "$.linux.memoryPolicy.nodes"),
    "cpuset-cpus": (edit(("linux", "resources", "cpu", "cpus"), "0-9876543210"), "cpus"),
    "cpuset-mems": (edit(("linux", "resources", "cpu", "mems"), "0-9876543210"), "mems"),
    "exec-cpu-affinity": (edit(("process", "execCPUAffinity"), {"initial": "0-9876543210"}),
                          "$.process.execCPUAffinity.initial"),
    "console-size": (edit(("process", "consoleSize"), {"height": 1 << 40, "width": 80}), "consoleSize"),
    "additional-gids": (edit(("process", "user", "additionalGids"), list(range(70000))), "65536"),
    "uid-mapping-lines": (edit(("linux", "uidMappings"),
                               [{"containerID": i, "hostID": 100000 + i, "size": 1} for i in range(400)]),
                          "uidMappings"),
    "hook-timeout": (edit(("hooks",), {"createRuntime": [{"path": "/bin/true", "timeout": 1 << 40}]}), "timeout"),
    "arg-too-long": (edit(("process", "args"), ["echo", "x" * (1 << 20)]), "args"),
    "seccomp-rules": (edit(("linux", "seccomp"), {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 0, "value": i, "op": "SCMP_CMP_EQ"}]} for i in range(5000)]}),
        "seccomp"),
}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_a_size_the_bundle_chooses_is_bounded_first(make_bundle, user, name):
    apply, field = BOUNDED[name]
    if user is not None and name.startswith("cpuset"):
        pytest.skip("a rootless container without a delegated cpuset cgroup is refused before the bound")
    bundle = make_bundle(user=user, args=["true"])
    apply(bundle.config)
    result = run_bounded(bundle)
    assert "MemoryError" not in result.stderr, result.stderr
    assert_clear_error(result, field)
    assert result.returncode == 1, result.stderr
    assert_nothing_left(bundle)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


UNPARSABLE = {
    "nested-1000-deep": lambda config: json.dumps(config)[:-1] + ', "org.example.deep": ' + nested(1000) + "}",
    "nested-100000-deep": lambda config: json.dumps(config)[:-1] + ', "org.example.deep": ' + nested(100000) + "}",
    "lone-surrogate-args": lambda config: json.dumps(config).replace('"true"', '"tr\\ud800ue"', 1),
    "lone-surrogate-hostname": lambda config: json.dumps(dict(config, hostname="host")).replace(
        '"hostname": "host"', '"hostname": "ho\\udfffst"'),
    "five-mebibytes": lambda config: json.dumps(dict(config, annotations={"org.example.pad": "x" * (5 << 20)})),
    "not-utf8": lambda config: json.dumps(config).replace('"true"', '"tr\udcffue"', 1),
}


UNPARSABLE_ERRORS = {"nested-1000-deep": "config.json", "nested-100000-deep": "config.json",
                      "lone-surrogate-args": "$.process.args[0]", "lone-surrogate-hostname": "$.hostname",
                      "five-mebibytes": "config.json", "not-utf8": "config.json"}


@pytest.mark.parametrize("name", sorted(UNPARSABLE))
def test_input_the_parser_cannot_take_is_one_line(make_bundle, user, name):
    bundle = make_bundle(user=user, args=["true"])
    text = UNPARSABLE[name](bundle.config).encode("utf-8", "surrogateescape" if name == "not-utf8" else "strict")
    result = run_bounded(bundle, text)
    assert "MemoryError" not in result.stderr and "RecursionError" not in result.stderr, result.stderr
    assert_clear_error(result, UNPARSABLE_ERRORS[name])
    assert result.returncode == 1, result.stderr
    assert_nothing_left(bundle)


def test_a_state_directory_the_caller_cannot_read(make_bundle, unprivileged_user, test_dir, runtime):
    """A rootless caller pointed at root's private --root: one line per command, exit 1, nothing made."""
    root = test_dir / "roots-private"
    root.mkdir(mode=0o700)
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.root = root
    for args in (["list"], ["state", bundle.id], ["delete", "--force", bundle.id],
                 ["run", "--bundle", str(bundle.path), bundle.id]):
        result = bundle.runtime(args)
        assert_clear_error(result, str(root))
        assert result.returncode == 1, (args, result.stderr)
    assert list(root.iterdir()) == []
