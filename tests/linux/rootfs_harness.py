"""Run the rootfs code for real in forked namespaces and bring back what the container saw.

``run_rootfs(config, bundle, checks)`` builds the plan in the calling (test) process, as the runtime's
parent does, then forks:

* rootful: the child unshares a mount and a pid namespace (plus uts/ipc/net/cgroup when the config asks),
  and forks the container init (pid 1) that runs prepare/enter/finish and then ``checks()``;
* rootless: the child drops to an unused uid/gid (65500-ish), unshares a user and a mount namespace, the
  test process writes ``0 <uid> 1`` maps (after ``setgroups deny``), and the child goes on as above.

``checks`` runs inside the container after ``finish_rootfs``: it may only use modules that were already
imported (nothing can be imported after pivot_root). Whatever it returns (JSON-able) comes back through a
pipe, as does the message of an exception raised anywhere in the child. When the child is gone, so are its
namespaces and every mount in them: ``host_mounts_under`` lets a test check that nothing stayed behind.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import stat
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ocirt import syscalls
from ocirt.bundle import build_rootfs
from ocirt.linux import rootfs as rootfs_mod

ROOTLESS_UID = 65531
ROOTLESS_GID = 65531
TIMEOUT = 20.0

_NS_FLAGS = {"uts": syscalls.CLONE_NEWUTS, "ipc": syscalls.CLONE_NEWIPC, "network": syscalls.CLONE_NEWNET,
             "cgroup": syscalls.CLONE_NEWCGROUP}


def make_bundle_dir(prefix: str = "ocirt-test-rootfs-") -> Path:
    """A bundle directory with a fresh busybox rootfs, reachable by the rootless test uid."""
    bundle = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(bundle, 0o755)
    build_rootfs(bundle / "rootfs")
    return bundle


def remove_bundle_dir(bundle: Path) -> None:
    shutil.rmtree(bundle, ignore_errors=True)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.lchown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def host_mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points in the host's (this process's) mount table at or below ``path``."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


class ContainerResult(dict):
    """What ``checks`` returned, plus ``error`` (the child's failure message) when there was one."""

    @property
    def error(self) -> str | None:
        return self.get("__error__")


def run_rootfs(config: dict, bundle: str | os.PathLike, checks: Callable[[], dict] | None = None, *,
               rootless: bool = False, console_path: str | None = None,
               plan_kwargs: dict | None = None,
               after_prepare: Callable[[rootfs_mod.RootfsPlan], None] | None = None,
               userns_maps: tuple[str, str] | None = None,
               pre_mounts: Callable[[], None] | None = None,
               parent_sources: bool = False) -> ContainerResult:
    """``userns_maps`` (uid_map, gid_map text): stay root on the host but run in a user namespace with
    these maps. ``pre_mounts`` runs as root in a private mount namespace before privileges are dropped
    (its mounts become locked in the user namespace). ``parent_sources`` prepares idmapped trees in the
    calling process, as the runtime's parent does."""
    bundle = str(bundle)
    plan = rootfs_mod.plan_rootfs(config, bundle, rootless=rootless, **(plan_kwargs or {}))
    if parent_sources:
        rootfs_mod.open_mount_sources(plan)
    namespaces = {ns["type"] for ns in (config.get("linux") or {}).get("namespaces") or []}
    extra_flags = 0
    for name, flag in _NS_FLAGS.items():
        if name in namespaces:
            extra_flags |= flag
    if rootless or userns_maps is not None:
        extra_flags |= syscalls.CLONE_NEWIPC  # mqueue needs an ipc namespace the user namespace owns

    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(result_r)
        os.close(sync_r)
        os.close(go_w)
        _child(plan, checks, rootless, userns_maps, pre_mounts, extra_flags, console_path, after_prepare,
               result_w, sync_w, go_r)
    rootfs_mod.close_mount_sources(plan)
    os.close(result_w)
    os.close(sync_w)
    os.close(go_r)
    try:
        if rootless:
            _map_child(pid, sync_r, go_w, f"0 {ROOTLESS_UID} 1\n", f"0 {ROOTLESS_GID} 1\n", deny=True)
        elif userns_maps is not None:
            _map_child(pid, sync_r, go_w, *userns_maps, deny=False)
        else:
            os.close(go_w)
        go_w = -1
        return _collect(pid, result_r)
    finally:
        os.close(result_r)
        os.close(sync_r)
        if go_w >= 0:
            os.close(go_w)


def _map_child(pid: int, sync_r: int, go_w: int, uid_map: str, gid_map: str, *, deny: bool) -> None:
    ready, _, _ = select.select([sync_r], [], [], TIMEOUT)
    if not ready or os.read(sync_r, 1) != b"u":
        raise RuntimeError("child did not reach its user namespace")
    if deny:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)
    os.write(go_w, b"g")
    os.close(go_w)


