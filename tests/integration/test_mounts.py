"""Mounts as runc and crun make them, through the command line, rootful and rootless (issue 15 items 2,
15 and 16): every rootfsPropagation value they accept, read-only /dev and tmpfs mounts with mounts below
them, bind sources that an earlier mount made, destinations through dangling symlinks, the mode of a tmpfs,
and bind sources the container's mapped root can't search. What runc 1.1.5 and crun 1.8.1 do on the same
bundles is in docs/conformance.md ("Mounts")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds bundles for root and for test users")


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


def own_bundle(make_bundle, user, args: list[str]) -> helpers.Bundle:
    """A bundle with a private rootfs (mount points get created in it), owned by the rootless user."""
    bundle = make_bundle(user=user, own_rootfs=True, args=args)
    if user is not None:
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    bundle.config["root"]["readonly"] = False
    return bundle


def run_ok(bundle: helpers.Bundle) -> str:
    result = bundle.run()
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "internal error" not in result.stderr
    return result.stdout


def mountinfo_lines(output: str) -> dict[str, list[str]]:
    """mount point -> the fields of its (last) /proc/self/mountinfo line."""
    return {line.split()[4]: line.split() for line in output.splitlines() if len(line.split()) > 6}


def vfs_options(fields: list[str]) -> set[str]:
    return set(fields[5].split(","))


def optional_fields(fields: list[str]) -> list[str]:
    return fields[6:fields.index("-")]


# ---- linux.rootfsPropagation ----------------------------------------------------------------------------

# value -> (tag expected on "/", whether the other mounts carry it too)
PROPAGATIONS = {
    "private": (None, False), "rprivate": (None, False),
    "slave": (None, False), "rslave": (None, False),
    "shared": ("shared:", False), "rshared": ("shared:", True),
    "unbindable": ("unbindable", False), "runbindable": ("unbindable", True),
}


@pytest.mark.parametrize("value", sorted(PROPAGATIONS))
def test_every_rootfs_propagation_runc_and_crun_accept(make_bundle, user, value):
    bundle = make_bundle(user=user, args=["cat", "/proc/self/mountinfo"])
    bundle.config["linux"]["rootfsPropagation"] = value
    mounts = mountinfo_lines(run_ok(bundle))
    tag, recursive = PROPAGATIONS[value]
    root, proc = optional_fields(mounts["/"]), optional_fields(mounts["/proc"])
    if tag is None:
        assert not [t for t in root + proc if t.startswith(("shared:", "unbindable"))], (root, proc)
    else:
        assert any(t.startswith(tag) for t in root), root
        assert any(t.startswith(tag) for t in proc) == recursive, proc


# ---- read-only mounts with mounts below them -------------------------------------------------------------

def test_read_only_dev_tmpfs_keeps_devpts_devices_and_console_below_it(make_bundle, user):
    """runc's "[ro /dev mount]": the mount points, device nodes and links are made before /dev turns ro."""
    bundle = make_bundle(user=user, args=["sh", "-c", "cat /proc/self/mountinfo; ls /dev; "
                                                      "echo x > /dev/null && touch /dev/new"])
    for mount in bundle.config["mounts"]:
        if mount["destination"] == "/dev":
            mount["options"].append("ro")
    result = bundle.run()
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr
    mounts = mountinfo_lines(result.stdout)
    assert "ro" in vfs_options(mounts["/dev"])
    assert "rw" in vfs_options(mounts["/dev/pts"]) and "rw" in vfs_options(mounts["/dev/shm"])
    for name in ("null", "zero", "tty", "ptmx", "fd", "pts", "mqueue"):
        assert f"\n{name}\n" in result.stdout, name


