"""root.readonly and mounts: order, options, bind and tmpfs, recursive attributes, propagation."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from conformance.harness import CaseContext, CaseFailed, case, check


@dataclass
class MountLine:
    mount_point: str
    mount_options: set[str]
    optional: list[str]
    fs_type: str
    super_options: set[str]


def parse_mountinfo(text: str) -> list[MountLine]:
    lines = []
    for raw in text.splitlines():
        fields = raw.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        lines.append(MountLine(fields[4], set(fields[5].split(",")), fields[6:dash], fields[dash + 1],
                               set(fields[dash + 3].split(",")) if len(fields) > dash + 3 else set()))
    return lines


def container_mount(ctx: CaseContext, mount_point: str) -> MountLine:
    """The topmost mount at ``mount_point`` as the container's own /proc/self/mountinfo shows it."""
    mounts = [m for m in parse_mountinfo(ctx.run_ok(["cat", "/proc/self/mountinfo"]))
              if m.mount_point == mount_point]
    if not mounts:
        raise CaseFailed(f"nothing is mounted at {mount_point} in the container")
    return mounts[-1]


def write_fails_read_only(ctx: CaseContext, path: str) -> None:
    result = ctx.run(["touch", path])
    check(result.returncode != 0, f"writing {path} succeeded")
    check("Read-only file system" in result.output, f"writing {path} failed, but not as read-only: "
          f"{result.describe()}")


@case("root_readonly_true", "config.md#root", "root.readonly true makes the root filesystem read-only")
def root_readonly_true(ctx: CaseContext) -> None:
    ctx.config["root"]["readonly"] = True
    write_fails_read_only(ctx, "/conformance-file")


@case("root_readonly_false", "config.md#root", "root.readonly false leaves the root filesystem writable")
def root_readonly_false(ctx: CaseContext) -> None:
    ctx.config["root"]["readonly"] = False
    ctx.run_ok(["touch", "/conformance-file"])
    check((ctx.bundle / "rootfs" / "conformance-file").exists(), "the file did not land in the rootfs")


@case("mounts_order", "config.md#mounts", "mounts are performed in the listed order, so a later one covers an earlier")
def mounts_order(ctx: CaseContext) -> None:
    first, second = ctx.host_dir("first"), ctx.host_dir("second")
    (first / "from-first").write_text("1")
    (second / "from-second").write_text("2")
    ctx.rootfs_dir("/mnt/o")
    ctx.bind(first, "/mnt/o")
    ctx.bind(second, "/mnt/o")
    out = ctx.run_ok(["ls", "/mnt/o"]).split()
    check(out == ["from-second"], f"/mnt/o shows {out}, expected the second mount's file only")


@case("mounts_tmpfs_options", "config.md#mounts",
      "a tmpfs mount gets its flags (nosuid, nodev, noexec) and its data options (mode, size)")
def mounts_tmpfs_options(ctx: CaseContext) -> None:
    ctx.rootfs_dir("/mnt/t")
    ctx.tmpfs("/mnt/t", ["nosuid", "nodev", "noexec", "mode=710", "size=1m"])
    mount = container_mount(ctx, "/mnt/t")
    check(mount.fs_type == "tmpfs", f"/mnt/t is {mount.fs_type}")
    missing = {"nosuid", "nodev", "noexec"} - mount.mount_options
    check(not missing, f"flags {sorted(missing)} missing from {sorted(mount.mount_options)}")
    check("size=1024k" in mount.super_options and "mode=710" in mount.super_options,
          f"data options are {sorted(mount.super_options)}")


@case("mounts_tmpfs_ro", "config.md#mounts", "the ro option makes a mount read-only")
def mounts_tmpfs_ro(ctx: CaseContext) -> None:
    ctx.rootfs_dir("/mnt/t")
    ctx.tmpfs("/mnt/t", ["ro", "nosuid"])
    write_fails_read_only(ctx, "/mnt/t/file")


@case("mounts_bind_dir", "config.md#mounts", "a bind mount shows the host directory, writable unless ro")
def mounts_bind_dir(ctx: CaseContext) -> None:
    shared = ctx.host_dir("shared")
    (shared / "hello").write_text("from the host\n")
    ctx.rootfs_dir("/mnt/b")
    ctx.bind(shared, "/mnt/b", ["rbind", "rw"])
    out = ctx.run_ok(["sh", "-c", "cat /mnt/b/hello && echo back > /mnt/b/reply"])
    check(out == "from the host\n", f"read {out!r} through the bind mount")
    check((shared / "reply").read_text() == "back\n", "a write through the bind mount did not reach the host")


