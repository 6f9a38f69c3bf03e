"""Ending a container: `delete`, the clean-up after a create that died, and what kill, exec and update share
with them: the container's cgroups as far as they are verifiably its own, and a signal to its init through
a pidfd."""

from __future__ import annotations

import os
import time

from ocirt import log
from ocirt.config import saved_config
from ocirt.errors import ContainerNotFound, InvalidState, NotRunning, OcirtError, why
from ocirt.faults import crash_point
from ocirt.state import CREATED, CREATING, PAUSED, RUNNING, STOPPED, Container


def signal_init(container: Container, sig: int) -> None:
    # os and _signal have both pidfd calls: no ctypes (3-4 ms to import) on the kill path.
    from _signal import pidfd_send_signal

    try:
        pidfd = os.pidfd_open(container.pid)
    except OSError:
        raise NotRunning(container.id) from None
    try:
        # The pid was checked against its start time before pidfd_open: recheck now that the fd pins it.
        if not container.init_alive():
            raise NotRunning(container.id)
        pidfd_send_signal(pidfd, sig)
    except OSError as err:
        if err.errno == 3:
            raise NotRunning(container.id) from None
        raise OcirtError(f"cannot signal container {container.id!r}: {why(err)}") from None
    finally:
        os.close(pidfd)


def delete(root: str, container_id: str, *, force: bool = False, wait_for_learning: bool = True) -> None:
    try:
        container = Container.load(root, container_id, partial=force)
    except ContainerNotFound:
        if force:
            return
        raise
    try:
        crash_point()
        if container.problem is not None:
            _remove_unreadable(container)
            return
        status = container.status()
        if status in (RUNNING, PAUSED) and not force:
            raise InvalidState(f"cannot delete container {container_id!r} that is not stopped: {status}")
        if status in (CREATING, CREATED) and not force:
            # runtime.md: deleting a container that is not stopped MUST fail (runc deletes a created one).
            raise InvalidState(f"cannot delete container {container_id!r} that is not stopped: {status}")
        manager = None
        if status != STOPPED or container.init_alive():
            # (A stopped container with a live init is one whose create died after the init was made.)
            # The cgroups are verified once, while the init still lives (its own cgroups are evidence then).
            manager = kill_and_wait(container)
            crash_point()
        destroy(container, manager, wait_for_learning=wait_for_learning)
    finally:
        container.close()


def reclaim(container: Container) -> None:
    """Clean up after a create that died (Container.new found its directory, locked and stale)."""
    log.info(f"container {container.id!r}: reclaiming what a create that did not finish left")
    if container.problem is not None:
        _remove_unreadable(container)
        return
    manager = kill_and_wait(container) if container.init_alive() else None
    destroy(container, manager)


def _remove_unreadable(container: Container) -> None:
    """A directory without a usable state: a create that died before its first save (nothing else of it
    exists yet), or a damaged file, which ocirt's atomic saves never leave. The saved config, if it still
    reads, says where the container's cgroups would be; of those, the ones carrying this directory's tag
    are the container's, and go with every process in them. The rest can't be identified."""
    from ocirt.state import NO_STATE

    if container.problem != NO_STATE:
        reclaimed = _kill_fifo_holders(container)
        reclaimed = _reclaim_cgroups_by_tag(container) or reclaimed
        log.warning(f"container {container.id!r}: its state is unreadable ({container.problem}): removing its "
                    + ("directory and what it could identify as its own" if reclaimed else
                       "directory; its processes and cgroups, if any, can't be identified"))
    container.remove()


def _kill_fifo_holders(container: Container) -> bool:
    """Kill the caller's processes that hold the container's exec fifo: an init still waiting for `start`
    (it keeps an O_PATH fd of the fifo from before its pivot_root). True if there was one."""
    try:
        fifo = os.stat(container.fifo_path, follow_symlinks=False)
    except OSError:
        return False
    killed = False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look into
        for fd in fds:
            try:
                held = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (held.st_dev, held.st_ino) == (fifo.st_dev, fifo.st_ino):
                try:
                    os.kill(int(name), 9)
                    killed = True
                except OSError:
                    pass
                break
    return killed


