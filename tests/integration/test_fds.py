"""File descriptors at the boundary: only 0-2, ``--preserve-fds`` and LISTEN_FDS reach the container's
process, whatever the caller leaked into the runtime; NOTIFY_SOCKET reaches the caller's socket; and the
runtime process that is visible inside the container during ``exec`` is not dumpable.

The container side is observed with the static checker program (``tests/checker``), bound at /mnt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import helpers
import pytest
from checker.build import IN_CONTAINER, checker_binary, mount_checker  # noqa: F401 - checker_binary is a fixture


@pytest.fixture(params=["root", "rootless"])
def user(request) -> helpers.UnprivilegedUser | None:
    if request.param == "rootless":
        return request.getfixturevalue("unprivileged_user")
    return None


def checker_bundle(make_bundle, user, binary: Path, args: list[str]) -> helpers.Bundle:
    bundle = make_bundle(user=user, args=args)
    mount_checker(bundle.config, binary)
    return bundle


def run_with_fds(bundle: helpers.Bundle, args: list, *, fds: dict[int, int] | None = None,
                 env: dict[str, str] | None = None, listen_pid_is_runtime: bool = False,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the runtime with ``fds`` (target number -> our fd) open and inheritable in it, as an engine
    that leaks (or means to pass) descriptors does. With ``listen_pid_is_runtime`` LISTEN_PID is the
    runtime's own pid, as systemd sets it for a socket-activated service."""
    command = [bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root), *map(str, args)]
    if listen_pid_is_runtime:
        command = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh", *command]
    full_env = helpers.base_env(bundle.user)
    full_env.update(env or {})
    fds = fds or {}

    def place_fds() -> None:
        for target, source in fds.items():
            os.dup2(source, target, inheritable=True)

    identity: dict = {}
    if bundle.user is not None:
        identity = {"user": bundle.user.uid, "group": bundle.user.gid, "extra_groups": [],
                    "cwd": bundle.user.home}
    bundle.write()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=full_env,
                              preexec_fn=place_fds, pass_fds=tuple(fds), timeout=timeout, **identity)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())


def fd_table(output: str) -> dict[int, str]:
    """The checker's ``fds`` listing as {fd: target}."""
    table = {}
    for line in output.splitlines():
        number, _, target = line.partition(" ")
        if number.isdigit():
            table[int(number)] = target
    return table


@contextlib.contextmanager
def pipe_with(data: bytes):
    """A pipe holding ``data`` whose write end is closed: the reader sees ``data`` then end of file."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    try:
        yield read_end
    finally:
        os.close(read_end)


@contextlib.contextmanager
def leaked_host_fds():
    """Two fds a careless caller leaks: the host's root directory and a host file."""
    directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    file = os.open("/etc/hostname", os.O_RDONLY)
    try:
        yield {3: directory, 9: file}
    finally:
        os.close(directory)
        os.close(file)


@pytest.fixture
def running_checker(make_bundle, user, checker_binary):  # noqa: F811 - pytest fixture injection
    bundle = checker_bundle(make_bundle, user, checker_binary, ["sleep", "600"])
    result = bundle.run("-d")
    assert result.returncode == 0, result.stderr
    yield bundle
    bundle.delete(force=True)


# -- only 0, 1, 2 ---------------------------------------------------------------------------------------------
def test_run_passes_only_stdio_even_when_the_caller_leaks_fds(make_bundle, user, checker_binary):  # noqa: F811
    bundle = checker_bundle(make_bundle, user, checker_binary, [IN_CONTAINER, "fds"])
    with leaked_host_fds() as leaked:
        result = run_with_fds(bundle, ["run", "--bundle", bundle.path, bundle.id], fds=leaked)
    assert result.returncode == 0, result.stderr
    assert sorted(fd_table(result.stdout)) == [0, 1, 2], result.stdout


def test_create_passes_only_stdio_when_the_caller_leaks_fd_3_like_containerds_shim(make_bundle, user,
                                                                                     checker_binary):  # noqa: F811
    bundle = checker_bundle(make_bundle, user, checker_binary, [IN_CONTAINER, "fds"])
    out = bundle.path / "init.out"
    with leaked_host_fds() as leaked, open(out, "w") as out_file:
        if bundle.user is not None:
            os.fchown(out_file.fileno(), bundle.user.uid, bundle.user.gid)
        leaked[1] = out_file.fileno()
        result = run_with_fds(bundle, ["create", "--bundle", bundle.path, bundle.id], fds=leaked)
    assert result.returncode == 0, result.stderr
    assert bundle.start().returncode == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and bundle.state()["status"] != "stopped":
        time.sleep(0.02)
    assert sorted(fd_table(out.read_text())) == [0, 1, 2], out.read_text()
    assert bundle.delete().returncode == 0


def test_exec_passes_only_stdio_even_when_the_caller_leaks_fds(running_checker):
    with leaked_host_fds() as leaked:
        result = run_with_fds(running_checker, ["exec", running_checker.id, IN_CONTAINER, "fds"], fds=leaked)
    assert result.returncode == 0, result.stderr
    assert sorted(fd_table(result.stdout)) == [0, 1, 2], result.stdout