def _collect(pid: int, result_r: int) -> ContainerResult:
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError("rootfs test child timed out")
        ready, _, _ = select.select([result_r], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(result_r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks)
    if not raw:
        return ContainerResult(__error__=f"child died without a report (wait status {status})")
    return ContainerResult(json.loads(raw))


def _child(plan, checks, rootless, userns_maps, pre_mounts, extra_flags, console_path, after_prepare,
           result_w, sync_w, go_r) -> None:
    code = 0
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        if pre_mounts is not None:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            pre_mounts()
        if rootless:
            os.setgroups([])
            os.setresgid(ROOTLESS_GID, ROOTLESS_GID, ROOTLESS_GID)
            os.setresuid(ROOTLESS_UID, ROOTLESS_UID, ROOTLESS_UID)
        if rootless or userns_maps is not None:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            os.write(sync_w, b"u")
            if os.read(go_r, 1) != b"g":
                raise RuntimeError("parent did not write the id maps")
            if userns_maps is not None:
                # become the namespace's root (host uid 0 is not mapped in it), as a runtime's init does
                os.setgroups([])
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
        os.close(go_r)
        os.close(sync_w)
        syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID | extra_flags)
        init = os.fork()
        if init == 0:
            _container_init(plan, checks, console_path, after_prepare, result_w)
        os.close(result_w)
        _, status = os.waitpid(init, 0)
        code = os.waitstatus_to_exitcode(status) & 0xFF
    except BaseException as err:  # report anything, never return into pytest
        _report(result_w, {"__error__": f"{type(err).__name__}: {err}",
                           "__traceback__": traceback.format_exc()})
        code = 1
    finally:
        os._exit(code)


def _container_init(plan, checks, console_path, after_prepare, result_w) -> None:
    try:
        rootfs_mod.prepare_rootfs(plan, console_path=console_path)
        if after_prepare is not None:
            after_prepare(plan)
        rootfs_mod.enter_rootfs(plan)
        rootfs_mod.finish_rootfs(plan)
        result = checks() if checks is not None else {}
        _report(result_w, result)
        code = 0
    except BaseException as err:
        _report(result_w, {"__error__": f"{type(err).__name__}: {err}",
                           "__traceback__": traceback.format_exc()})
        code = 1
    os._exit(code)


def _report(fd: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    while data:
        written = os.write(fd, data)
        data = data[written:]


# ---- helpers that checks() can call inside the container (everything they use is imported above) ----

def mountinfo() -> list[dict]:
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            entries.append({"point": fields[4].replace("\\040", " "), "root": fields[3],
                            "options": fields[5].split(","), "optional": fields[6:sep],
                            "fstype": fields[sep + 1], "source": fields[sep + 2],
                            "super": fields[sep + 3].split(",")})
    return entries


def mount_at(point: str) -> dict | None:
    """The topmost mount at ``point`` (the last one listed)."""
    found = None
    for entry in mountinfo():
        if entry["point"] == point:
            found = entry
    return found


def try_write(path: str, data: str = "x") -> str:
    """'ok' or the errno name of the failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as err:
        return _errname(err)
    try:
        os.write(fd, data.encode())
    except OSError as err:
        return _errname(err)
    finally:
        os.close(fd)
    return "ok"


def describe(path: str) -> dict:
    try:
        st = os.lstat(path)
    except OSError as err:
        return {"error": _errname(err)}
    out = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
           "type": stat.filemode(st.st_mode)[0]}
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        out["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    if stat.S_ISLNK(st.st_mode):
        out["link"] = os.readlink(path)
    return out


def _errname(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, str(err))
