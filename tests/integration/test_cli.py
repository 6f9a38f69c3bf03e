"""The commands that need no container (spec, features, validate, --version) and the CLI's conventions
(usage errors, --log/--log-format)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import helpers
import pytest

from ocirt.spec.validate import validate_config, validate_features

RUNC = shutil.which("runc") or "/usr/sbin/runc"
CRUN = shutil.which("crun") or "/usr/bin/crun"


def run_cli(args: list[str], *, cwd: Path | None = None, root: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The runtime with ``args`` as given (no --root unless asked), output captured."""
    command = [helpers.runtime_path(), *(["--root", str(root)] if root else []), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, input=input, timeout=30,
                          env=helpers.base_env())


# ---- spec -------------------------------------------------------------------------------------------------

def test_spec_writes_a_valid_config_that_runs(test_dir, runtime_root, busybox_rootfs, leak_tracker):
    bundle = test_dir / "from-spec"
    bundle.mkdir()
    result = run_cli(["spec"], cwd=bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    config = json.loads((bundle / "config.json").read_text())
    assert validate_config(config) == []
    assert config["ociVersion"] == "1.3.0"
    assert config["root"] == {"path": "rootfs", "readonly": True}
    assert {ns["type"] for ns in config["linux"]["namespaces"]} >= {"pid", "network", "ipc", "uts", "mount"}
    assert (bundle / "config.json").read_text().startswith('{\n  "ociVersion"')

    # The config as written (terminal included) runs once a rootfs is in place.
    if os.geteuid() != 0:
        pytest.skip("the written config is rootful: running it needs root")
    (bundle / "rootfs").symlink_to(busybox_rootfs)
    container_id = helpers.new_container_id()
    leak_tracker.container_ids.add(container_id)
    leak_tracker.watched_paths.append(bundle)
    ran = helpers.run_runtime(["run", "--bundle", bundle, container_id], root=runtime_root,
                              input="echo spec-made $((6 * 7))\nexit 5\n")
    assert ran.returncode == 5, ran.stderr
    assert "spec-made 42" in ran.stdout
    assert not (runtime_root / container_id).exists()


def test_spec_rootless_and_bundle_flag(test_dir):
    target = test_dir / "rootless-bundle"
    target.mkdir()
    result = run_cli(["spec", "--rootless", "--bundle", str(target)], cwd=test_dir)
    assert result.returncode == 0, result.stderr
    assert not (test_dir / "config.json").exists()
    config = json.loads((target / "config.json").read_text())
    assert validate_config(config) == []
    types = [ns["type"] for ns in config["linux"]["namespaces"]]
    assert "user" in types and "network" not in types
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert config["linux"]["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "resources" not in config["linux"]
    assert not any(m["destination"] == "/sys/fs/cgroup" for m in config["mounts"])


def test_spec_refuses_to_overwrite_a_config(test_dir):
    (test_dir / "config.json").write_text("{}")
    result = run_cli(["spec"], cwd=test_dir)
    assert result.returncode != 0
    assert "exists" in result.stderr and result.stderr.count("\n") == 1
    assert (test_dir / "config.json").read_text() == "{}"


@pytest.mark.parametrize("reference", [RUNC, CRUN], ids=["runc", "crun"])
def test_configs_from_runc_and_crun_validate(test_dir, reference):
    if not os.path.exists(reference):
        pytest.skip(f"{reference} is not installed")
    target = test_dir / Path(reference).name
    target.mkdir()
    made = subprocess.run([reference, "spec"], cwd=target, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    config = json.loads((target / "config.json").read_text())
    assert validate_config(config) == []
    checked = run_cli(["validate", "--bundle", str(target)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid" in checked.stdout


# ---- validate ---------------------------------------------------------------------------------------------

def test_validate_lists_every_violation_with_its_path(test_dir):
    assert run_cli(["spec"], cwd=test_dir).returncode == 0
    config = json.loads((test_dir / "config.json").read_text())
    config["process"]["user"]["uid"] = "root"
    config["linux"]["namespaces"].append({"type": "bogus"})
    (test_dir / "config.json").write_text(json.dumps(config))
    result = run_cli(["validate"], cwd=test_dir)
    assert result.returncode != 0
    assert "$.process.user.uid" in result.stdout
    assert "$.linux.namespaces[6].type" in result.stdout
    assert "2 errors" in result.stderr


def test_validate_reports_malformed_json_and_a_missing_file(test_dir):
    missing = run_cli(["validate", "--bundle", str(test_dir / "nowhere")])
    assert missing.returncode != 0 and "no such file or directory" in missing.stderr
    (test_dir / "config.json").write_text('{"ociVersion": ')
    malformed = run_cli(["validate", "--bundle", str(test_dir)])
    assert malformed.returncode != 0 and "malformed JSON" in malformed.stderr
    assert malformed.stderr.count("\n") == 1


# ---- features, version ------------------------------------------------------------------------------------

def test_features_validate_and_name_the_supported_range():
    result = run_cli(["features"])
    assert result.returncode == 0, result.stderr
    features = json.loads(result.stdout)
    assert validate_features(features) == []
    assert features["ociVersionMax"] == "1.3.0"
    assert features["ociVersionMin"].startswith("1.0")
    assert set(features["hooks"]) == {"prestart", "createRuntime", "createContainer", "startContainer",
                                      "poststart", "poststop"}
    assert set(features["linux"]["namespaces"]) == {"cgroup", "ipc", "mount", "network", "pid", "time",
                                                    "user", "uts"}
    assert {"rbind", "ro", "rro", "nosuid", "rslave"} <= set(features["mountOptions"])
    assert "CAP_SYS_ADMIN" in features["linux"]["capabilities"]


def test_version():
    result = run_cli(["--version"])
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"ocirt version \d+\.\d+\.\d+\S*", lines[0])
    assert "spec: 1.3.0" in lines
    assert run_cli(["-v"]).stdout == result.stdout


def test_help_and_usage_errors():
    helped = run_cli(["--help"])
    assert helped.returncode == 0 and "create" in helped.stdout and "features" in helped.stdout
    nothing = run_cli([])
    # runc 1.1.5 prints its help and exits 0 without a command (docs/cli.md).
    assert nothing.returncode == 0 and "create" in nothing.stdout
    unknown = run_cli(["frobnicate"])
    assert unknown.returncode != 0 and "frobnicate" in unknown.stderr
    bad_flag = run_cli(["state", "--no-such-flag", "x"])
    assert bad_flag.returncode != 0 and "--no-such-flag" in bad_flag.stderr
    no_id = run_cli(["state"])
    assert no_id.returncode == 1 and '"state" requires exactly 1 argument(s)' in no_id.stderr
    assert "ocirt state <container-id>" in no_id.stdout
    for result in (unknown, bad_flag, no_id):
        assert result.stderr.count("\n") == 1, result.stderr


# ---- logging ----------------------------------------------------------------------------------------------

def test_log_json_records_errors_and_stderr_still_gets_them(test_dir, runtime, container_id):
    log = test_dir / "runtime.log"
    result = runtime(["state", container_id], global_args=["--log", str(log), "--log-format", "json"])
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 1
    entry = entries[0]
    assert set(entry) == {"level", "msg", "time"}
    assert entry["level"] == "error"
    assert container_id in entry["msg"] and "does not exist" in entry["msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", entry["time"])
    # The file is appended to, never truncated.
    runtime(["delete", container_id], global_args=["--log", str(log), "--log-format", "json"])
    assert len(log.read_text().splitlines()) == 2


def test_log_text_format_and_log_flag_after_the_command(test_dir, runtime, container_id):
    log = test_dir / "runtime.txt"
    result = runtime(["kill", "--log", str(log), container_id])
    assert result.returncode != 0
    text = log.read_text()
    assert text.count("\n") == 1
    assert "level=error" in text and "does not exist" in text and text.startswith('time="')


def test_log_of_a_successful_command_stays_quiet(test_dir, make_bundle):
    bundle = make_bundle(args=["true"])
    log = test_dir / "quiet.log"
    result = bundle.run(global_args=["--log", str(log), "--log-format", "json"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    if log.exists():
        assert all(json.loads(line)["level"] != "error" for line in log.read_text().splitlines())