def test_a_detached_exec_passes_only_stdio(running_checker):
    out = running_checker.path / "exec.out"
    with leaked_host_fds() as leaked, open(out, "w") as out_file:
        if running_checker.user is not None:
            os.fchown(out_file.fileno(), running_checker.user.uid, running_checker.user.gid)
        leaked[1] = out_file.fileno()
        result = run_with_fds(running_checker, ["exec", "-d", running_checker.id, IN_CONTAINER, "fds"],
                              fds=leaked)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "2 " not in out.read_text():
        time.sleep(0.02)
    assert sorted(fd_table(out.read_text())) == [0, 1, 2], out.read_text()


# -- --preserve-fds -------------------------------------------------------------------------------------------
def test_run_preserve_fds_passes_fd_3(make_bundle, user, checker_binary):  # noqa: F811
    bundle = checker_bundle(make_bundle, user, checker_binary,
                            ["sh", "-c", f"{IN_CONTAINER} fds; {IN_CONTAINER} cat-fd 3"])
    with pipe_with(b"through fd 3\n") as pipe, leaked_host_fds() as leaked:
        leaked[3] = pipe
        result = run_with_fds(bundle, ["run", "--preserve-fds", "1", "--bundle", bundle.path, bundle.id],
                              fds=leaked)
    assert result.returncode == 0, result.stderr
    table = fd_table(result.stdout)
    assert sorted(table) == [0, 1, 2, 3], "fd 9 is beyond --preserve-fds 1"
    assert table[3].startswith("pipe:[")
    assert result.stdout.endswith("through fd 3\n")


def test_exec_preserve_fds_passes_fds_3_and_4(running_checker, test_dir):
    other = test_dir / "fd4.txt"
    other.write_text("through fd 4\n")
    file_fd = os.open(other, os.O_RDONLY)
    try:
        with pipe_with(b"through fd 3\n") as pipe:
            result = run_with_fds(
                running_checker,
                ["exec", "--preserve-fds", "2", running_checker.id, "sh", "-c",
                 f"{IN_CONTAINER} fds; {IN_CONTAINER} cat-fd 3; {IN_CONTAINER} cat-fd 4"],
                fds={3: pipe, 4: file_fd})
    finally:
        os.close(file_fd)
    assert result.returncode == 0, result.stderr
    table = fd_table(result.stdout)
    assert sorted(table) == [0, 1, 2, 3, 4], result.stdout
    assert table[4] == str(other), "the fd still names the host file it was opened from"
    assert result.stdout.endswith("through fd 3\nthrough fd 4\n")


def test_preserve_fds_must_be_a_number(running_checker):
    result = running_checker.runtime(["exec", "--preserve-fds", "one", running_checker.id, "true"])
    assert result.returncode != 0
    assert "--preserve-fds: not a number: 'one'" in result.stderr


# -- LISTEN_FDS -----------------------------------------------------------------------------------------------
def test_listen_fds_for_the_runtime_pass_through_with_their_env(make_bundle, user, checker_binary):  # noqa: F811
    bundle = checker_bundle(make_bundle, user, checker_binary,
                            ["sh", "-c", f"{IN_CONTAINER} fds; "
                                         'echo "listen=$LISTEN_FDS pid=$LISTEN_PID self=$$"; '
                                         f"{IN_CONTAINER} cat-fd 3"])
    with pipe_with(b"activated\n") as pipe:
        result = run_with_fds(bundle, ["run", "--bundle", bundle.path, bundle.id], fds={3: pipe},
                              env={"LISTEN_FDS": "1"}, listen_pid_is_runtime=True)
    assert result.returncode == 0, result.stderr
    table = fd_table(result.stdout)
    assert sorted(table) == [0, 1, 2, 3], result.stdout
    assert table[3].startswith("pipe:[")
    # LISTEN_PID names the container's process: pid 1 of its new pid namespace.
    assert "listen=1 pid=1 self=1\n" in result.stdout
    assert result.stdout.endswith("activated\n")