def test_read_only_dev_with_a_console(make_bundle, user):
    """/dev/console is bound (a file made in /dev) after the /dev mount and before /dev turns read-only."""
    from security.test_console_symlink import ConsoleSocket, read_all

    bundle = make_bundle(user=user, terminal=True, args=["sh", "-c", "grep ' /dev ' /proc/self/mountinfo; "
                                                                     "test -c /dev/console && echo console"])
    for mount in bundle.config["mounts"]:
        if mount["destination"] == "/dev":
            mount["options"].append("ro")
    console = ConsoleSocket(bundle.path)
    master = None
    try:
        result = bundle.create("--console-socket", console.path)
        assert result.returncode == 0, result.stderr
        master = console.receive_master()
        assert bundle.start().returncode == 0
        output = read_all(master).decode()
    finally:
        console.close()
        if master is not None:
            os.close(master)
        bundle.delete(force=True)
    assert " ro," in output and "console" in output


def test_read_only_dev_bind_with_devpts_below_it(make_bundle, user, test_dir):
    source = test_dir / "dev-source"
    source.mkdir()
    if user is not None:
        os.chown(source, user.uid, user.gid)
    bundle = make_bundle(user=user, args=["sh", "-c", "cat /proc/self/mountinfo"])
    for mount in bundle.config["mounts"]:
        if mount["destination"] == "/dev":
            mount.clear()
            mount.update({"destination": "/dev", "type": "bind", "source": str(source),
                          "options": ["rbind", "ro"]})
    mounts = mountinfo_lines(run_ok(bundle))
    assert "ro" in vfs_options(mounts["/dev"])
    assert mounts["/dev/pts"][mounts["/dev/pts"].index("-") + 1] == "devpts"
    assert "rw" in vfs_options(mounts["/dev/pts"])


def test_read_only_tmpfs_with_a_mount_below_it(make_bundle, user):
    bundle = own_bundle(make_bundle, user, args=["sh", "-c", "cat /proc/self/mountinfo; touch /mnt/t/sub/ok"])
    bundle.config["mounts"] += [
        {"destination": "/mnt/t", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "mode=755"]},
        {"destination": "/mnt/t/sub", "type": "tmpfs", "source": "tmpfs"},
    ]
    mounts = mountinfo_lines(run_ok(bundle))
    assert "ro" in vfs_options(mounts["/mnt/t"])
    assert "rw" in vfs_options(mounts["/mnt/t/sub"])


