"""create's planner (ocirt/linux/initplan.py): a config becomes the init's plan, or is refused, before anything
exists. No root, no namespaces: the planner only reads the config and the host."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ocirt.container import CreateOptions
from ocirt.errors import ConfigError
from ocirt.linux import initplan
from ocirt.spec.default import default_config


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def detached_config() -> dict:
    """`ocirt spec`'s config, without the terminal (a detached create then needs a console socket)."""
    config = default_config()
    config["process"]["terminal"] = False
    return config


def options(bundle: Path, **kwargs) -> CreateOptions:
    return CreateOptions(root=str(bundle / "state"), container_id="planned", bundle=str(bundle), **kwargs)


def test_a_default_config_is_planned_and_nothing_is_made(bundle: Path) -> None:
    before = sorted(os.listdir(bundle))
    plan = initplan.plan_init(detached_config(), options(bundle))
    assert sorted(os.listdir(bundle)) == before
    assert plan.rootfs_path == str(bundle / "rootfs")
    assert {"mount", "pid", "ipc", "uts", "network"} <= set(plan.namespaces.new)
    assert plan.process is not None and plan.process.args == ["sh"]
    assert plan.seccomp is None and plan.cgroup is None and plan.fifo_path == ""
    assert not hasattr(plan, "rootfs")  # the mounts wait for the cgroup paths


def test_the_mounts_are_planned_with_the_cgroup_paths(bundle: Path) -> None:
    config = detached_config()
    config["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup"})
    plan = initplan.plan_init(config, options(bundle))
    initplan.plan_mounts(plan, {"unified": "/sys/fs/cgroup/unified/ocirt-planned"})
    assert [m.destination for m in plan.rootfs.mounts] == [m["destination"] for m in config["mounts"]]
    assert plan.rootfs.mounts[-1].cgroup2_source == "/sys/fs/cgroup/unified/ocirt-planned"


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["linux"].__setitem__("sysctl", {"kernel.core_pattern": "|/bin/sh"}), "is not namespaced"),
    (lambda c: c["linux"].__setitem__("sysctl", {"net.ipv4.ip_forward": "1"}) or
     c["linux"].__setitem__("namespaces", [n for n in c["linux"]["namespaces"] if n["type"] != "network"]),
     "needs a network namespace"),
    (lambda c: c["root"].__setitem__("path", "missing"), "does not exist or is not a directory"),
    (lambda c: c["root"].pop("path"), "root.path is not set"),
    (lambda c: c["linux"].__setitem__("netDevices", {"eth9": {}}) or
     c["linux"].__setitem__("namespaces", [n for n in c["linux"]["namespaces"] if n["type"] != "network"]),
     "needs a network namespace of its own"),
])
def test_a_refused_config_is_refused_by_the_planner(bundle: Path, change, message: str) -> None:
    config = detached_config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        initplan.plan_init(config, options(bundle))


def test_run_needs_a_process_and_create_does_not(bundle: Path) -> None:
    config = detached_config()
    del config["process"]
    assert initplan.plan_init(dict(config), options(bundle)).process is None
    with pytest.raises(ConfigError, match="run needs a process"):
        initplan.plan_init(config, options(bundle), for_run=True)


def test_a_detached_terminal_needs_a_console_socket(bundle: Path) -> None:
    config = default_config()
    with pytest.raises(ConfigError, match="needs --console-socket"):
        initplan.plan_init(config, options(bundle))
    plan = initplan.plan_init(config, options(bundle, detach=False, relay_console=True))
    assert plan.relay_console


def test_the_callers_notify_socket_and_listen_fds_reach_the_process(bundle: Path, monkeypatch) -> None:
    path = str(bundle / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        config = detached_config()
        plan = initplan.plan_init(config, options(bundle, listen_fds=2, preserve_fds=2))
    bind = config["mounts"][-1]
    assert (bind["source"], bind["destination"]) == (path, initplan.NOTIFY_SOCKET_IN_CONTAINER)
    assert f"NOTIFY_SOCKET={initplan.NOTIFY_SOCKET_IN_CONTAINER}" in plan.process.env
    assert {"LISTEN_FDS=2", "LISTEN_PID=1"} <= set(plan.process.env)
