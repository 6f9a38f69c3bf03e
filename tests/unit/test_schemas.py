"""The bundled runtime-spec v1.3.0 schemas, the generated fast validator and ocirt.spec.validate."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from ocirt.errors import ConfigError, OcirtError
from ocirt.spec import _fastvalidate, schemagen
from ocirt.spec import validate as V

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
DEBIAN_SCHEMAS = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")


# -- helpers --------------------------------------------------------------------------------------------------
def draft4_validator(schema_dir: Path, file: str, pointer: str = "") -> jsonschema.Draft4Validator:
    resources = [
        (path.name, Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT4))
        for path in schema_dir.glob("*.json")
    ]
    return jsonschema.Draft4Validator({"$ref": f"{file}#{pointer}"},
                                      registry=Registry().with_resources(resources))


OURS = draft4_validator(SCHEMAS, "config-schema.json")


def spec_output(runtime: str, *flags: str) -> dict:
    binary = shutil.which(runtime)
    if binary is None:
        pytest.skip(f"{runtime} is not installed")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ocirt-test-schemas-") as directory:
        subprocess.run([binary, "spec", *flags], cwd=directory, check=True, capture_output=True, timeout=30)
        return json.loads(Path(directory, "config.json").read_text())


@pytest.fixture(scope="module")
def engine_configs() -> dict[str, dict]:
    configs = {}
    for runtime in ("runc", "crun"):
        if shutil.which(runtime) is None:
            continue
        configs[f"{runtime} spec"] = spec_output(runtime)
        configs[f"{runtime} spec --rootless"] = spec_output(runtime, "--rootless")
    if not configs:
        pytest.skip("neither runc nor crun is installed")
    return configs


def minimal() -> dict:
    return {
        "ociVersion": "1.3.0",
        "root": {"path": "rootfs"},
        "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "mount"}]},
    }


def older_fields_config() -> dict:
    """A config touching every field the Debian oracle (runtime-spec 1.0.2 plus later commits) knows."""
    return {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "box",
        "domainname": "example.org",
        "annotations": {"org.example.key": "value"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"],
             "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
             "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]},
        ],
        "process": {
            "terminal": False,
            "consoleSize": {"height": 25, "width": 80},
            "user": {"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [5, 6]},
            "args": ["/bin/sh", "-c", "true"],
            "env": ["PATH=/usr/bin:/bin", "TERM=xterm"],
            "cwd": "/home",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "inheritable": [],
                             "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
            "noNewPrivileges": True,
            "apparmorProfile": "unconfined",
            "oomScoreAdj": 100,
            "selinuxLabel": "system_u:system_r:container_t:s0",
        },
        "hooks": {
            kind: [{"path": "/usr/bin/hook", "args": ["hook", kind], "env": ["A=1"], "timeout": 5}]
            for kind in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                         "poststop")
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}, {"type": "user"}, {"type": "cgroup"}],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438,
                         "uid": 0, "gid": 0},
                        {"path": "/dev/fifo", "type": "p"}],
            "cgroupsPath": "/ocirt/box",
            "resources": {
                "devices": [{"allow": False, "access": "rwm"},
                            {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}],
                "memory": {"limit": 536870912, "reservation": 268435456, "swap": -1, "kernel": -1,
                           "kernelTCP": -1, "swappiness": 10, "disableOOMKiller": False,
                           "useHierarchy": True, "checkBeforeUpdate": True},
                "cpu": {"shares": 1024, "quota": 100000, "burst": 10000, "period": 100000,
                        "realtimeRuntime": 950000, "realtimePeriod": 1000000, "cpus": "0-1", "mems": "0",
                        "idle": 0},
                "blockIO": {"weight": 500, "leafWeight": 300,
                            "weightDevice": [{"major": 8, "minor": 0, "weight": 500, "leafWeight": 300}],
                            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                            "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 60}],
                            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 60}]},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}],
                "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
                "pids": {"limit": 32},
                "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
                "unified": {"memory.high": "max"},
            },
            "intelRdt": {"closID": "guaranteed", "l3CacheSchema": "L3:0=7f0", "memBwSchema": "MB:0=20",
                         "enableCMT": True, "enableMBM": True},
            "sysctl": {"net.ipv4.ip_forward": "1"},
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "listenerPath": "/run/agent.sock",
                "listenerMetadata": "meta",
                "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                              "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}],
            },
            "rootfsPropagation": "slave",
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "mountLabel": "system_u:object_r:container_file_t:s0",
            "personality": {"domain": "LINUX", "flags": []},
        },
    }


def newest_fields_config() -> dict:
    """Every field runtime-spec 1.1 to 1.3 added, on top of the older ones."""
    config = older_fields_config()
    config["ociVersion"] = "1.3.0"
    config["process"].update({
        "scheduler": {"policy": "SCHED_DEADLINE", "nice": -5, "priority": 0,
                      "flags": ["SCHED_FLAG_RESET_ON_FORK", "SCHED_FLAG_RECLAIM"],
                      "runtime": 10000000, "deadline": 30000000, "period": 30000000},
        "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
        "execCPUAffinity": {"initial": "0", "final": "0-3,7"},
    })
    linux = config["linux"]
    linux["namespaces"].append({"type": "time"})
    linux["timeOffsets"] = {"monotonic": {"secs": -3600, "nanosecs": 0}, "boottime": {"secs": 86400}}
    linux["netDevices"] = {"eth1": {"name": "ctr0"}, "ens4": {}}
    linux["memoryPolicy"] = {"mode": "MPOL_INTERLEAVE", "nodes": "0-1", "flags": ["MPOL_F_STATIC_NODES"]}
    linux["intelRdt"] = {"closID": "guaranteed", "schemata": ["L3:0=7f0;1=1f", "MB:0=20;1=70"],
                         "enableMonitoring": True}
    linux["seccomp"]["flags"] = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                                 "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    linux["seccomp"]["syscalls"].append({"names": ["mount"], "action": "SCMP_ACT_NOTIFY"})
    linux["personality"] = {"domain": "LINUX32"}
    return config


def both_verdicts(doc: dict) -> tuple[bool, bool]:
    return bool(_fastvalidate.validate_config(doc)), OURS.is_valid(doc)


# -- valid documents ------------------------------------------------------------------------------------------
def test_engine_default_configs_validate(engine_configs: dict[str, dict]) -> None:
    assert len(engine_configs) == 4 or shutil.which("runc") is None or shutil.which("crun") is None
    for name, config in engine_configs.items():
        assert V.validate_config(config) == [], name
        assert both_verdicts(config) == (True, True), name
        V.check_config(config)


def test_every_field_from_1_1_to_1_3_validates() -> None:
    config = newest_fields_config()
    assert V.validate_config(config) == []
    assert both_verdicts(config) == (True, True)
    V.check_config(config)


def test_minimal_config_validates() -> None:
    assert V.validate_config(minimal()) == []
    assert V.validate_config({"ociVersion": "1.0.0"}) == []


def test_unknown_properties_are_ignored_as_the_spec_requires() -> None:
    config = minimal()
    config["org.example.extension"] = {"anything": [1, 2]}
    config["linux"]["futureField"] = 3
    config["process"]["user"]["futureField"] = "x"
    assert both_verdicts(config) == (True, True)


# -- invalid documents ----------------------------------------------------------------------------------------
_DELETE = object()


def _set(doc: dict, path: list, value: object) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if value is _DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value

INVALID_CASES = [
    # (what is changed, new value, JSON path the first issue names, words of its message)
    (["ociVersion"], _DELETE, "$.ociVersion", "required"),
    (["ociVersion"], 1.3, "$.ociVersion", "must be of type string"),
    (["ociVersion"], "1.3", "$.ociVersion", "SemVer"),
    (["root", "path"], _DELETE, "$.root.path", "required"),
    (["root", "readonly"], "yes", "$.root.readonly", "type boolean"),
    (["process", "cwd"], "relative/dir", "$.process.cwd", "absolute path"),
    (["process", "cwd"], _DELETE, "$.process.cwd", "required"),
    (["process", "args"], [], "$.process.args", "at least 1 item"),
    (["process", "args"], "sh", "$.process.args", "type array"),
    (["process", "user", "uid"], "0", "$.process.user.uid", "type integer"),
    (["process", "user", "uid"], -1, "$.process.user.uid", "minimum"),
    (["process", "user", "gid"], 2**32, "$.process.user.gid", "maximum"),
    (["process", "user", "gid"], _DELETE, "$.process.user.gid", "required"),
    (["process", "user", "umask"], 1.5, "$.process.user.umask", "type integer"),
    (["process", "user", "umask"], True, "$.process.user.umask", "type integer"),
    (["process", "terminal"], 1, "$.process.terminal", "type boolean"),
    (["process", "rlimits"], [{"type": "NOFILE", "soft": 1, "hard": 1}], "$.process.rlimits[0].type",
     "RLIMIT_"),
    (["process", "rlimits"], [{"type": "RLIMIT_nofile", "soft": 1, "hard": 1}], "$.process.rlimits[0].type",
     "RLIMIT_"),
    (["process", "rlimits"], [{"type": "RLIMIT_NOFILE", "soft": 1}], "$.process.rlimits[0].hard",
     "required"),
    (["process", "rlimits"], [{"type": "RLIMIT_CORE", "soft": -1, "hard": 0}], "$.process.rlimits[0].soft",
     "minimum"),
    (["process", "capabilities"], {"bounding": "CAP_KILL"}, "$.process.capabilities.bounding", "type array"),
    (["process", "oomScoreAdj"], "100", "$.process.oomScoreAdj", "type integer"),
    (["process", "scheduler"], {"policy": "SCHED_NOPE"}, "$.process.scheduler.policy", "SCHED_OTHER"),
    (["process", "scheduler"], {"nice": 1}, "$.process.scheduler.policy", "required"),
    (["process", "ioPriority"], {"class": "IOPRIO_CLASS_BE", "priority": 8}, "$.process.ioPriority.priority",
     "maximum"),
    (["process", "execCPUAffinity"], {"initial": "all"}, "$.process.execCPUAffinity.initial", "CPUs"),
    (["linux", "namespaces"], [{"type": "bogus"}], "$.linux.namespaces[0].type", "not one of"),
    (["linux", "namespaces"], [{"path": "/proc/1/ns/net"}], "$.linux.namespaces[0].type", "required"),
    (["linux", "namespaces"], [{"type": "net", "path": "x"}], "$.linux.namespaces[0].type", "not one of"),
    (["linux", "seccomp"], {"defaultAction": "SCMP_ACT_BOGUS"}, "$.linux.seccomp.defaultAction", "not one of"),
    (["linux", "seccomp"], {"architectures": []}, "$.linux.seccomp.defaultAction", "required"),
    (["linux", "seccomp"], {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                          "args": [{"index": 0, "value": 1, "op": "EQ"}]}]},
     "$.linux.seccomp.syscalls[0].args[0].op", "not one of"),
    (["linux", "seccomp"], {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action":
                                                                              "SCMP_ACT_LOG"}]},
     "$.linux.seccomp.syscalls[0].names", "at least 1"),
    (["linux", "seccomp"], {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]},
     "$.linux.seccomp.flags[0]", "not one of"),
    (["linux", "seccomp"], {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x86_64"]},
     "$.linux.seccomp.architectures[0]", "not one of"),
    (["linux", "seccomp"], {"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "m"}, "$.linux.seccomp",
     "listenerMetadata requires listenerPath"),
    (["linux", "devices"], [{"type": "c", "path": "/dev/x"}], "$.linux.devices[0]", "major and minor"),
    (["linux", "devices"], [{"type": "x", "path": "/dev/x", "major": 1, "minor": 1}],
     "$.linux.devices[0].type", "not one of"),
    (["linux", "devices"], [{"type": "p", "path": "dev/x"}], "$.linux.devices[0].path", "absolute path"),
    (["linux", "resources"], {"memory": {"limit": "1G"}}, "$.linux.resources.memory.limit", "type integer"),
    (["linux", "resources"], {"memory": {"limit": 2**63}}, "$.linux.resources.memory.limit", "maximum"),
    (["linux", "resources"], {"cpu": {"shares": -2}}, "$.linux.resources.cpu.shares", "minimum"),
    (["linux", "resources"], {"pids": {}}, "$.linux.resources.pids.limit", "required"),
    (["linux", "resources"], {"hugepageLimits": [{"pageSize": "2M", "limit": 1}]},
     "$.linux.resources.hugepageLimits[0].pageSize", "page size"),
    (["linux", "resources"], {"devices": [{"access": "rwm"}]}, "$.linux.resources.devices[0].allow",
     "required"),
    (["linux", "resources"], {"devices": [{"allow": True, "access": "rwx"}]},
     "$.linux.resources.devices[0].access", "r, w and m"),
    (["linux", "resources"], {"blockIO": {"weight": 70000}}, "$.linux.resources.blockIO.weight", "maximum"),
    (["linux", "resources"], {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}},
     "$.linux.resources.blockIO.throttleReadBpsDevice[0].rate", "required"),
    (["linux", "resources"], {"rdma": {"mlx": {}}}, "$.linux.resources.rdma.mlx", "hcaHandles"),
    (["linux", "resources"], {"unified": {"memory.max": 5}}, '$.linux.resources.unified["memory.max"]',
     "type string"),
    (["linux", "timeOffsets"], {"monotonic": {"secs": "1"}}, "$.linux.timeOffsets.monotonic.secs",
     "type integer"),
    (["linux", "netDevices"], {"eth0": {"name": 5}}, "$.linux.netDevices.eth0.name", "type string"),
    (["linux", "memoryPolicy"], {"mode": "MPOL_NOPE"}, "$.linux.memoryPolicy.mode", "not one of"),
    (["linux", "memoryPolicy"], {"nodes": "0"}, "$.linux.memoryPolicy.mode", "required"),
    (["linux", "intelRdt"], {"memBwSchema": "L3:0=1"}, "$.linux.intelRdt.memBwSchema", "MB:"),
    (["linux", "intelRdt"], {"schemata": "MB:0=20"}, "$.linux.intelRdt.schemata", "type array"),
    (["linux", "personality"], {"domain": "LINUX64"}, "$.linux.personality.domain", "not one of"),
    (["linux", "rootfsPropagation"], "rbind", "$.linux.rootfsPropagation", "not one of"),
    (["linux", "maskedPaths"], ["proc/kcore"], "$.linux.maskedPaths[0]", "absolute path"),
    (["linux", "sysctl"], {"kernel.x": 1}, '$.linux.sysctl["kernel.x"]', "type string"),
    (["linux", "uidMappings"], [{"containerID": 0, "hostID": 0}], "$.linux.uidMappings[0].size", "required"),
    (["mounts"], [{"source": "proc"}], "$.mounts[0].destination", "required"),
    (["mounts"], [{"destination": "/x", "options": "ro"}], "$.mounts[0].options", "type array"),
    (["mounts"], [{"destination": "/x", "uidMappings": [{"containerID": 0, "hostID": 0, "size": -1}]}],
     "$.mounts[0].uidMappings[0].size", "minimum"),
    (["hooks"], {"prestart": [{"args": ["x"]}]}, "$.hooks.prestart[0].path", "required"),
    (["hooks"], {"poststop": [{"path": "/bin/true", "timeout": 0}]}, "$.hooks.poststop[0].timeout",
     "minimum"),
    (["hooks"], {"createRuntime": [{"path": "hook"}]}, "$.hooks.createRuntime[0].path", "absolute path"),
    (["annotations"], {"key": 1}, "$.annotations.key", "type string"),
    (["annotations"], {"ok": "v", "": "empty key"}, "$.annotations", 'property not allowed: ""'),
    (["hostname"], ["box"], "$.hostname", "type string"),
]


@pytest.mark.parametrize("path, value, where, words", INVALID_CASES,
                         ids=[f"{'.'.join(map(str, case[0]))}=" + ("<deleted>" if case[1] is _DELETE else
                                                                   f"{case[1]!r:.40}") for case in INVALID_CASES])
def test_invalid_config_is_reported_with_its_path(path: list, value: object, where: str, words: str) -> None:
    config = minimal()
    _set(config, path, value if value is _DELETE else copy.deepcopy(value))
    assert both_verdicts(config) == (False, False)
    issues = V.validate_config(config)
    assert issues, "an invalid config must produce issues"
    assert issues[0].path == where, issues
    assert words in issues[0].message, issues
    with pytest.raises(ConfigError) as raised:
        V.check_config(config)
    text = str(raised.value)
    assert text.startswith(f"config.json: {where}: ")
    assert words in text
    assert "\n" not in text


def test_all_errors_are_listed_and_check_config_counts_the_rest() -> None:
    config = minimal()
    config["process"]["user"]["uid"] = "root"
    config["linux"]["namespaces"][0]["type"] = "bogus"
    config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_NOPE"}
    del config["ociVersion"]
    issues = V.validate_config(config)
    assert {issue.path for issue in issues} == {
        "$.ociVersion", "$.process.user.uid", "$.linux.namespaces[0].type", "$.linux.seccomp.defaultAction"}
    with pytest.raises(ConfigError) as raised:
        V.check_config(config)
    assert str(raised.value).endswith("(and 3 more; run `ocirt validate` for all)")
    assert raised.value.exit_code == 1
    path, message = issues[0]
    assert (path, message) == (issues[0].path, issues[0].message)
    assert str(issues[0]) == f"{path}: {message}"


def test_a_document_that_is_not_an_object_is_reported_at_the_root() -> None:
    not_objects: list[object] = [[], "config", None, 3]
    for doc in not_objects:
        issues = V.validate_config(doc)
        assert issues and issues[0].path == "$"
        assert _fastvalidate.validate_config(doc) is False


def test_valid_config_never_imports_jsonschema() -> None:
    # The create path must not pay jsonschema's 70 ms import for a valid config.
    program = (
        "import json, sys\n"
        "from ocirt.spec.validate import check_config\n"
        f"check_config(json.loads({json.dumps(json.dumps(newest_fields_config()))}))\n"
        "print(sorted(name for name in ('jsonschema', 'referencing', 'typing', 'attrs') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_check_config_is_fast_for_a_valid_config() -> None:
    import time

    config = newest_fields_config()
    V.check_config(config)
    started = time.perf_counter()
    for _ in range(100):
        V.check_config(config)
    assert (time.perf_counter() - started) / 100 < 0.001


# -- process, state and features ------------------------------------------------------------------------------
def test_process_definition_alone() -> None:
    process = newest_fields_config()["process"]
    assert V.validate_process(process) == []
    V.check_process(process)
    process["user"] = {"uid": 0}
    process["capabilities"]["ambient"] = "CAP_KILL"
    issues = V.validate_process(process)
    assert [issue.path for issue in issues] == ["$.capabilities.ambient", "$.user.gid"] or \
        sorted(issue.path for issue in issues) == ["$.capabilities.ambient", "$.user.gid"]
    with pytest.raises(ConfigError, match=r"^process: \$\.(capabilities\.ambient|user\.gid): .*\(and 1 more"):
        V.check_process(process)
    assert V.validate_process({"args": ["sh"]})[0].path == "$.cwd"


def test_state_document() -> None:
    state = {"ociVersion": "1.3.0", "id": "box", "status": "running", "pid": 4242, "bundle": "/run/bundle",
             "annotations": {"a": "b"}}
    assert V.validate_state(state) == []
    assert V.validate_state({**state, "status": "creating", "pid": None} | {}) != []
    creating = dict(state, status="creating")
    del creating["pid"]
    assert V.validate_state(creating) == []
    running = dict(state)
    del running["pid"]
    assert V.validate_state(running) == [("$", "pid is required while the container is created or running")]
    assert V.validate_state(dict(state, status="paused"))[0].path == "$.status"
    assert V.validate_state(dict(state, bundle="bundle"))[0].path == "$.bundle"
    assert V.validate_state(dict(state, id=""))[0].path == "$.id"


def test_features_document() -> None:
    features: dict = {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.3.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "idmap", "ridmap"],
        "annotations": {"org.opencontainers.runc.version": "x"},
        "potentiallyUnsafeConfigAnnotations": ["org.systemd.property."],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": ["CAP_CHOWN"],
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {"enabled": True, "actions": ["SCMP_ACT_ALLOW"], "operators": ["SCMP_CMP_EQ"],
                        "archs": ["SCMP_ARCH_X86_64"], "knownFlags": ["SECCOMP_FILTER_FLAG_LOG"],
                        "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG"]},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": True}},
            "netDevices": {"enabled": True},
            "memoryPolicy": {"modes": ["MPOL_BIND"], "flags": ["MPOL_F_STATIC_NODES"]},
        },
    }
    assert V.validate_features(features) == []
    del features["ociVersionMax"]
    assert V.validate_features(features) == [("$.ociVersionMax", "required property is missing")]
    features["ociVersionMax"] = "1.3.0"
    features["linux"]["cgroup"]["v2"] = "yes"
    assert V.validate_features(features)[0].path == "$.linux.cgroup.v2"


def test_runc_features_output_validates() -> None:
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed")
    result = subprocess.run([runc, "features"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip("this runc has no features command")
    assert V.validate_features(json.loads(result.stdout)) == []


def test_schema_path() -> None:
    path = V.schema_path("config-schema.json")
    assert path.is_file() and path.parent.name == "schemas"
    for name in ("defs.json", "defs-linux.json", "config-linux.json", "state-schema.json",
                 "features-schema.json", "features-linux.json"):
        assert V.schema_path(name).is_file()
    with pytest.raises(OcirtError, match="no bundled schema named 'nope.json'"):
        V.schema_path("nope.json")


def test_schemas_are_draft04_and_every_ref_resolves() -> None:
    for path in SCHEMAS.glob("*.json"):
        document = json.loads(path.read_text())
        if "$schema" in document:
            assert document["$schema"] == "http://json-schema.org/draft-04/schema#"
        jsonschema.Draft4Validator.check_schema(document)
    # Compiling follows every $ref reachable from the entry points and fails on a dangling one.
    schemagen.generate()


# -- the generated validator ----------------------------------------------------------------------------------
def test_generated_validator_is_up_to_date() -> None:
    generated = schemagen.generated_path().read_text()
    assert generated == schemagen.generate(), "run: python -m ocirt.spec.schemagen"
    assert _fastvalidate.SCHEMA_DIGEST == schemagen.schema_digest(SCHEMAS)


def test_schemagen_check_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "_fastvalidate.py"
    stale.write_text("# old\n")
    assert schemagen.main(["--check", "--output", str(stale)]) == 1
    assert schemagen.main(["--output", str(stale)]) == 0
    assert schemagen.main(["--check", "--output", str(stale)]) == 0


def test_schemagen_refuses_keywords_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({"type": "string", "format": "uri"}))
    with pytest.raises(schemagen.SchemaCompileError, match="format"):
        schemagen.generate(tmp_path, (("validate", "s.json", ""),))
    (tmp_path / "s.json").write_text(json.dumps({"$ref": "missing.json#/x"}))
    with pytest.raises(schemagen.SchemaCompileError, match="missing.json"):
        schemagen.generate(tmp_path, (("validate", "s.json", ""),))


def _load_generated(schema_dir: Path, file: str) -> Callable[[object], bool]:
    namespace: dict = {}
    exec(compile(schemagen.generate(schema_dir, (("validate", file, ""),)), "<generated>", "exec"), namespace)
    return namespace["validate"]


# A schema using every keyword the compiler supports, including ones the bundled schemas do not use.
KEYWORD_SCHEMA = {
    "definitions": {
        "small": {"type": ["integer", "null"], "minimum": -2, "maximum": 2},
        "node": {"type": "object", "properties": {"next": {"$ref": "#/definitions/node"},
                                                  "v": {"$ref": "#/definitions/small"}}},
    },
    "type": "object",
    "properties": {
        "s": {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[ab]"},
        "e": {"enum": [1, True, "x", None, [1], {"k": 1}]},
        "n": {"type": "number", "maximum": 1.5},
        "a": {"type": "array", "items": {"$ref": "#/definitions/small"}, "minItems": 1, "maxItems": 2},
        "one": {"oneOf": [{"type": "integer"}, {"minimum": 0}]},
        "all": {"allOf": [{"minimum": 0}, {"maximum": 5}]},
        "no": {"not": {"type": "string"}},
        "loose": {"minimum": 0, "pattern": "x", "minLength": 2},
        "tree": {"$ref": "#/definitions/node"},
        "m": {"type": "object", "patternProperties": {"^p": {"type": "integer"}, "q$": {"type": "string"}},
              "properties": {"fixed": {"type": "boolean"}}, "additionalProperties": {"type": "null"}},
    },
    "required": ["s"],
    "dependencies": {"a": ["n"], "one": {"required": ["all"]}},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-4, max_value=4) | st.floats(-3, 3, allow_nan=False)
    | st.sampled_from(["", "a", "ab", "abcd", "bx", "x", "xx", "1"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["k", "p1", "aq", "fixed", "next", "v", "z"]), children, max_size=3),
    max_leaves=8,
)
keyword_documents = st.fixed_dictionaries(
    {}, optional={key: json_values for key in list(KEYWORD_SCHEMA["properties"]) + ["zz"]})


def test_compiler_agrees_with_jsonschema_on_every_keyword(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("keywords")
    (directory / "k.json").write_text(json.dumps(KEYWORD_SCHEMA))
    fast = _load_generated(directory, "k.json")
    reference = jsonschema.Draft4Validator(KEYWORD_SCHEMA)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(keyword_documents)
    def agree(document: dict) -> None:
        assert fast(document) == reference.is_valid(document), document

    agree()


def _leaf_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _leaf_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _leaf_paths(child, (*prefix, index))
    return paths


def _replace(document: object, path: tuple, value: object) -> object:
    if not path:
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]  # type: ignore[index]
    if value is _DELETE:
        del parent[path[-1]]  # type: ignore[attr-defined]
    else:
        parent[path[-1]] = value  # type: ignore[index]
    return document


# Values that sit on either side of the schemas' constraints.
interesting_scalars = st.sampled_from([
    None, True, False, 0, 1, -1, 7, 8, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63),
    -(2**63) - 1, 1.0, 0.5, "", "/", "/abs", "rel", "1.3.0", "1.3", "1.0.0-rc.1+build.5", "RLIMIT_NOFILE",
    "RLIMIT_nofile", "MB:0=20", "L3:0=1", "2MB", "2mb", "rwm", "rwx", "0-3,7", "0-", "p", "c", "x",
    "time", "mount", "SCMP_ACT_ALLOW", "SCMP_ACT_KILL_THREAD", "SCMP_CMP_EQ", "SCHED_FIFO", "IOPRIO_CLASS_RT",
    "MPOL_BIND", "MPOL_F_STATIC_NODES", "LINUX", "LINUX32", "slave", "created", "running",
])
replacement_values = st.recursive(
    interesting_scalars | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "path", "major", "minor", "limit", "name", "", "x"]), children,
                      max_size=3),
    max_leaves=6,
)


def _mutations(base_documents: list) -> st.SearchStrategy:
    @st.composite
    def mutate(draw: st.DrawFn) -> object:
        document = copy.deepcopy(draw(st.sampled_from(base_documents)))
        for _ in range(draw(st.integers(1, 3))):
            paths = _leaf_paths(document)
            path = draw(st.sampled_from(paths))
            if path and draw(st.booleans()) and not isinstance(path[-1], int):
                document = _replace(document, path, _DELETE)
            else:
                document = _replace(document, path, draw(replacement_values))
        return document

    return mutate()


def test_fast_validator_agrees_with_jsonschema_on_mutated_configs(engine_configs: dict[str, dict]) -> None:
    bases = [newest_fields_config(), older_fields_config(), minimal(), *engine_configs.values()]

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutations(bases))
    def agree(document: object) -> None:
        assert bool(_fastvalidate.validate_config(document)) == OURS.is_valid(document), document

    agree()


SUB_DOCUMENTS = {
    "process": ("config-schema.json", "/definitions/Process", lambda: newest_fields_config()["process"]),
    "state": ("state-schema.json", "", lambda: {"ociVersion": "1.3.0", "id": "box", "status": "created",
                                               "pid": 1, "bundle": "/b", "annotations": {"k": "v"}}),
    "features": ("features-schema.json", "", lambda: {"ociVersionMin": "1.0.0", "ociVersionMax": "1.3.0",
                                                      "hooks": ["prestart"],
                                                      "linux": {"cgroup": {"v1": True},
                                                                "seccomp": {"enabled": True}}}),
}


@pytest.mark.parametrize("kind", sorted(SUB_DOCUMENTS))
def test_fast_validator_agrees_with_jsonschema_on_process_state_and_features(kind: str) -> None:
    file, pointer, base = SUB_DOCUMENTS[kind]
    reference = draft4_validator(SCHEMAS, file, pointer)
    fast = getattr(_fastvalidate, f"validate_{kind}")
    assert fast(base()) and reference.is_valid(base())

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutations([base()]))
    def agree(document: object) -> None:
        assert bool(fast(document)) == reference.is_valid(document), document

    agree()


def _sections(config: dict) -> list[dict]:
    """The config cut into small documents (jsonschema's cost grows with the size of what it checks)."""
    sections = []
    for key, value in config.items():
        if key == "linux":
            sections += [{"ociVersion": "1.3.0", "linux": {name: part}} for name, part in value.items()]
        elif key != "ociVersion":
            sections.append({"ociVersion": "1.3.0", key: value})
    return sections


def test_fast_validator_agrees_with_jsonschema_on_every_node_and_boundary() -> None:
    # Deterministic complement to the random test: every node of the fullest config, at every boundary.
    checked = rejected = 0
    for section in _sections(newest_fields_config()):
        assert _fastvalidate.validate_config(section) and OURS.is_valid(section), section
        for label, mutated in _systematic_mutations(section, boundaries=True):
            fast, reference = bool(_fastvalidate.validate_config(mutated)), OURS.is_valid(mutated)
            assert fast == reference, f"{label}: fast says {fast}, jsonschema says {reference}"
            checked += 1
            rejected += not reference
    assert checked > 2000 and rejected > 1000, (checked, rejected)


# -- cross-check against Debian's upstream schemas ------------------------------------------------------------
# Where these schemas follow the v1.3.0 text more strictly than the older upstream schemas do. A mutated
# config that only ours rejects must have its first issue under one of these paths.
STRICTER_THAN_UPSTREAM = {
    "$.ociVersion": "MUST be SemVer 2.0.0",
    "$.process.cwd": "MUST be an absolute path",
    "$.process.args": "at least one entry is REQUIRED",
    "$.process.user.uid": "REQUIRED on POSIX platforms",
    "$.process.user.gid": "REQUIRED on POSIX platforms",
    "$.hooks": "hook path MUST be absolute",
    "$.annotations": "keys MUST NOT be empty",
    "$.linux.namespaces": "namespace path MUST be absolute",
    "$.linux.devices": "major/minor REQUIRED unless type is p; path is a full path",
    "$.linux.resources.devices": "type is a, c or b; access is composed of r, w, m",
    "$.linux.resources.blockIO": "rate REQUIRED; weight or leafWeight REQUIRED",
    "$.linux.resources.rdma": "hcaHandles or hcaObjects REQUIRED",
    "$.linux.maskedPaths": "MUST be absolute paths",
    "$.linux.readonlyPaths": "MUST be absolute paths",
    "$.linux.personality.domain": "REQUIRED",
    "$.linux.seccomp": "listenerMetadata MUST NOT be set without listenerPath",
}


def _oracle() -> jsonschema.Draft4Validator:
    if not (DEBIAN_SCHEMAS / "config-schema.json").is_file():
        pytest.skip(f"Debian's upstream schemas are not installed at {DEBIAN_SCHEMAS} "
                    "(package golang-github-opencontainers-specs-dev)")
    return draft4_validator(DEBIAN_SCHEMAS, "config-schema.json")


def _older_corpus(engine_configs: dict[str, dict]) -> list[dict]:
    # One engine config: the others differ from it only in list items, and each costs a second here.
    return [older_fields_config(), minimal(), next(iter(engine_configs.values()))]


BOUNDARY_REPLACEMENTS: dict[type, list[object]] = {
    bool: ["true", 1, None],
    int: [True, False, -1, 0, 8, 1.0, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1],
    str: [5, ["x"], "bogus", "", "/", "rel", "RLIMIT_nofile", "1.3"],
    list: [{"x": 1}, "x", [None], []],
    dict: [["x"], "x", {"x": None}, {}],
}


def _systematic_mutations(document: dict, boundaries: bool = False) -> list[tuple[str, object]]:
    """Each node of the document deleted, given the wrong type, or given an out-of-range value."""
    mutations = []
    for path in _leaf_paths(document):
        # Later items of a list repeat what the first two show, at a cost of seconds.
        if not path or any(isinstance(key, int) and key > 1 for key in path):
            continue
        value = _replace(copy.deepcopy(document), path, _DELETE) if not isinstance(path[-1], int) else None
        original = copy.deepcopy(document)
        for key in path:
            original = original[key]
        replacements: list[object] = []
        if isinstance(original, bool):
            replacements = ["true", 1]
        elif isinstance(original, int):
            replacements = [str(original), -1, 2**32, 2**63, 2**64, 1.5]
        elif isinstance(original, str):
            replacements = [5, ["x"], "bogus-value"]
        elif isinstance(original, list):
            replacements = [{"x": 1}, "x", [None]]
        elif isinstance(original, dict):
            replacements = [["x"], "x", {"x": None} if original else None]
        if boundaries:
            replacements = BOUNDARY_REPLACEMENTS[type(original)] + [str(original)] * isinstance(original, int)
        label = V.format_path(path)
        if value is not None:
            mutations.append((f"delete {label}", value))
        for replacement in replacements:
            mutations.append((f"{label} = {replacement!r}", _replace(copy.deepcopy(document), path, replacement)))
    return mutations


def test_older_configs_agree_with_debian_upstream_schemas(engine_configs: dict[str, dict]) -> None:
    oracle = _oracle()
    checked = 0
    rejected_by_both = 0
    for document in _older_corpus(engine_configs):
        assert oracle.is_valid(document) and OURS.is_valid(document)
        for label, mutated in _systematic_mutations(document):
            # The fast validator stands for ours: the differential tests above hold it equal to jsonschema.
            theirs, ours = oracle.is_valid(mutated), bool(_fastvalidate.validate_config(mutated))
            checked += 1
            if theirs:
                if not ours:
                    first = V.validate_config(mutated)[0].path
                    assert any(first == prefix or first.startswith((prefix + ".", prefix + "["))
                               for prefix in STRICTER_THAN_UPSTREAM), f"{label}: only ours rejects ({first})"
            else:
                assert not ours, f"{label}: upstream rejects it but ours accepts it"
                rejected_by_both += 1
    # The corpus must really exercise rejection, not only agree on valid documents.
    assert checked > 500 and rejected_by_both > 300, (checked, rejected_by_both)


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_mutations_of_older_configs_agree_with_debian_upstream(data: st.DataObject) -> None:
    oracle = _oracle()
    document = data.draw(_mutations([older_fields_config(), minimal()]))
    theirs, ours = oracle.is_valid(document), OURS.is_valid(document)
    if not theirs:
        assert not ours, document
    elif not ours:
        first = V.validate_config(document)[0].path
        assert any(first == prefix or first.startswith((prefix + ".", prefix + "["))
                   for prefix in STRICTER_THAN_UPSTREAM), (first, document)


def test_upstream_schema_directory_is_not_our_source() -> None:
    # The oracle must stay an independent statement: none of our files may equal one of upstream's.
    if not DEBIAN_SCHEMAS.is_dir():
        pytest.skip(f"{DEBIAN_SCHEMAS} is missing")
    theirs = {path.read_bytes() for path in DEBIAN_SCHEMAS.glob("*.json")}
    assert not any(path.read_bytes() in theirs for path in SCHEMAS.glob("*.json"))


def test_pythonpath_independent_schema_lookup() -> None:
    # schema_path works from any working directory: it locates files relative to the package.
    result = subprocess.run(
        [sys.executable, "-c", "from ocirt.spec.validate import schema_path; print(schema_path('defs.json'))"],
        cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
        check=True)
    assert Path(result.stdout.strip()) == SCHEMAS / "defs.json"