def test_listen_fds_for_another_process_are_not_passed(make_bundle, user, checker_binary):  # noqa: F811
    bundle = checker_bundle(make_bundle, user, checker_binary,
                            ["sh", "-c", f'{IN_CONTAINER} fds; echo "[$LISTEN_FDS]"'])
    with pipe_with(b"not for us\n") as pipe:
        result = run_with_fds(bundle, ["run", "--bundle", bundle.path, bundle.id], fds={3: pipe},
                              env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    assert result.returncode == 0, result.stderr
    assert sorted(fd_table(result.stdout)) == [0, 1, 2]
    assert "[]" in result.stdout


def test_exec_keeps_listen_fds_of_the_runtime(running_checker):
    with pipe_with(b"activated exec\n") as pipe:
        result = run_with_fds(running_checker,
                              ["exec", running_checker.id, "sh", "-c",
                               f"{IN_CONTAINER} fds; {IN_CONTAINER} cat-fd 3"],
                              fds={3: pipe}, env={"LISTEN_FDS": "1"}, listen_pid_is_runtime=True)
    assert result.returncode == 0, result.stderr
    assert sorted(fd_table(result.stdout)) == [0, 1, 2, 3]
    assert result.stdout.endswith("activated exec\n")


# -- NOTIFY_SOCKET --------------------------------------------------------------------------------------------
def test_sd_notify_from_the_container_reaches_the_callers_socket(make_bundle, user, checker_binary):  # noqa: F811
    bundle = checker_bundle(make_bundle, user, checker_binary,
                            ["sh", "-c", f'echo "$NOTIFY_SOCKET"; {IN_CONTAINER} notify READY=1'])
    # The socket's mount point is created under /run: a tmpfs keeps it out of the shared rootfs.
    bundle.config["mounts"].append({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "nodev", "mode=755"]})
    path = bundle.path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        receiver.bind(str(path))
        os.chmod(path, 0o777)
        receiver.settimeout(10)
        result = run_with_fds(bundle, ["run", "--bundle", bundle.path, bundle.id],
                              env={"NOTIFY_SOCKET": str(path)})
        assert result.returncode == 0, result.stderr
        assert result.stdout == "/run/notify/notify.sock\n"
        assert receiver.recv(4096) == b"READY=1"
    finally:
        receiver.close()


# -- non-dumpable during exec ----------------------------------------------------------------------------------
def _all_capabilities() -> list[str]:
    from ocirt.linux.capabilities import CAPABILITY_NAMES, last_cap

    return [CAPABILITY_NAMES[n] for n in range(last_cap() + 1) if n in CAPABILITY_NAMES]


def _pids_in_pid_namespace_of(pid: int) -> list[int]:
    target = os.readlink(f"/proc/{pid}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    found.append(int(entry))
    return found


def _in_syscall(pid: int, number: int) -> bool:
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == str(number)
    except (OSError, IndexError):
        return False


CLOSE_RANGE = 436  # x86_64; the runtime calls it in the exec'd process shortly before execve


def test_the_runtime_process_visible_during_exec_is_not_dumpable(make_bundle, user,
                                                                  checker_binary):  # noqa: F811
    """While an ``exec`` is between joining the container and execve, the runtime's process is visible
    in the container's pid namespace. It is held there with strace (a delay injected into its close_range
    call), then checked from both sides: its /proc files belong to root, not to the user it runs as (the
    kernel's mark of a non-dumpable process), and a container process with every capability in the
    container's user namespace can open /proc/1/exe of the container's init but not /proc/<pid>/exe of
    the runtime's process (the host's interpreter, CVE-2019-5736).

    Rootless, only the runtime's own prctl makes the difference. Rootful, the container gets a user
    namespace (container root is host uid 200000) so that its capabilities are not the host's; there the
    uid switch also clears dumpability."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("holding the exec'd runtime process needs strace (Debian package strace)")
    if os.uname().machine != "x86_64":
        pytest.skip("the held syscall's number is x86_64's")
    bundle = checker_bundle(make_bundle, user, checker_binary, ["sleep", "600"])
    if user is None:
        linux = bundle.config["linux"]
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    owner = user.uid if user is not None else 200000
    caps = _all_capabilities()
    bundle.config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    bundle.config["process"]["noNewPrivileges"] = False
    assert bundle.run("-d").returncode == 0
    init_pid = bundle.state()["pid"]
    held = None
    try:
        command = [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=close_range",
                   "-e", "inject=close_range:delay_enter=4000000", *(["-u", user.name] if user else []),
                   bundle.runtime_path or helpers.runtime_path(), "--root", str(bundle.root),
                   "exec", bundle.id, "true"]
        held = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=helpers.base_env(user),
                                cwd=user.home if user else None)
        runtime_pid = None
        deadline = time.monotonic() + 10
        while runtime_pid is None and time.monotonic() < deadline:
            candidates = [p for p in _pids_in_pid_namespace_of(init_pid) if _in_syscall(p, CLOSE_RANGE)]
            runtime_pid = candidates[0] if candidates else None
            time.sleep(0.01)
        assert runtime_pid is not None, "the exec'd runtime process never reached close_range"

        status = Path(f"/proc/{runtime_pid}/status").read_text()
        real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert real_uid == str(owner)
        assert os.stat(f"/proc/{runtime_pid}/status").st_uid == 0, "a dumpable process's /proc files are its owner's"
        nspid = next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))

        probe = bundle.runtime(["exec", bundle.id, "sh", "-c",
                                f"{IN_CONTAINER} open-exe 1; {IN_CONTAINER} open-exe {nspid}"])
        assert _in_syscall(runtime_pid, CLOSE_RANGE), "the runtime process was still held during the probe"
        assert probe.stdout.splitlines()[0] == "opened", "the probe can open a dumpable process's exe"
        assert probe.stdout.splitlines()[1] in ("EACCES", "EPERM"), probe.stdout
        assert held.wait(timeout=15) == 0, held.stderr.read() if held.stderr else ""
    finally:
        if held is not None and held.poll() is None:
            held.kill()
            held.wait()
        if held is not None and held.stderr:
            held.stderr.close()
        bundle.delete(force=True)
