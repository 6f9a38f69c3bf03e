"""Bad input gets one line for people, a non-zero exit, and leaves nothing behind (no state dir, and the
harness's leak checker finds no process, mount or cgroup)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rootful bad-input checks need root")


def one_line_error(result, *fragments: str) -> str:
    assert result.returncode != 0, f"expected a failure, got exit 0 (stdout {result.stdout!r})"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got {result.stderr!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in result.stderr
    return lines[0]


def nothing_left(bundle) -> None:
    assert not (bundle.root / bundle.id).exists(), "the state dir remains"
    assert not bundle.cgroup_dirs(), "cgroup dirs remain"


def create_fails(bundle, *fragments: str) -> str:
    line = one_line_error(bundle.create(), *fragments)
    nothing_left(bundle)
    return line


# ---- the config ---------------------------------------------------------------------------------------------

def test_malformed_json(make_bundle):
    bundle = make_bundle()
    bundle.write()
    (bundle.path / "config.json").write_text('{"ociVersion": "1.3.0", "process": {')
    result = bundle.runtime(["create", "--bundle", bundle.path, bundle.id])
    one_line_error(result, "malformed JSON", "config.json")
    nothing_left(bundle)


def test_config_that_is_not_an_object(make_bundle):
    bundle = make_bundle()
    bundle.write()
    (bundle.path / "config.json").write_text("[1, 2]")
    one_line_error(bundle.runtime(["create", "--bundle", bundle.path, bundle.id]), "object")
    nothing_left(bundle)


def test_missing_config(make_bundle):
    bundle = make_bundle()
    (bundle.path / "config.json").unlink()
    result = bundle.runtime(["create", "--bundle", bundle.path, bundle.id])
    one_line_error(result, "config.json", "no such file or directory")
    nothing_left(bundle)


@pytest.mark.parametrize(("edit", "path"), [
    (lambda c: c["process"]["user"].update(uid="root"), "$.process.user.uid"),
    (lambda c: c["process"].update(cwd="relative/dir"), "$.process.cwd"),
    (lambda c: c.pop("ociVersion"), "ociVersion"),
    (lambda c: c["mounts"].append({"destination": 5}), "$.mounts[7].destination"),
    (lambda c: c["process"]["rlimits"].append({"type": "RLIMIT_NOFILE", "soft": -1, "hard": 1}),
     "$.process.rlimits[1].soft"),
], ids=["uid-string", "relative-cwd", "no-version", "mount-destination", "negative-rlimit"])
def test_schema_violations_name_the_json_path(make_bundle, edit, path):
    bundle = make_bundle()
    edit(bundle.config)
    create_fails(bundle, path)


def test_unknown_namespace_type(make_bundle):
    bundle = make_bundle()
    bundle.config["linux"]["namespaces"].append({"type": "galaxy"})
    line = create_fails(bundle, "galaxy")
    assert "namespaces" in line


def test_missing_rootfs(make_bundle, test_dir):
    bundle = make_bundle()
    bundle.config["root"]["path"] = str(test_dir / "no-rootfs")
    create_fails(bundle, "rootfs", "no-rootfs")


# ---- ids ----------------------------------------------------------------------------------------------------

def test_an_id_that_already_exists(make_bundle):
    first = make_bundle(args=["sleep", "100"])
    assert first.create().returncode == 0
    try:
        pid = first.state()["pid"]
        again = first.runtime(["create", "--bundle", first.path, first.id])
        one_line_error(again, "already exists", first.id)
        state = first.state()
        assert state["status"] == "created" and state["pid"] == pid
    finally:
        assert first.delete(force=True).returncode == 0
    nothing_left(first)


@pytest.mark.parametrize("bad_id", ["a/b", "..", ".", "", "bad id", "x\ny"])
def test_invalid_ids(make_bundle, runtime_root, bad_id):
    bundle = make_bundle()
    result = bundle.runtime(["create", "--bundle", bundle.path, bad_id])
    one_line_error(result, "container id")
    assert list(runtime_root.iterdir()) == []
    assert not (runtime_root.parent / "b").exists()
    for command in (["state", bad_id], ["delete", bad_id], ["kill", bad_id, "KILL"], ["start", bad_id]):
        one_line_error(bundle.runtime(command), "container id")


# ---- operations in the wrong status ---------------------------------------------------------------------------

def test_wrong_status_operations_on_a_running_container(make_bundle):
    bundle = make_bundle(args=["sleep", "100"])
    assert bundle.run("-d").returncode == 0
    try:
        pid = bundle.state()["pid"]
        one_line_error(bundle.start(), bundle.id, "running")
        one_line_error(bundle.delete(), bundle.id, "running")
        state = bundle.state()
        assert state["status"] == "running" and state["pid"] == pid
        assert bundle.kill("KILL").returncode == 0
        assert wait_for(lambda: bundle.state()["status"] == "stopped")
        one_line_error(bundle.kill("TERM"), "container not running")
        one_line_error(bundle.start(), "stopped")
        assert bundle.delete().returncode == 0
    finally:
        bundle.delete(force=True)
    nothing_left(bundle)


def test_missing_container(runtime, container_id, runtime_root):
    for command in (["state", container_id], ["delete", container_id], ["start", container_id],
                    ["kill", container_id, "KILL"]):
        one_line_error(runtime(command), "does not exist", container_id)
    forced = runtime(["delete", "--force", container_id])
    assert forced.returncode == 0 and forced.stderr == ""
    assert not (runtime_root / container_id).exists()


# ---- the process ----------------------------------------------------------------------------------------------

def test_executable_that_does_not_exist(make_bundle):
    bundle = make_bundle(args=["/no/such/program", "arg"])
    create_fails(bundle, "/no/such/program", "no such file or directory")
    in_path = make_bundle(args=["no-such-program"])
    create_fails(in_path, "no-such-program", "no such file or directory")


def test_executable_that_cannot_be_executed(make_bundle):
    # procfs files are never executable, whatever the caller's capabilities.
    bundle = make_bundle(args=["/proc/cpuinfo"])
    create_fails(bundle, "/proc/cpuinfo", "permission denied")


def test_run_of_a_missing_executable_exits_non_zero_and_cleans_up(make_bundle):
    bundle = make_bundle(args=["/no/such/program"])
    result = bundle.run()
    one_line_error(result, "no such file or directory")
    nothing_left(bundle)


def test_bad_cwd(make_bundle):
    bundle = make_bundle(args=["true"])
    bundle.config["process"]["cwd"] = "/bin/busybox"
    create_fails(bundle, "/bin/busybox", "not a directory")


def test_rlimit_the_kernel_refuses_names_the_limit(make_bundle):
    bundle = make_bundle(args=["true"])
    with open("/proc/sys/fs/nr_open") as f:
        too_many = int(f.read()) + 1
    bundle.config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": too_many, "hard": too_many}]
    create_fails(bundle, "RLIMIT_NOFILE")


def test_rlimit_soft_above_hard(make_bundle):
    bundle = make_bundle(args=["true"])
    bundle.config["process"]["rlimits"] = [{"type": "RLIMIT_CORE", "soft": 2048, "hard": 1024}]
    create_fails(bundle, "RLIMIT_CORE")


# ---- mounts -----------------------------------------------------------------------------------------------------

def test_bind_mount_of_a_missing_source(make_bundle, test_dir):
    bundle = make_bundle(args=["true"])
    bundle.config["mounts"].append({"destination": "/data", "type": "bind", "source": str(test_dir / "gone"),
                                    "options": ["rbind"]})
    create_fails(bundle, "/data")


def test_mount_of_an_unknown_filesystem_type(make_bundle):
    bundle = make_bundle(args=["true"])
    bundle.config["mounts"].append({"destination": "/weird", "type": "nosuchfs", "source": "none"})
    create_fails(bundle, "/weird")


def test_failed_create_leaves_the_bundle_as_it_was(make_bundle):
    bundle = make_bundle(args=["/no/such/program"])
    bundle.write()
    before = sorted(p.name for p in bundle.path.iterdir())
    config_before = (bundle.path / "config.json").read_text()
    one_line_error(bundle.runtime(["create", "--bundle", bundle.path, bundle.id]))
    assert sorted(p.name for p in bundle.path.iterdir()) == before
    assert json.loads((bundle.path / "config.json").read_text()) == json.loads(config_before)
    nothing_left(bundle)
