"""An error from the kernel says what failed: op, path and errno (and a hint where ocirt knows one), as keys
of the `--log-format json` entry and of the text line, while stderr keeps the one `ocirt: <message>` line.
The init's failures reach the runtime as a structured message. Rootful and rootless, with the harness's
check that nothing is left behind."""

from __future__ import annotations

import errno
import json
import os

import pytest


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


def log_file_for(harness, user, name: str):
    path = harness.dir / name
    path.touch()
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path


def failed_run(bundle, harness, user, *, log_format: str = "json"):
    log_file = log_file_for(harness, user, f"error.{log_format}")
    result = bundle.run(global_args=["--log", log_file, "--log-format", log_format])
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocirt: "), result.stderr
    assert "internal error" not in result.stderr
    errors = [line for line in log_file.read_text().splitlines() if "error" in line]
    assert errors, log_file.read_text()
    return lines[0], errors[-1]


def test_a_mount_whose_source_is_missing(make_bundle, harness, user):
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["mounts"].append({"destination": "/mnt/gone", "type": "bind",
                                    "source": str(harness.dir / "no-such-source"), "options": ["bind"]})
    stderr, line = failed_run(bundle, harness, user)
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert (entry["op"], entry["path"], entry["errno"]) == ("mount", "/mnt/gone", errno.ENOENT)
    assert stderr == f"ocirt: {entry['msg']}"
    assert "no-such-source" in entry["msg"]


def test_a_tmpfs_with_a_bad_option_in_the_text_format(make_bundle, harness, user):
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["mounts"].append({"destination": "/mnt/t", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["size=lots"]})
    _, line = failed_run(bundle, harness, user, log_format="text")
    assert line.startswith('time="') and " level=error msg=" in line
    assert line.endswith(f" errno={errno.EINVAL} op=mount path=/mnt/t"), line


def test_a_program_missing_from_the_rootfs(make_bundle, harness, user):
    bundle = make_bundle(user=user, args=["/no/such/program"])
    _, line = failed_run(bundle, harness, user)
    entry = json.loads(line)
    assert (entry["op"], entry["path"], entry["errno"]) == ("execve", "/no/such/program", errno.ENOENT)


def test_a_cwd_that_cannot_be_made(make_bundle, harness, user):
    bundle = make_bundle(user=user, args=["true"])
    bundle.config["process"]["cwd"] = "/bin/sh/below-a-file"
    _, line = failed_run(bundle, harness, user)
    entry = json.loads(line)
    assert (entry["op"], entry["path"], entry["errno"]) == ("chdir", "/bin/sh/below-a-file", errno.ENOTDIR)


@pytest.mark.rootless
def test_a_filesystem_a_user_namespace_may_not_mount_has_a_hint(make_bundle, harness, unprivileged_user):
    bundle = make_bundle(user=unprivileged_user, args=["true"])
    bundle.config["mounts"].append({"destination": "/tmp", "type": "ext4", "source": "none"})
    stderr, line = failed_run(bundle, harness, unprivileged_user)
    entry = json.loads(line)
    assert (entry["op"], entry["path"], entry["errno"]) == ("mount", "/tmp", errno.EPERM), stderr
    assert "bind a host directory there instead" in entry["hint"]
    assert stderr.endswith("; " + entry["hint"])


def test_an_error_in_the_runtime_itself_has_its_fields_too(make_bundle, harness, user):
    """Not only the init's: a --pid-file whose directory is missing fails in the runtime, before anything."""
    bundle = make_bundle(user=user, args=["true"])
    pid_file = harness.dir / "missing-dir" / "pid"
    log_file = log_file_for(harness, user, "create.json")
    result = bundle.create("--pid-file", str(pid_file), global_args=["--log", log_file, "--log-format", "json"])
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    entry = json.loads(log_file.read_text().splitlines()[-1])
    assert entry["level"] == "error" and entry["errno"] == errno.ENOENT, entry


def test_a_sysctl_the_kernel_does_not_have(make_bundle, harness, user):
    """The write of linux.sysctl goes through the private procfs: a key it has no file for fails to open."""
    bundle = make_bundle(user=user, args=["true"])
    namespaces = bundle.config["linux"]["namespaces"]
    if not any(ns["type"] == "network" for ns in namespaces):
        namespaces.append({"type": "network"})
    bundle.config["linux"]["sysctl"] = {"net.ipv4.ocirt_no_such_key": "1"}
    _, line = failed_run(bundle, harness, user)
    entry = json.loads(line)
    assert (entry["op"], entry["path"], entry["errno"]) == (
        "open", "/proc/sys/net/ipv4/ocirt_no_such_key", errno.ENOENT), entry
