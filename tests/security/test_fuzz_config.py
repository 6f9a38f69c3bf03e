"""Mutated configs through ``create`` + ``delete --force``: type changes, missing keys, huge numbers, odd
strings (lone surrogates among them), lists nested past the 64 levels a config may have, cpu and node ranges no
kernel has ids for, and unknown enum values anywhere in a full config. Whatever the mutation, the runtime either
creates a container (which is then deleted) or fails with a clear error: never a Python traceback,
never an "internal error", and nothing left behind (state dir, cgroup, mount, process).

``OCIRT_FUZZ_EXAMPLES=N`` runs N random examples per mode instead of the fixed, repeatable 40 + 20.

Mutations that could harm the machine running the suite even from a correct runtime are not drawn:
``root.path`` and ``linux.cgroupsPath`` only get values that stay inside the test's own objects, mount
sources never name a host path outside the bundle (a bind of the host's / at /dev would have the runtime
make device nodes there), and ``linux.netDevices`` (which moves host interfaces) is left alone."""

from __future__ import annotations

import copy
import json
import os
import secrets

import helpers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security import own_rootfs_bundle

# Paths into the base config (below) where a mutation lands; list indices pick the first elements.
PATHS: list[tuple] = [
    ("ociVersion",), ("process",), ("process", "args"), ("process", "args", 0), ("process", "env"),
    ("process", "env", 0), ("process", "cwd"), ("process", "terminal"), ("process", "user"),
    ("process", "user", "uid"), ("process", "user", "gid"), ("process", "user", "additionalGids"),
    ("process", "user", "umask"), ("process", "capabilities"), ("process", "capabilities", "bounding"),
    ("process", "capabilities", "effective", 0), ("process", "capabilities", "ambient"),
    ("process", "rlimits"), ("process", "rlimits", 0, "type"), ("process", "rlimits", 0, "hard"),
    ("process", "rlimits", 0, "soft"), ("process", "noNewPrivileges"), ("process", "oomScoreAdj"),
    ("process", "scheduler"), ("process", "scheduler", "policy"), ("process", "ioPriority"),
    ("process", "ioPriority", "class"), ("process", "apparmorProfile"), ("process", "selinuxLabel"),
    ("process", "consoleSize"), ("process", "execCPUAffinity"),
    ("root",), ("root", "readonly"), ("hostname",), ("domainname",),
    ("mounts",), ("mounts", 0), ("mounts", 0, "destination"), ("mounts", 1, "type"), ("mounts", 1, "source"),
    ("mounts", 1, "options"), ("mounts", 1, "options", 0), ("mounts", 2, "options", 3), ("mounts", 7),
    ("mounts", 7, "destination"), ("mounts", 7, "options"), ("mounts", 7, "uidMappings"),
    ("hooks",), ("hooks", "prestart"), ("hooks", "createRuntime", 0, "args"), ("hooks", "poststart", 0, "timeout"),
    ("hooks", "createRuntime", 0, "env"),
    ("annotations",), ("annotations", "org.example.key"),
    ("linux",), ("linux", "namespaces", 0), ("linux", "namespaces", 0, "type"), ("linux", "namespaces", 1, "path"),
    ("linux", "maskedPaths"), ("linux", "maskedPaths", 0), ("linux", "readonlyPaths", 0),
    ("linux", "resources"), ("linux", "resources", "memory"), ("linux", "resources", "memory", "limit"),
    ("linux", "resources", "memory", "swap"), ("linux", "resources", "cpu", "shares"),
    ("linux", "resources", "cpu", "cpus"), ("linux", "resources", "pids", "limit"),
    ("linux", "resources", "devices", 0), ("linux", "resources", "devices", 0, "access"),
    ("linux", "resources", "blockIO"), ("linux", "resources", "hugepageLimits"),
    ("linux", "devices"), ("linux", "devices", 0, "type"), ("linux", "devices", 0, "major"),
    ("linux", "devices", 0, "path"), ("linux", "devices", 0, "fileMode"),
    ("linux", "sysctl"), ("linux", "sysctl", "kernel.msgmax"),
    ("linux", "seccomp"), ("linux", "seccomp", "defaultAction"), ("linux", "seccomp", "architectures"),
    ("linux", "seccomp", "flags"), ("linux", "seccomp", "syscalls", 0, "action"),
    ("linux", "seccomp", "syscalls", 0, "names"), ("linux", "seccomp", "syscalls", 0, "args"),
    ("linux", "seccomp", "syscalls", 0, "errnoRet"),
    ("linux", "rootfsPropagation"), ("linux", "mountLabel"), ("linux", "personality"),
    ("linux", "timeOffsets"), ("linux", "intelRdt"), ("linux", "uidMappings"),
]

