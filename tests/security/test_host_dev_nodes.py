"""The host's device nodes (issue 16 item 9: the host's /dev/null was once found owned by 1000:1000).

A runtime that makes a container's devices through names can be led to the host's /dev: a bind of it
(on /dev or anywhere else in the rootfs), the kernel's single devtmpfs mounted by the config, symlinks of
the image to either. ocirt makes, removes and re-owns /dev entries only through fds inside the rootfs and
never in a directory that is the host's /dev, and the leak check of every test (``helpers.LeakTracker``)
compares the host's null, zero, full, random, urandom, tty, ptmx, console and kmsg before and after.

Cases that change a node on 10b516e use /dev/full (rarely opened by anyone else) and nodes of their own
name; ``test_a_devtmpfs_on_dev_is_used_as_it_is`` is not run against 10b516e, which replaces the host's
/dev/ptmx there."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
from pathlib import Path

import helpers
import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle, without_mount
from security.test_console_symlink import ConsoleSocket, read_all

HOST_REFUSAL = "is the host's /dev"


def host_nodes() -> dict[str, helpers.NodeState | None]:
    return helpers.host_dev_nodes()


def stray_node_name() -> str:
    return f"{helpers.ID_PREFIX}node-{secrets.token_hex(3)}"


def remove_stray(name: str) -> bool:
    """Whether ``/dev/<name>`` existed on the host (it is removed)."""
    path = Path("/dev") / name
    if os.path.lexists(path):
        path.unlink()
        return True
    return False


def bind_host_dev(config: dict, destination: str) -> None:
    config["mounts"].append({"destination": destination, "type": "bind", "source": "/dev",
                             "options": ["rbind", "nosuid", "noexec"]})


def test_a_bind_of_the_host_dev_on_dev_leaves_its_nodes_alone(make_bundle, user, test_dir):
    """The /dev of the container is the host's (``-v /dev:/dev``): no device entry of the config is made or
    re-owned in it, and the console is bound over the host's /dev/console only inside the container."""
    bundle = make_bundle(user=user, terminal=True, args=["sh", "-c", "echo hi > /dev/null; ls -l /dev/console"])
    without_mount(bundle.config, "/dev")
    without_mount(bundle.config, "/dev/mqueue")  # the host's /dev has no mqueue directory to mount on
    bundle.config["mounts"].insert(0, {"destination": "/dev", "type": "bind", "source": "/dev",
                                       "options": ["rbind", "nosuid", "noexec"]})
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600, "uid": 1000, "gid": 1000},
        {"path": "/dev/full", "type": "c", "major": 1, "minor": 5, "uid": 1000, "gid": 1000},
    ]
    before = host_nodes()
    console = ConsoleSocket(test_dir)
    master = None
    try:
        result = bundle.create("--console-socket", console.path)
        if result.returncode != 0:
            assert_clear_error(result)
        else:
            master = console.receive_master()
            assert bundle.start().returncode == 0
            read_all(master)
    finally:
        console.close()
        if master is not None:
            os.close(master)
        bundle.delete(force=True)
    assert host_nodes() == before
    assert_nothing_left(bundle)


@pytest.mark.parametrize("where", ["bind", "devtmpfs"])
def test_device_entries_in_the_host_dev_elsewhere_in_the_rootfs_are_refused(make_bundle, user, where):
    """A bind of the host's /dev (or a devtmpfs) on /mnt/hostdev and device entries below it: on 10b516e,
    /dev/full is replaced by a null device owned by 1000:1000 and a new node is left in the host's /dev."""
    stray = stray_node_name()
    bundle = own_rootfs_bundle(make_bundle, user, args=["true"])
    if where == "bind":
        bind_host_dev(bundle.config, "/mnt/hostdev")
    else:
        bundle.config["mounts"].append({"destination": "/mnt/hostdev", "type": "devtmpfs", "source": "devtmpfs"})
    bundle.config["linux"]["devices"] = [
        {"path": "/mnt/hostdev/full", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600, "uid": 1000,
         "gid": 1000},
        {"path": f"/mnt/hostdev/{stray}", "type": "c", "major": 1, "minor": 3},
    ]
    before = host_nodes()
    try:
        result = bundle.run()
        assert result.returncode != 0
        if user is None or where == "bind":
            assert_clear_error(result, HOST_REFUSAL)
        else:
            assert_clear_error(result)  # the kernel refuses a devtmpfs to a user namespace
    finally:
        assert not remove_stray(stray), f"a node /dev/{stray} was made in the host's /dev"
    assert host_nodes() == before
    assert_nothing_left(bundle)


def test_a_devtmpfs_on_dev_is_used_as_it_is(make_bundle):
    """runc makes its /dev/ptmx symlink in a devtmpfs on /dev, i.e. replaces the host's /dev/ptmx; ocirt
    treats such a /dev like a bind of the host's /dev and changes nothing in it."""
    bundle = make_bundle(args=["sh", "-c", "test -c /dev/null && test -c /dev/ptmx && echo ok"])
    without_mount(bundle.config, "/dev/mqueue")
    for mount in bundle.config["mounts"]:
        if mount["destination"] == "/dev":
            mount.clear()
            mount.update({"destination": "/dev", "type": "devtmpfs", "source": "devtmpfs",
                          "options": ["nosuid", "noexec"]})
    bundle.config["linux"]["devices"] = [{"path": "/dev/full", "type": "c", "major": 1, "minor": 5, "uid": 1000}]
    before = host_nodes()
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert host_nodes() == before
    assert_nothing_left(bundle)


