"""Reading and writing cgroupfs files, shared by the v1 and v2 code.

Every kernel refusal becomes a CgroupError that names the file and the value, because a bare
errno ("Invalid argument") tells nobody which of a dozen limits was wrong.
"""

from __future__ import annotations

import errno
import os
import time

from ocirt.errors import CgroupError, why


def write(directory: str, name: str, value: str) -> None:
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.isdir(directory):
            raise CgroupError(f"cannot set {name} to {value}: the kernel offers no {name} in {directory}") from None
        raise CgroupError(f"cannot set {name} to {value}: {why(err)}") from None
    try:
        os.write(fd, value.encode())
    except OSError as err:
        raise CgroupError(f"cannot set {name} to {value}: {why(err)}") from None
    finally:
        os.close(fd)


def read(directory: str, name: str) -> str:
    with open(os.path.join(directory, name)) as handle:
        return handle.read().strip()


def read_or_none(directory: str, name: str) -> str | None:
    try:
        return read(directory, name)
    except OSError:
        return None


def read_int(directory: str, name: str, default: int = 0) -> int:
    text = read_or_none(directory, name)
    if text is None or text == "" or text == "max":
        return default
    try:
        return int(text.split()[0])
    except ValueError:
        return default


def read_keyed(directory: str, name: str) -> dict[str, int]:
    """Parse "key value" lines (memory.stat, cpu.stat, memory.events...)."""
    result: dict[str, int] = {}
    text = read_or_none(directory, name)
    if not text:
        return result
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return result


def exists(directory: str, name: str) -> bool:
    return os.path.exists(os.path.join(directory, name))


def make_dirs(path: str, created: list[str]) -> None:
    """mkdir -p that records, top-down, each directory it made, so a failure can undo exactly those.

    A parent can vanish between the look and the mkdir below it: another container's delete removes the
    parents it made once they are empty. Then the walk starts again.
    """
    for _attempt in range(5):
        missing: list[str] = []
        probe = path
        while not os.path.isdir(probe):
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        try:
            for directory in reversed(missing):
                try:
                    os.mkdir(directory, 0o755)
                except FileExistsError:
                    continue
                created.append(directory)
            return
        except FileNotFoundError:
            continue
        except OSError as err:
            raise CgroupError(f"cannot create cgroup {directory}: {why(err)}") from None
    raise CgroupError(f"cannot create cgroup {path}: its parents keep disappearing")


def procs_in(directory: str) -> list[int]:
    text = read_or_none(directory, "cgroup.procs")
    if not text:
        return []
    return [int(line) for line in text.split()]


def procs_recursive(directory: str) -> list[int]:
    found: list[int] = []
    seen: set[int] = set()
    for current, subdirs, _files in os.walk(directory):
        for pid in procs_in(current):
            if pid not in seen:
                seen.add(pid)
                found.append(pid)
        subdirs.sort()
    return found


def remove_one(directory: str, timeout: float = 0.5) -> bool:
    """rmdir exactly this cgroup (never its children, which may belong to someone else)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def remove_tree(directory: str, timeout: float = 2.0) -> None:
    """rmdir the cgroup and its descendants, leaves first.

    A cgroup whose last task just exited stays busy for a moment while the kernel finishes
    uncharging it, so EBUSY is retried with a short back-off before giving up.
    """
    if not os.path.isdir(directory):
        return
    leaves_first = [current for current, _dirs, _files in os.walk(directory, topdown=False)]
    deadline = time.monotonic() + timeout
    for current in leaves_first:
        delay = 0.001
        while True:
            try:
                os.rmdir(current)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    continue
                pids = procs_in(current)
                detail = f" (processes still inside: {' '.join(map(str, pids[:10]))})" if pids else ""
                raise CgroupError(f"cannot remove cgroup {current}: {why(err)}{detail}") from None


def nearest_existing(directory: str) -> str:
    probe = directory
    while not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def writable(directory: str, *, ancestor_procs: bool) -> bool:
    """Whether the caller may create this cgroup (or already owns it) and move tasks into it.

    The decision is runc's: the nearest existing ancestor of the target must be writable by the caller
    (or the target exists and its cgroup.procs is). ``ancestor_procs``: that ancestor's cgroup.procs must
    be writable too.
    """
    probe = nearest_existing(directory)
    if not os.path.isdir(probe):
        return False
    if probe == directory:
        return os.access(os.path.join(directory, "cgroup.procs"), os.W_OK)
    return os.access(probe, os.W_OK | os.X_OK) and (
        not ancestor_procs or os.access(os.path.join(probe, "cgroup.procs"), os.W_OK))


def migratable(directory: str, source: str) -> bool:
    """cgroup v2: whether the caller, now in cgroup ``source``, may create ``directory`` and move itself in.

    The kernel wants write access to the cgroup.procs of the common ancestor of the source and the
    destination (cgroup-v2.rst, "Delegation Containment"), besides the right to create the destination.
    """
    if not writable(directory, ancestor_procs=False):
        return False
    common = os.path.commonpath([directory, source])
    return os.access(os.path.join(common, "cgroup.procs"), os.W_OK)


def has_children(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(entry.is_dir(follow_symlinks=False) for entry in entries)
    except OSError:
        return False


# -- ownership tags -------------------------------------------------------------------------------------------
# A cgroup made (or joined) for a container carries an extended attribute naming the container's state
# directory, so a later command can tell the container's cgroups from any path a state file names. Root
# uses the trusted namespace, which only CAP_SYS_ADMIN can write; rootless the user namespace, which only
# the directory's owner can write.

def tag_name(rootless: bool) -> str:
    return "user.ocirt" if rootless else "trusted.ocirt"


def set_tag(directory: str, name: str, value: str) -> bool:
    """False when this kernel (or the caller's rights) keep xattrs off the cgroup."""
    try:
        os.setxattr(directory, name, value.encode())
        return True
    except OSError:
        return False


# get_tag() on a kernel (or filesystem) that keeps xattrs off cgroups, as opposed to a cgroup without a tag.
UNSUPPORTED = "\0unsupported"


def get_tag(directory: str, name: str) -> str | None:
    try:
        return os.getxattr(directory, name).decode(errors="replace")
    except OSError as err:
        return UNSUPPORTED if err.errno in (errno.EOPNOTSUPP, errno.ENOTSUP) else None


def remove_tag(directory: str, name: str) -> None:
    try:
        os.removexattr(directory, name)
    except OSError:
        pass


# -- freezing -------------------------------------------------------------------------------------------------

def freeze_loop(directory: str, request, frozen, thaw, timeout: float) -> None:
    """Ask for a freeze with ``request(first)``, poll ``frozen()`` until it holds; on timeout ``thaw()`` and raise.

    v1 needs the request repeated while the cgroup is FREEZING, v2 only once; both wait the same way.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0005
    request(True)
    while not frozen():
        if time.monotonic() > deadline:
            thaw()
            raise CgroupError(f"cannot freeze {directory}: the tasks did not freeze within {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
        request(False)


def rdma_steps(resources: dict) -> list[tuple[str, str, str]]:
    """linux.resources.rdma as (controller, file, value) steps: rdma.max reads the same in v1 and v2."""
    steps = []
    for device_name, limits in (resources.get("rdma") or {}).items():
        parts = [device_name]
        if limits.get("hcaHandles") is not None:
            parts.append(f"hca_handle={int(limits['hcaHandles'])}")
        if limits.get("hcaObjects") is not None:
            parts.append(f"hca_object={int(limits['hcaObjects'])}")
        if len(parts) > 1:
            steps.append(("rdma", "rdma.max", " ".join(parts)))
    return steps