@case("mounts_bind_ro", "config.md#mounts", "a bind mount with ro is read-only in the container")
def mounts_bind_ro(ctx: CaseContext) -> None:
    shared = ctx.host_dir("shared")
    ctx.rootfs_dir("/mnt/b")
    ctx.bind(shared, "/mnt/b", ["rbind", "ro"])
    write_fails_read_only(ctx, "/mnt/b/file")


@case("mounts_bind_file", "config.md#mounts", "a bind mount of a single file shows that file")
def mounts_bind_file(ctx: CaseContext) -> None:
    source = ctx.host_dir("files") / "note"
    source.write_text("single file\n")
    ctx.chown(source)
    (ctx.bundle / "rootfs" / "etc" / "note").write_text("")
    ctx.bind(source, "/etc/note", ["bind", "ro"])
    out = ctx.run_ok(["cat", "/etc/note"])
    check(out == "single file\n", f"/etc/note reads {out!r}")


@case("mounts_bind_without_type", "config.md#mounts",
      "a mount with no type and the bind option is a bind mount")
def mounts_bind_without_type(ctx: CaseContext) -> None:
    shared = ctx.host_dir("shared")
    (shared / "hello").write_text("typeless\n")
    ctx.rootfs_dir("/mnt/b")
    ctx.config["mounts"].append({"destination": "/mnt/b", "source": str(shared), "options": ["rbind"]})
    out = ctx.run_ok(["cat", "/mnt/b/hello"])
    check(out == "typeless\n", f"read {out!r} through the typeless bind mount")


@case("mounts_rro_recursive", "config.md#mounts",
      "the rro option makes a bind mount and every mount below it read-only")
def mounts_rro_recursive(ctx: CaseContext) -> None:
    tree = ctx.host_dir("tree")
    sub = tree / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "conformance-sub", str(sub)], check=True)
    ctx.add_cleanup(lambda: subprocess.run(["umount", "-l", str(sub)], check=False))
    ctx.rootfs_dir("/mnt/r")
    ctx.bind(tree, "/mnt/r", ["rbind", "rro"])
    ctx.skip_if_undeclared("the rro mount option", lambda f: "rro" in f.get("mountOptions", ["rro"]))
    write_fails_read_only(ctx, "/mnt/r/sub/file")


@case("mounts_propagation_shared", "config.md#mounts",
      "the rshared option gives the mount shared propagation")
def mounts_propagation_shared(ctx: CaseContext) -> None:
    shared = ctx.host_dir("shared")
    ctx.rootfs_dir("/mnt/s")
    ctx.bind(shared, "/mnt/s", ["rbind", "rshared"])
    mount = container_mount(ctx, "/mnt/s")
    check(any(tag.startswith("shared:") for tag in mount.optional),
          f"/mnt/s propagation is {mount.optional or 'private'}, expected shared")


@case("mounts_propagation_private", "config.md#mounts",
      "the rprivate option gives the mount private propagation")
def mounts_propagation_private(ctx: CaseContext) -> None:
    shared = ctx.host_dir("shared")
    ctx.rootfs_dir("/mnt/p")
    ctx.bind(shared, "/mnt/p", ["rbind", "rprivate"])
    mount = container_mount(ctx, "/mnt/p")
    check(not mount.optional, f"/mnt/p propagation is {mount.optional}, expected private")


@case("mounts_idmapped", "config.md#posix-platform-mounts",
      "a mount with uidMappings and gidMappings is an idmapped mount: ids on disk are shifted by the mapping",
      rootful_only="an idmapped mount of a host filesystem needs CAP_SYS_ADMIN in the initial user namespace")
def mounts_idmapped(ctx: CaseContext) -> None:
    ctx.skip_if_undeclared("the idmap mount option", lambda f: "idmap" in f.get("mountOptions", ["idmap"]))
    base, size = 300000, 65536
    shared = ctx.host_dir("shared")
    (shared / "owned-by-root").write_text("x")
    ctx.config["linux"]["namespaces"].append({"type": "user"})
    ctx.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": base, "size": size}]
    ctx.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": base, "size": size}]
    ctx.rootfs_dir("/mnt/idm")
    mapping = [{"containerID": 0, "hostID": base, "size": size}]
    ctx.config["mounts"].append({"destination": "/mnt/idm", "type": "bind", "source": str(shared),
                                 "options": ["rbind", "idmap"], "uidMappings": mapping, "gidMappings": mapping})
    result = ctx.run(["stat", "-c", "%u:%g", "/mnt/idm/owned-by-root"])
    check(result.returncode == 0, f"run with an idmapped mount failed: {result.describe()}")
    owner = result.stdout.strip()
    # Unmapped, the host's root would show as the overflow id 65534 inside the container's user namespace.
    check(owner == "0:0", f"the file owned by host root shows as {owner} through the idmapped mount, expected 0:0")