ODD_STRINGS = ["", " ", "\n", "\x00", "/a\x00b", "\x01", "a\tb", "../../..", "//", "ü", "💥", "-1", "0x10", "1e309", "null",
               "SCMP_ACT_UNKNOWN", "RLIMIT_BOGUS", "CAP_BOGUS", "bogus", "x" * 5000, "/" * 300, "%s%n",
               "$(reboot)", "'\"", "rw,ro,bind", "=", "a=b=c",
               # Lone surrogates (valid JSON escapes, no valid Unicode) and ranges no kernel has ids for.
               "\ud800", "a\udfffb", "0-9876543210", "0-4294967296,1", "9" * 40]

def deep(depth: int, leaf=0):
    """A list ``depth`` levels deep, past the 64 levels a config may have."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


HUGE_NUMBERS = [-1, -(2 ** 31), 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 2 ** 64 + 1,
                10 ** 30, -(10 ** 30)]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HUGE_NUMBERS), st.integers(-10, 70000),
    st.sampled_from([deep(65), deep(300), deep(300, {"type": "x"})]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_STRINGS), st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["type", "path", "x", ""]) | st.text(max_size=5),
                                                 inner, max_size=3)), max_leaves=6)

DELETE = object()
# A mutation deletes the key, puts a value of any type there, or (more often, to get past the schema into
# the runtime's own checks) an odd value of the type the key had.
mutation = st.tuples(st.sampled_from(PATHS), st.sampled_from(["delete", "any", "typed", "typed", "typed"]))


def typed_values(original) -> st.SearchStrategy:
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.one_of(st.sampled_from(HUGE_NUMBERS), st.integers(-5, 70000), st.just(original))
    if isinstance(original, str):
        return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=12), st.just(original + original))
    if isinstance(original, list):
        return st.one_of(st.just([]), st.just(original * 3), st.lists(st.sampled_from(original), max_size=4)
                         if original else st.just([]), st.lists(st.sampled_from(ODD_STRINGS), max_size=3))
    if isinstance(original, dict):
        return st.one_of(st.just({}), st.just(dict(original, unknownKey=1)),
                         st.just({k: v for k, v in list(original.items())[1:]}))
    return values


def value_at(config, path: tuple):
    node = config
    for key in path:
        if isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node

# root.path stays inside the bundle, or names nothing.
root_values = st.sampled_from([DELETE] * 10 + ["", "missing", "rootfs/bin/busybox", "a\x00b", "x" * 5000,
                                               "rootfs/", "./rootfs", 5])


def base_config(config: dict, bundle: helpers.Bundle) -> dict:
    """The default config plus one of everything the mutations aim at."""
    config = copy.deepcopy(config)
    config["mounts"].append({"destination": "/mnt/fuzz", "type": "tmpfs", "source": "tmpfs",
                             "options": ["mode=755", "size=1m"]})
    config["hooks"] = {"createRuntime": [{"path": "/bin/true", "args": ["true"], "env": ["A=1"]}],
                       "poststart": [{"path": "/bin/true", "timeout": 5}]}
    config["annotations"] = {"org.example.key": "value"}
    linux = config["linux"]
    linux.setdefault("resources", {}).update({"memory": {"limit": 256 * 2 ** 20, "swap": 256 * 2 ** 20},
                               "cpu": {"shares": 512}, "pids": {"limit": 100}})
    linux["devices"] = [{"path": "/dev/full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o666}]
    linux["sysctl"] = {"kernel.msgmax": "9000"}
    linux["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    config["process"]["scheduler"] = {"policy": "SCHED_OTHER"}
    config["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 4}
    return config


def mutate(config: dict, path: tuple, value) -> None:
    """Set (or delete) ``path`` in ``config``, creating missing dict levels; a path through something
    that is no longer a container (an earlier mutation changed its type) is skipped."""
    node = config
    for key, next_key in zip(path, path[1:], strict=False):
        if isinstance(node, dict):
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [] if isinstance(next_key, int) else {}
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int):
            if key >= len(node):
                node.append([] if isinstance(next_key, int) else {})
                key = len(node) - 1
            if not isinstance(node[key], (dict, list)):
                node[key] = [] if isinstance(next_key, int) else {}
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        if value is DELETE:
            if last < len(node):
                del node[last]
        elif last < len(node):
            node[last] = value
        else:
            node.append(value)


def keep_safe(config: dict, base: dict, bundle: helpers.Bundle, root_value) -> None:
    """Put back what must not be fuzzed freely (see the module's docstring)."""
    if isinstance(config.get("root"), dict):
        config["root"]["path"] = "rootfs" if root_value is DELETE else root_value
    linux = config.get("linux")
    if isinstance(linux, dict):
        linux.pop("netDevices", None)
        if bundle.user is None:
            linux["cgroupsPath"] = helpers.cgroups_path(bundle.id)
        else:
            linux.pop("cgroupsPath", None)
    base_sources = {m.get("source") for m in base["mounts"]}
    for mount in config.get("mounts") if isinstance(config.get("mounts"), list) else []:
        if isinstance(mount, dict) and isinstance(mount.get("source"), str) and mount["source"] not in base_sources:
            if "\0" in mount["source"]:
                continue
            source = os.path.realpath(os.path.join(bundle.path, mount["source"]))
            if os.path.exists(source) and not source.startswith(str(bundle.path) + "/"):
                mount["source"] = "none"


def assert_clean_outcome(result, bundle: helpers.Bundle, config: dict) -> None:
    shown = json.dumps(config)[:3000]
    assert "Traceback" not in result.stderr, f"{result.stderr}\nconfig: {shown}"
    assert "internal error" not in result.stderr, f"{result.stderr}\nconfig: {shown}"
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines, f"failed without a message\nconfig: {shown}"
        assert len(lines[-1]) < 20000, "the error line repeats an enormous input"


def assert_no_leftovers(bundle: helpers.Bundle, config: dict) -> None:
    shown = json.dumps(config)[:3000]
    assert not (bundle.root / bundle.id).exists(), f"state dir left\nconfig: {shown}"
    assert helpers.find_cgroup_dirs([bundle.id]) == [], f"cgroup left\nconfig: {shown}"
    assert helpers.mounts_mentioning([bundle.path]) == [], f"mount left\nconfig: {shown}"
    assert helpers.processes_using([bundle.path]) == {}, f"process left\nconfig: {shown}"


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_mutated_configs_create_or_fail_cleanly(make_bundle, unprivileged_user, leak_tracker, rootless):
    user = unprivileged_user if rootless else None
    bundle = own_rootfs_bundle(make_bundle, user, args=["sleep", "30"])
    base = base_config(bundle.config, bundle)
    if rootless:
        # A rootless user can't have cgroup limits; the ipc sysctl stays (its ipc namespace is its own).
        base["linux"].pop("resources", None)
    original_id = bundle.id
    outcomes = {"created": 0, "refused": 0}

    deep = int(os.environ.get("OCIRT_FUZZ_EXAMPLES", "0"))
    @settings(max_examples=deep or (40 if not rootless else 20), deadline=None, derandomize=not deep, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
    @given(mutations=st.lists(mutation, min_size=1, max_size=3),
           root_value=root_values,
           data=st.data())
    def attempt(mutations, root_value, data):
        bundle.id = f"{original_id}-{secrets.token_hex(3)}"
        leak_tracker.container_ids.add(bundle.id)
        bundle.config = copy.deepcopy(base)
        for path, kind in mutations:
            if kind == "delete":
                value = DELETE
            elif kind == "any":
                value = data.draw(values)
            else:
                value = data.draw(typed_values(value_at(bundle.config, path)))
            mutate(bundle.config, path, value)
        keep_safe(bundle.config, base, bundle, root_value)
        config = bundle.config
        result = bundle.create(timeout=60)
        try:
            assert_clean_outcome(result, bundle, config)
            outcomes["created" if result.returncode == 0 else "refused"] += 1
        finally:
            deleted = bundle.delete(force=True, timeout=60)
        assert "Traceback" not in deleted.stderr and "internal error" not in deleted.stderr, deleted.stderr
        assert_no_leftovers(bundle, config)

    try:
        attempt()
    finally:
        bundle.id = original_id
    assert outcomes["created"] > 0 and outcomes["refused"] > 0, outcomes


def _set(path: tuple, value):
    def edit(config: dict) -> None:
        mutate(config, path, value)
    return edit


# Configs the fuzzer once turned into a traceback, an internal error or a silent failure.
FOUND = {
    "device-major-negative": (_set(("linux", "devices"), [{"path": "/dev/x", "type": "c", "major": -1, "minor": 7}]),
                              "not a device number"),
    "device-major-wraps": (_set(("linux", "devices"), [{"path": "/dev/x", "type": "c", "major": 4097, "minor": 3}]),
                           "not a device number"),
    "no-root": (_set(("root",), DELETE), "root.path is not set"),
    "hook-empty-argv0": (_set(("hooks",), {"createRuntime": [{"path": "/bin/true", "args": [""]}]}),
                         "argv first element cannot be empty"),
    "hook-nul-env": (_set(("hooks",), {"createRuntime": [{"path": "/bin/true", "env": ["A=\0"]}]}), "NUL byte"),
    "args-nul": (_set(("process", "args"), ["sh", "-c", "x\0y"]), "NUL byte"),
    "env-nul": (_set(("process", "env"), ["A=\0"]), "NUL byte"),
    "mount-destination-nul": (_set(("mounts", 0, "destination"), "\0"), "NUL byte"),
    "mount-option-nul": (_set(("mounts", 1, "options"), ["mode=755\0"]), "NUL byte"),
    "device-path-nul": (_set(("linux", "devices"), [{"path": "/dev/a\0b", "type": "c", "major": 1, "minor": 3}]),
                        "NUL byte"),
    "cgroups-path-nul": (_set(("linux", "cgroupsPath"), "ocirt-test/a\0b"), "NUL byte"),
    "masked-path-nul": (_set(("linux", "maskedPaths"), ["/proc/kcore\0/x"]), "NUL byte"),
    "uid-unchanged": (_set(("process", "user", "uid"), 4294967295), "not a valid uid"),
    "too-many-groups": (_set(("process", "user", "additionalGids"), list(range(65537))), "limit of 65536"),
    "no-uid-mappings": (_set(("linux", "uidMappings"), []), "uidMappings"),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_configs_the_fuzzer_found(make_bundle, user, name):
    if name == "no-uid-mappings" and user is None:
        pytest.skip("rootless only")
    edit, message = FOUND[name]
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    edit(bundle.config)
    result = bundle.run()
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert_no_leftovers(bundle, bundle.config)