@pytest.mark.parametrize("console", [False, True], ids=["no-terminal", "terminal"])
def test_image_dev_links_into_a_bound_host_dev(make_bundle, user, test_dir, console):
    """The image's own /dev (no /dev mount) holds links to the host's /dev bound at /hostdev: the links are
    replaced by the container's entries, never followed."""
    bundle = own_rootfs_bundle(make_bundle, user, terminal=console,
                               args=["sh", "-c", "stat -c '%n %F %t:%T' /dev/null /dev/zero /dev/full; "
                                                 "test -L /dev/ptmx && echo ptmx-link"])
    without_mount(bundle.config, "/dev")
    bundle.config["mounts"] = [m for m in bundle.config["mounts"] if not m["destination"].startswith("/dev/")]
    bundle.config["mounts"].append({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                                    "options": ["newinstance", "ptmxmode=0666", "mode=0620"]})
    bind_host_dev(bundle.config, "/hostdev")
    bundle.config["root"]["readonly"] = False
    dev = bundle.rootfs / "dev"
    for name in ("null", "zero", "full", "tty", "ptmx", "console", "kmsg"):
        os.symlink(f"/hostdev/{name}", dev / name)
    if user is not None:
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o600, "uid": 1000, "gid": 1000},
        {"path": "/dev/full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o600, "uid": 1000, "gid": 1000},
    ]
    before = host_nodes()
    socket = ConsoleSocket(test_dir) if console else None
    master = None
    try:
        if socket is None:
            result = bundle.run()
            output = result.stdout
        else:
            result = bundle.create("--console-socket", socket.path)
            output = ""
            if result.returncode == 0:
                master = socket.receive_master()
                assert bundle.start().returncode == 0
                output = read_all(master).decode(errors="replace").replace("\r\n", "\n")
        assert result.returncode == 0, result.stderr
        assert "/dev/null character special file 1:3" in output
        assert "/dev/full character special file 1:7" in output
        assert "ptmx-link" in output
    finally:
        if socket is not None:
            socket.close()
        if master is not None:
            os.close(master)
        bundle.delete(force=True)
    assert host_nodes() == before
    # the image's /dev now holds the container's own entries, not links
    assert not (dev / "null").is_symlink()
    assert (dev / "console").is_symlink() != console
    if user is None:
        made = (dev / "kmsg").lstat()
        assert stat.S_ISCHR(made.st_mode) and (made.st_uid, made.st_gid) == (1000, 1000)
    assert_nothing_left(bundle)


@helpers.needs_root("re-owns the host's /dev/full")
def test_leak_check_sees_and_restores_a_changed_host_node():
    """The harness half: a host node changed during a test is reported and put back."""
    before = host_nodes()
    full = before["full"]
    assert full is not None
    os.chown("/dev/full", 1000, 1000)
    os.chmod("/dev/full", 0o600)
    try:
        changes = helpers.host_dev_changes(before)
    finally:
        os.chown("/dev/full", full.uid, full.gid)
        os.chmod("/dev/full", full.mode)
    assert changes == [f"host /dev/full changed: was {full.describe()}, is char 1:7 mode 0600 owner 1000:1000"]
    assert host_nodes() == before


def _ctime_ns(path: str) -> int:
    return os.stat(path).st_ctime_ns


@pytest.mark.parametrize("how", ["run", "create-start", "exec"])
def test_stdio_on_the_host_dev_null_is_never_re_owned(make_bundle, how):
    """The cause of item 9, reproduced on this VM: crun 1.8.1, rootful with a user namespace whose root
    is host uid 1000, fchowns its stdio to that uid, and when the engine gave it /dev/null as stdin it
    re-owns the host's /dev/null to 1000:1000 (runc skips stdio that is /dev/null). ocirt re-owns no
    stdio: the process's stdin, stdout and stderr stay the caller's, /dev/null here, and its owner,
    mode and even its ctime (a chown to the same owner would change it) are as they were."""
    bundle = make_bundle(own_rootfs=True, args=["sh", "-c", "echo out; echo err >&2; sleep 30"
                                                if how != "run" else "echo out; echo err >&2"])
    helpers.chown_tree(bundle.rootfs, 100000, 100000)
    bundle.config["linux"]["namespaces"].append({"type": "user"})
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.config["linux"].pop("resources", None)
    config = bundle.write()
    before, ctime = host_nodes(), _ctime_ns("/dev/null")

    def runtime(*args: str) -> int:
        command = [bundle.runtime_path, "--root", str(bundle.root), *args]
        return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=helpers.base_env(), timeout=30).returncode

    bundle_dir = str(config.parent)
    try:
        if how == "run":
            assert runtime("run", "--bundle", bundle_dir, bundle.id) == 0
        else:
            assert runtime("create", "--bundle", bundle_dir, bundle.id) == 0
            assert runtime("start", bundle.id) == 0
            if how == "exec":
                assert runtime("exec", bundle.id, "sh", "-c", "echo out; echo err >&2") == 0
    finally:
        bundle.delete(force=True)
    assert host_nodes() == before
    assert _ctime_ns("/dev/null") == ctime, "the host's /dev/null was chowned or chmodded"
    assert_nothing_left(bundle)