def _reclaim_cgroups_by_tag(container: Container) -> bool:
    """Kill and remove the cgroups the saved config names that carry the container's tag; True if any."""
    try:
        config = saved_config(container)
    except OcirtError:
        return False
    linux = config.get("linux")
    cgroups_path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    from ocirt import cgroups

    try:
        owner = cgroups.owner_of(container.dir)
        fresh = cgroups.open_manager(container.id, cgroups_path if isinstance(cgroups_path, str) else None,
                                     rootless=os.geteuid() != 0, resources=None, owner=owner)
        manager = cgroups.load_manager(dict(fresh.to_state(), creating=True), owner=owner)
    except OcirtError as err:
        log.debug(f"container {container.id!r}: its cgroups can't be found: {err}")
        return False
    if not manager.paths():
        return False
    container.runtime["cgroup"] = manager.to_state()
    destroy_cgroups(container, manager)
    return True


def kill_and_wait(container: Container):
    manager = cgroup_manager(container, for_cleanup=True)
    signalled = False
    if container.init_alive():
        try:
            signal_init(container, 9)
            signalled = True
        except NotRunning:
            pass
        except OcirtError as err:
            # Not a process this caller may signal, so not the container's init (whose user namespace or
            # uid is the caller's): a state that names someone else's process, which stays untouched.
            log.warning(f"{err}: leaving that process alone")
    if manager is not None:
        try:
            manager.kill_all(9)
            manager.thaw()
        except OcirtError as err:
            log.debug(f"kill --all during delete: {err}")
    deadline = time.monotonic() + 10
    while signalled and container.init_alive():
        if time.monotonic() > deadline:
            raise OcirtError(f"container {container.id!r}: its init did not die after SIGKILL")
        time.sleep(0.002)
    return manager


def cgroup_manager(container: Container, *, for_cleanup: bool = False):
    """The container's cgroups, as far as they are verifiably its own; None when it has none. A record
    that doesn't parse fails the command, or, while cleaning up, is reported and skipped."""
    if not container.runtime.get("cgroup"):
        return None
    from ocirt import cgroups

    try:
        return cgroups.container_manager(container)
    except OcirtError as err:
        if not for_cleanup:
            raise OcirtError(f"container {container.id!r}: {err}") from None
        log.warning(f"container {container.id!r}: {err}; its cgroups, if any, stay")
        return None


def destroy_cgroups(container: Container, manager) -> None:
    """Kill what is left in the container's cgroups and remove them, retrying while the kernel is busy."""
    deadline = time.monotonic() + 5
    while True:
        try:
            if manager.pids():
                manager.kill_all(9)
                manager.thaw()
            manager.destroy()
            log.trace("cgroups", "removed")
            return
        except OcirtError as err:
            if time.monotonic() > deadline:
                log.warning(f"cannot remove the cgroups of {container.id!r}: {err}")
                return
            time.sleep(0.01)


def destroy(container: Container, manager=None, *, wait_for_learning: bool = True) -> None:
    """Release everything a stopped container still holds, then forget it. A learning container's
    recorder is given time to write its profile first (``wait_for_learning``)."""
    runtime = container.runtime
    manager = manager or cgroup_manager(container, for_cleanup=True)
    if manager is not None:
        destroy_cgroups(container, manager)
        crash_point()
    # linux.netDevices are not moved back (config-linux.md: the runtime MUST NOT move them out before the
    # namespace is gone): a physical device returns to the host with the namespace, a virtual one dies.
    hooks = runtime.get("hooks") or {}
    if hooks.get("poststop"):
        from ocirt.hooks import run_hooks_logged

        state = container.spec_state()
        state["status"] = STOPPED
        run_hooks_logged(hooks["poststop"], "poststop", state)
        crash_point()
    learning = runtime.get("seccomp_learn")
    if learning and wait_for_learning:
        from ocirt.linux.seccomp_learn import wait_for_recorder

        if not wait_for_recorder(learning, RECORDER_TIMEOUT):
            log.warning(f"--seccomp-learn: processes of {container.id!r} still use its filter: "
                        f"{learning.get('profile')} is written when the last one exits")
    container.remove()
    log.trace("delete", "state of %s removed", container.id)


# How long delete and run wait for a learning container's recorder to write its profile.
RECORDER_TIMEOUT = 10.0
