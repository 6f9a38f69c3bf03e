"""uid/gid maps of a new user namespace, written from the runtime (parent) side.

Root may write any map itself. An unprivileged user may write only a single mapping of its own ids, and
only after denying setgroups(2); anything larger goes through the setuid helpers newuidmap/newgidmap, which
check /etc/subuid and /etc/subgid.
"""

from __future__ import annotations

import os

from ocirt.errors import OcirtError


def _format(mappings: list[dict]) -> str:
    return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)


def is_own_single_map(uid_mappings: list[dict], gid_mappings: list[dict], uid: int, gid: int) -> bool:
    return (
        len(uid_mappings) == 1 and len(gid_mappings) == 1
        and uid_mappings[0]["hostID"] == uid and uid_mappings[0]["size"] == 1
        and gid_mappings[0]["hostID"] == gid and gid_mappings[0]["size"] == 1
    )


def maps_container_gid(gid_mappings: list[dict], container_gid: int) -> bool:
    return any(m["containerID"] <= container_gid < m["containerID"] + m["size"] for m in gid_mappings)


def host_id(mappings: list[dict], container_id: int) -> int | None:
    for m in mappings:
        if m["containerID"] <= container_id < m["containerID"] + m["size"]:
            return m["hostID"] + container_id - m["containerID"]
    return None


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    except OSError as err:
        err.filename = path  # for the error's path field: the write itself names no file
        raise
    finally:
        os.close(fd)


def write_maps(pid: int, uid_mappings: list[dict], gid_mappings: list[dict]) -> None:
    if not uid_mappings or not gid_mappings:
        missing = "linux.uidMappings" if not uid_mappings else "linux.gidMappings"
        raise OcirtError(f"a new user namespace needs id mappings, and {missing} is empty")
    euid, egid = os.geteuid(), os.getegid()
    if euid == 0:
        try:
            _write(f"/proc/{pid}/gid_map", _format(gid_mappings))
            _write(f"/proc/{pid}/uid_map", _format(uid_mappings))
        except OSError as err:
            raise OcirtError.from_os(err, "write", what="cannot write the user namespace's id maps") from None
        return
    if is_own_single_map(uid_mappings, gid_mappings, euid, egid):
        try:
            _write(f"/proc/{pid}/setgroups", "deny")
            _write(f"/proc/{pid}/gid_map", _format(gid_mappings))
            _write(f"/proc/{pid}/uid_map", _format(uid_mappings))
        except OSError as err:
            raise OcirtError.from_os(err, "write", what="cannot write the user namespace's id maps") from None
        return
    _run_helper("newgidmap", pid, gid_mappings, "/etc/subgid")
    _run_helper("newuidmap", pid, uid_mappings, "/etc/subuid")


def _run_helper(tool: str, pid: int, mappings: list[dict], grant_file: str) -> None:
    import pwd
    import subprocess

    # Not shutil.which: shutil pulls in re, bz2 and lzma (up to 10 ms and 1.3 MiB) for one lookup.
    path = next((f"{d}/{tool}" for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
                 if os.access(f"{d}/{tool}", os.X_OK)), None)
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    if path is None:
        raise OcirtError(
            f"the config maps more than your own id, which needs {tool} (Debian package uidmap) "
            f"and a range for {user} in {grant_file}"
        )
    args = [path, str(pid)]
    for m in mappings:
        args += [str(m["containerID"]), str(m["hostID"]), str(m["size"])]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        own = os.geteuid() if tool == "newuidmap" else os.getegid()
        wanted = ", ".join(f"{m['hostID']}-{m['hostID'] + m['size'] - 1}" for m in mappings
                           if not (m["hostID"] == own and m["size"] == 1))
        raise OcirtError(
            f"{tool} refused the mapping ({result.stderr.strip() or 'exit ' + str(result.returncode)}): "
            f"host ids {wanted} must be granted to {user} in {grant_file}, e.g. a line "
            f"'{user}:{mappings[-1]['hostID']}:{mappings[-1]['size']}'"
        )
