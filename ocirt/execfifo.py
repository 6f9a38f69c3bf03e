"""The exec fifo, the mark of the "created" status: create makes it in the state directory, the init
blocks opening its other end, and start opens it, which releases the init to exec the program."""

from __future__ import annotations

import os
import stat

from ocirt.errors import ConfigError, OcirtError, why
from ocirt.faults import crash_point
from ocirt.state import EXEC_FIFO, Container


def make(container: Container, ns_plan, process_plan, linux: dict) -> int | None:
    """The fifo whose opening by `start` lets the init exec. Only the runtime's user (who reads it at
    `start`) and the container's process (which writes it, after its switch to the config's user) may open
    it: 0600, or 0620 with the process's own group when the process runs as another host uid.

    The init holds an O_PATH fd of the fifo from before that switch, but reopening it for writing still
    checks the mode. Returns the gid (as the container sees it) that the init must give the fifo itself,
    when a rootless runtime may not: the subordinate gid of a process that isn't the container's root."""
    os.mkfifo(EXEC_FIFO, 0o600, dir_fd=container.lock_fd)
    # Changed through an fd of the fifo just made: a name swapped for a link in between is never followed.
    fd = os.open(EXEC_FIFO, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=container.lock_fd)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OcirtError(f"{container.fifo_path} is not the fifo just made")
        return _give(fd, ns_plan, process_plan, linux)
    finally:
        os.close(fd)


def _give(fd: int, ns_plan, process_plan, linux: dict) -> int | None:
    mapped = ns_plan.has("user")
    from ocirt.linux.idmap import host_id

    # Without a process the init waits as the container's root.
    uid, gid = (process_plan.uid, process_plan.gid) if process_plan is not None else (0, 0)
    uid_maps, gid_maps = linux.get("uidMappings") or [], linux.get("gidMappings") or []
    host_uid = host_id(uid_maps, uid) if mapped else uid
    host_gid = host_id(gid_maps, gid) if mapped else gid
    if host_uid is not None and host_uid == os.geteuid():
        return None
    if host_gid is not None and (os.geteuid() == 0 or host_gid == os.getegid() or host_gid in os.getgroups()):
        try:
            os.fchown(fd, -1, host_gid)
        except OSError as err:
            if err.errno != 22:  # EINVAL: an id this user namespace of the runtime does not map
                raise
            raise ConfigError(f"$.linux.gidMappings: the host gid {host_gid} of the container's process is not "
                              "mapped in the runtime's own user namespace") from None
        os.fchmod(fd, 0o620)
        return None
    if host_gid is not None and "user" in ns_plan.new and _maps_host_id(uid_maps, os.geteuid()) \
            and _maps_host_id(gid_maps, os.getegid()):
        # The init, root of the new user namespace, may give a file of ours to a gid mapped there.
        os.fchmod(fd, 0o620)
        return gid
    # A user namespace whose maps we don't know (joined) or don't contain us: the mode alone must let the
    # process write. The directory around the fifo is private to the runtime's user all the same.
    os.fchmod(fd, 0o622)
    return None


def _maps_host_id(mappings: list[dict], host: int) -> bool:
    return any(m["hostID"] <= host < m["hostID"] + m["size"] for m in mappings)


def release_init(container: Container) -> None:
    """Open the exec fifo: the init, blocked opening its other end, runs the startContainer hooks and
    execs. It writes "0" (or "E" and the hook's error) and the fifo reaches EOF at its execve.

    The fifo, the mark of the "created" status, goes as soon as the init is released. If a `start` died
    in between, a later one finds the fifo but an init that has already left: it sees the init run
    another program and takes the container as started."""
    import select

    try:
        fd = os.open(EXEC_FIFO, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=container.lock_fd)
    except OSError as err:
        raise OcirtError(f"container {container.id!r}: cannot open its exec fifo: {why(err)}") from None
    received = b""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OcirtError(f"container {container.id!r}: {container.fifo_path} is not a fifo")
        crash_point()
        try:
            os.unlink(EXEC_FIFO, dir_fd=container.lock_fd)
        except FileNotFoundError:
            pass
        crash_point()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            if poller.poll(100):
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                if data:
                    received += data
                    continue
                # EOF counts only once the init has written: before its open returns there is no
                # writer yet, which reads as EOF too.
                if received:
                    break
            if not container.init_alive():
                if received.startswith(b"E"):
                    break
                raise OcirtError(f"container {container.id!r}: its init exited before start")
            if not received and _init_has_left_the_runtime(container.pid):
                return
    finally:
        os.close(fd)
    if received.startswith(b"E"):
        raise OcirtError(received[1:].decode(errors="replace"))


def _init_has_left_the_runtime(pid: int) -> bool:
    """Whether the init already runs the container's program rather than the runtime's interpreter."""
    try:
        exe = os.stat(f"/proc/{pid}/exe")
        own = os.stat("/proc/self/exe")
    except OSError:
        return False
    return (exe.st_dev, exe.st_ino) != (own.st_dev, own.st_ino)