def test_read_only_tmpfs_with_tmpcopyup_is_filled_then_read_only(make_bundle, user):
    bundle = own_bundle(make_bundle, user, args=["sh", "-c", "cat /etc/group >/dev/null && "
                                                             "grep ' /etc ' /proc/self/mountinfo"])
    bundle.config["mounts"].append({"destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["ro", "tmpcopyup"]})
    assert " ro," in run_ok(bundle)


def test_read_only_bind_with_a_mount_below_it_is_refused_like_runc(make_bundle, user, test_dir):
    """Not a /dev and not a tmpfs: the host directory is read-only at once, so no mount point is made in it
    (runc refuses the same way; crun creates the mount point in the host directory)."""
    source = test_dir / "volume"
    source.mkdir()
    if user is not None:
        os.chown(source, user.uid, user.gid)
    bundle = own_bundle(make_bundle, user, args=["true"])
    bundle.config["mounts"] += [
        {"destination": "/mnt/b", "type": "bind", "source": str(source), "options": ["bind", "ro"]},
        {"destination": "/mnt/b/sub", "type": "tmpfs", "source": "tmpfs"},
    ]
    result = bundle.run()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ocirt: mount tmpfs on /mnt/b/sub: cannot create /mnt/b/sub inside the rootfs: read-only file system")
    assert list(source.iterdir()) == []


# ---- bind sources and destinations -----------------------------------------------------------------------

@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "bundle-relative"])
def test_bind_source_that_an_earlier_mount_created(make_bundle, user, test_dir, relative):
    data = test_dir / "data"
    (data / "inner").mkdir(parents=True)
    (data / "inner" / "file").write_text("from the volume\n")
    bundle = own_bundle(make_bundle, user, args=["sh", "-c", "cat /srv/y/inner/file; cat /proc/self/mountinfo"])
    if user is not None:
        helpers.chown_tree(data, user.uid, user.gid)
    inside = "rootfs/mnt/x" if relative else str(bundle.path / "rootfs" / "mnt" / "x")
    # /mnt/x exists only inside the tmpfs, made there as the mount point of the second mount.
    bundle.config["mounts"] += [
        {"destination": "/mnt", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/mnt/x/y", "type": "bind", "source": str(data), "options": ["rbind"]},
        {"destination": "/srv", "type": "bind", "source": inside, "options": ["rbind"]},
    ]
    output = run_ok(bundle)
    assert output.startswith("from the volume\n")
    mounts = mountinfo_lines(output)
    assert mounts["/srv"][3] == "/x" and mounts["/srv/y"][3] == str(data)
    assert not (bundle.rootfs / "mnt" / "x").exists()


def test_bind_source_inside_an_earlier_bind(make_bundle, user, test_dir):
    """runc's "mount order, container bind-mount source": rootfs/mnt/foo exists only through the first
    mount, a bind of a host directory onto /mnt."""
    volume = test_dir / "bind-tmp"
    (volume / "foo").mkdir(parents=True)
    (volume / "foo" / "file").write_text("in foo\n")
    if user is not None:
        helpers.chown_tree(volume, user.uid, user.gid)
    bundle = own_bundle(make_bundle, user, args=["sh", "-c", "cat /srv/file; cat /proc/self/mountinfo"])
    bundle.config["mounts"] += [
        {"destination": "/mnt", "type": "bind", "source": str(volume), "options": ["bind"]},
        {"destination": "/srv", "type": "bind", "source": "rootfs/mnt/foo", "options": ["bind"]},
    ]
    output = run_ok(bundle)
    assert output.startswith("in foo\n")
    assert mountinfo_lines(output)["/srv"][3] == str(volume / "foo")


DANGLING = {
    # name: (link inside the rootfs, its target, mount destination, where the mount must land)
    "last-absolute": ("link", "/nowhere/deep", "/link", "/nowhere/deep"),
    "last-relative": ("mnt/link", "../nowhere", "/mnt/link", "/nowhere"),
    "middle": ("conf", "/real/conf", "/conf/stack", "/real/conf/stack"),
    "climbing": ("mnt/up", "../../../../../../up/there", "/mnt/up/sub", "/up/there/sub"),
    "chain": ("l1", "l2", "/l1/sub", "/x/l3/sub"),
}


@pytest.mark.parametrize("case", sorted(DANGLING))
def test_destination_through_a_dangling_symlink_is_made_inside_the_rootfs(make_bundle, user, case):
    link, target, destination, lands = DANGLING[case]
    bundle = own_bundle(make_bundle, user, args=["cat", "/proc/self/mountinfo"])
    os.symlink(target, bundle.rootfs / link)
    if case == "chain":
        os.symlink("/x/l3", bundle.rootfs / "l2")
    if user is not None:
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    bundle.config["mounts"].append({"destination": destination, "type": "tmpfs", "source": "tmpfs"})
    mounts = mountinfo_lines(run_ok(bundle))
    assert lands in mounts, sorted(mounts)
    assert (bundle.rootfs / lands.lstrip("/")).is_dir()
    assert os.readlink(bundle.rootfs / link) == target
    assert not Path("/up").exists() and not Path("/nowhere").exists()


def test_bind_file_destination_through_a_dangling_symlink(make_bundle, user, test_dir):
    source = test_dir / "volume-file"
    source.write_text("from the volume\n")
    os.chmod(source, 0o644)
    bundle = own_bundle(make_bundle, user, args=["cat", "/flink"])
    os.symlink("/etc/not-there", bundle.rootfs / "flink")
    if user is not None:
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    bundle.config["mounts"].append({"destination": "/flink", "type": "bind", "source": str(source),
                                    "options": ["bind", "ro"]})
    assert run_ok(bundle) == "from the volume\n"
    assert (bundle.rootfs / "etc" / "not-there").is_file()


# ---- tmpfs mode --------------------------------------------------------------------------------------------

def test_tmpfs_mode_is_the_option_else_the_directory_it_covers(make_bundle, user):
    bundle = own_bundle(make_bundle, user, args=["stat", "-c", "%n %a", "/e1", "/e2", "/e3", "/n1", "/n2",
                                                 "/n3", "/n3/deep"])
    for name, mode in (("e1", 0o710), ("e2", 0o710), ("e3", 0o1777)):
        (bundle.rootfs / name).mkdir()
        os.chmod(bundle.rootfs / name, mode)
    if user is not None:
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    bundle.config["mounts"] += [
        {"destination": "/e1", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/e2", "type": "tmpfs", "source": "tmpfs", "options": ["mode=0410"]},
        {"destination": "/e3", "type": "tmpfs", "source": "tmpfs", "options": ["ro"]},
        {"destination": "/n1", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/n2", "type": "tmpfs", "source": "tmpfs", "options": ["mode=0444"]},
        {"destination": "/n3/deep", "type": "tmpfs", "source": "tmpfs", "options": ["mode=700"]},
    ]
    assert run_ok(bundle).split("\n") == ["/e1 710", "/e2 410", "/e3 1777", "/n1 1777", "/n2 444", "/n3 755",
                                          "/n3/deep 700", ""]
    # the mount points made in the image are plain 0755 directories
    assert stat.S_IMODE((bundle.rootfs / "n3" / "deep").stat().st_mode) == 0o755


# ---- user namespaces -----------------------------------------------------------------------------------------

USERNS_HOST_ID = 200000


def userns_bundle(make_bundle, args: list[str]) -> helpers.Bundle:
    """Rootful, with a user namespace whose root is host uid/gid 200000 (which owns the rootfs)."""
    bundle = make_bundle(own_rootfs=True, args=args)
    linux = bundle.config["linux"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": USERNS_HOST_ID, "size": 65536}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": USERNS_HOST_ID, "size": 65536}]
    bundle.config["mounts"] = [m for m in bundle.config["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    bundle.config["root"]["readonly"] = False
    helpers.chown_tree(bundle.rootfs, USERNS_HOST_ID, USERNS_HOST_ID)
    return bundle


def test_userns_bind_of_a_source_the_mapped_root_cannot_search(make_bundle, test_dir):
    """crun's test_userns_bind_mount(_symlink): the path to the source crosses a 0000 directory of the
    host's root; runc and crun open it before entering the user namespace, and so does ocirt."""
    hidden = test_dir / "hidden"
    (hidden / "m").mkdir(parents=True)
    (hidden / "m" / "content").write_text("hello\n")
    os.symlink(hidden / "m", hidden / "s")
    bundle = userns_bundle(make_bundle, ["sh", "-c", "cat /foo/content /foos/content; "
                                                     "grep ' /foo' /proc/self/mountinfo"])
    bundle.config["mounts"] += [
        {"destination": "/foo", "type": "bind", "source": str(hidden / "m"), "options": ["bind", "ro"]},
        {"destination": "/foos", "type": "bind", "source": str(hidden / "s"), "options": ["bind", "ro"]},
    ]
    os.chmod(hidden, 0)
    try:
        output = run_ok(bundle)
    finally:
        os.chmod(hidden, 0o755)
    assert output.startswith("hello\nhello\n")
    mounts = mountinfo_lines(output)
    assert "ro" in vfs_options(mounts["/foo"]) and "ro" in vfs_options(mounts["/foos"])


def test_userns_bind_source_that_an_earlier_mount_created(make_bundle, test_dir):
    """Sources the mapped root can reach are still resolved in the container, after the earlier mounts
    (runc 1.1.5 opens every source first and fails on both; crun passes)."""
    data = test_dir / "data"
    (data / "inner").mkdir(parents=True)
    volume = test_dir / "bind-tmp"
    (volume / "foo").mkdir(parents=True)
    bundle = userns_bundle(make_bundle, ["cat", "/proc/self/mountinfo"])
    bundle.config["mounts"] += [
        {"destination": "/mnt", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/mnt/x/y", "type": "bind", "source": str(data), "options": ["rbind"]},
        {"destination": "/srv", "type": "bind", "source": str(bundle.path / "rootfs" / "mnt" / "x"),
         "options": ["rbind"]},
        {"destination": "/opt", "type": "bind", "source": str(volume), "options": ["bind"]},
        {"destination": "/home", "type": "bind", "source": "rootfs/opt/foo", "options": ["bind"]},
    ]
    mounts = mountinfo_lines(run_ok(bundle))
    assert mounts["/srv"][3] == "/x" and mounts["/srv/y"][3] == str(data)
    assert mounts["/home"][3] == str(volume / "foo")


# ---- runc's own mount-order tree -------------------------------------------------------------------------

def mount_order_tree(bundle: helpers.Bundle, sources: Path) -> None:
    """runc's mounts.bats "mount order, container bind-mount source": binds of host directories (two through
    symlinks) make a tree on /mnt, then binds whose sources are paths of that tree inside the rootfs copy
    parts of it, and the whole of it onto /final. The destinations are written inside the container (runc's
    test prefixes them with the host's rootfs path, which only runc strips: see docs/conformance.md)."""
    for sub in ("a/x", "b/y", "c/z"):
        (sources / sub).mkdir(parents=True)
        (sources / sub / "file").write_text(sub + "\n")
        os.symlink(sub.split("/")[0], sources / f"sym-{sub.split('/')[0]}")
    (bundle.rootfs / "final").mkdir()
    (bundle.rootfs / "mnt").mkdir(exist_ok=True)
    inside = bundle.rootfs

    def bind(source, destination, kind="bind"):
        return {"source": str(source), "destination": destination, "type": "bind", "options": [kind, "rprivate"]}

    bundle.config["mounts"] += [
        bind(sources / "a", "/mnt"), bind(sources / "sym-b", "/mnt/x"), bind(sources / "c", "/mnt/x/y"),
        bind(sources / "sym-a", "/mnt/x/y/z"),
        bind(inside / "mnt" / "x", "/mnt/x/y/z/x", "rbind"), bind(inside / "mnt" / "x" / "y", "/mnt/x/y/z", "rbind"),
        bind(inside / "mnt", "/final", "rbind"),
    ]
    bundle.config["process"]["args"] = ["cat", "/final/x/y/z/z/x/y/z/x/file"]


def test_runcs_mount_order_tree(make_bundle, user, test_dir):
    bundle = own_bundle(make_bundle, user, ["true"])
    sources = test_dir / "bind-src"
    mount_order_tree(bundle, sources)
    if user is not None:
        helpers.chown_tree(sources, user.uid, user.gid)
        helpers.chown_tree(bundle.rootfs, user.uid, user.gid)
    assert run_ok(bundle) == "a/x\n"


def test_runcs_mount_order_tree_with_a_user_namespace(make_bundle, test_dir):
    """The "(userns)" variant: the sources' directory is closed to the mapped root (o-rwx), so the sources
    must be opened before the user namespace is entered (10b516e: `permission denied`), and the binds of
    container paths resolved after the earlier mounts (runc 1.1.5 fails on those)."""
    bundle = userns_bundle(make_bundle, ["true"])
    sources = test_dir / "bind-src"
    mount_order_tree(bundle, sources)
    os.chmod(sources, 0o750)
    helpers.chown_tree(bundle.rootfs, USERNS_HOST_ID, USERNS_HOST_ID)
    assert run_ok(bundle) == "a/x\n"
