"""Real container engines (podman, containerd with the runc v2 shim, docker) driving the runtime under test.

Everything an engine keeps lives below one session directory: podman's storage and run state, each
daemon's root, state, sockets and logs. Daemons listen on unix sockets only and are stopped by their
PID. Every object the engines create carries the session's name (``ocirt-test-<token>-engines``: the
cgroup parent, the containerd namespace, the docker cgroup parent), so the teardown can check, by name,
that no cgroup, mount or process outlived the tests.

The runtime under test is ``helpers.runtime_path()`` (``$OCIRT_RUNTIME``, default ``<repo>/bin/ocirt``),
so ``OCIRT_RUNTIME=/usr/sbin/runc`` runs the same scenarios against runc.

The VM workarounds (see ENGINES.md and docs/engines.md) live here, in the engines' configuration, never
in the runtime: podman's default ulimits are lowered to nofile 20000 / nproc 32768, rootless podman uses
vfs and ``--network none``, and dockerd runs without iptables and without a bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import helpers

ENGINE_NAME = f"{helpers.ID_PREFIX}{helpers.SESSION_TOKEN}-engines"
IMAGE = "localhost/ocirt-busybox:engines"
IMAGE_PATH_ENV = "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_CLIENT = "/usr/bin/docker"  # the first `docker` on PATH is a newer client than Debian's dockerd
RUNTIME_NAME = "ocirt"  # the name the runtime under test is registered under (docker, containers.conf)

# A PID 1 that ends with status 0 on SIGTERM: the exit code then proves the engine's stop reached it.
SERVE_UNTIL_TERM = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]

TOOLS = {
    "podman": ["podman", "conmon"],
    "containerd": ["containerd", "ctr", "containerd-shim-runc-v2"],
    "docker": ["dockerd", DOCKER_CLIENT, "containerd", "containerd-shim-runc-v2"],
}


def missing_tools(engine: str) -> list[str]:
    return [tool for tool in TOOLS[engine] if shutil.which(tool) is None]


def runtime_under_test() -> str:
    return os.path.abspath(helpers.runtime_path())


def engine_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = helpers.base_env()
    env.update(extra or {})
    return env


@dataclass
class Result:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ {' '.join(self.command)}\n-> exit {self.returncode}\nstdout: {self.stdout.strip()}\n"
                f"stderr: {self.stderr.strip()}")


def run(command: Sequence[str], *, env: Mapping[str, str], timeout: float = 60, check: bool = True,
        user: helpers.UnprivilegedUser | None = None, cwd: str | os.PathLike | None = None) -> Result:
    """Run a client command with output through files (a detached container may inherit the client's
    stdio; a pipe would then block us until the container ends)."""
    identity: dict = {}
    if user is not None:
        identity = {"user": user.uid, "group": user.gid, "extra_groups": []}
        cwd = cwd or user.home
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryFile("w+"))
        err = stack.enter_context(tempfile.TemporaryFile("w+"))
        proc = subprocess.run(list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=dict(env),
                              cwd=cwd, timeout=timeout, check=False, **identity)
        out.seek(0)
        err.seek(0)
        result = Result(list(command), proc.returncode, out.read(), err.read())
    if check and result.returncode != 0:
        raise AssertionError(result.describe())
    return result


def run_in_terminal(command: Sequence[str], *, env: Mapping[str, str], typed: str,
                    prompt: bytes = b"# ", timeout: float = 30,
                    user: helpers.UnprivilegedUser | None = None) -> tuple[int, str]:
    """Run ``command`` on a fresh pty as its controlling terminal, wait for the shell's prompt, type
    ``typed`` and read everything until the command exits. Returns (exit status, all terminal output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

    def become_session_leader() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    identity: dict = {}
    if user is not None:
        identity = {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": user.home}
        os.fchown(slave, user.uid, -1)
    proc = subprocess.Popen(list(command), stdin=slave, stdout=slave, stderr=slave, env=dict(env),
                            preexec_fn=become_session_leader, **identity)
    os.close(slave)
    output = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the slave side is gone
                    break
                if not chunk:
                    break
                output += chunk
            if not sent and prompt in output:
                os.write(master, typed.encode())
                sent = True
            if proc.poll() is not None and not ready:
                break
        else:
            proc.kill()
            raise AssertionError(f"{' '.join(command)} still running after {timeout}s; terminal so far:\n"
                                 f"{output.decode(errors='replace')}")
        status = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, output.decode(errors="replace")


# ---- the image ---------------------------------------------------------------------------------------

def write_rootfs_tar(rootfs: Path, dest: Path) -> Path:
    """A tarball of the shared busybox rootfs, owned by root inside (as an image layer should be)."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(dest, "w") as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name, filter=as_root)
    os.chmod(dest, 0o644)
    return dest


# ---- daemons -----------------------------------------------------------------------------------------

class Daemon:
    """One engine daemon, started by us, stopped by its PID, its output in ``log``."""

    def __init__(self, name: str, command: Sequence[str], log: Path, socket: Path, env: Mapping[str, str]):
        self.name = name
        self.log = log
        self.socket = socket
        self._log_file = open(log, "w")  # noqa: SIM115
        # A session of its own: a Ctrl-C at the test's terminal must not reach the daemon before we
        # have removed its containers.
        self.process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)
        deadline = time.monotonic() + 30
        while not socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not come up (exit {self.process.returncode}):\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


# ---- podman ------------------------------------------------------------------------------------------

class Podman:
    """podman with a configuration, storage and run state of its own under ``base``."""

    def __init__(self, base: Path, runtime: str, user: helpers.UnprivilegedUser | None = None):
        self.base = helpers.world_reachable_dir(base)
        self.runtime = runtime
        self.user = user
        self.rootless = user is not None
        self.cgroup_parent = f"/{ENGINE_NAME}-podman"
        run_dir = (user.runtime_dir / "ocirt-engines") if user else self.base / "run"
        dirs = {"storage": self.base / "storage", "run": run_dir, "tmp": run_dir / "libpod-tmp",
                "cni": self.base / "cni"}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
            if user:
                os.chown(path, user.uid, user.gid)
        self.run_dir = run_dir
        # The VM's hard nofile limit is 20000 and root lacks CAP_SYS_RESOURCE: podman's default (1048576)
        # fails at create for every runtime. runtime_supports_json makes podman pass --log/--log-format
        # to ocirt as it does to runc and crun.
        (self.base / "containers.conf").write_text(f"""\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.base}/events.log"
tmp_dir = "{dirs['tmp']}"
runtime_supports_json = ["crun", "runc", "kata", "runsc", "youki", "krun", "{RUNTIME_NAME}"]

[engine.runtimes]
{RUNTIME_NAME} = ["{runtime}"]

[network]
network_config_dir = "{dirs['cni']}"
""")
        # vfs: rootless overlay would need fuse-overlayfs and /dev/fuse, which is root-only on this VM.
        # runroot stays short: podman 4.3 refuses one over 50 characters, and the `podman container
        # cleanup` that conmon runs when a container exits then fails, so every attached `podman run`
        # waited out conmon's 20 s timeout (with runc as with ocirt).
        # Rootless podman ignores graphroot and runroot: it takes rootless_storage_path, and puts its run
        # state under $XDG_RUNTIME_DIR/containers (removed with the test user).
        (self.base / "storage.conf").write_text(f"""\
[storage]
driver = "vfs"
graphroot = "{dirs['storage']}"
runroot = "{self.base}/rr"
rootless_storage_path = "{dirs['storage']}"
""")
        if user:
            helpers.chown_tree(self.base, user.uid, user.gid)
        self.env = engine_env({"CONTAINERS_CONF": str(self.base / "containers.conf"),
                               "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf"),
                               "CONTAINERS_REGISTRIES_CONF": str(self.base / "registries.conf")})
        (self.base / "registries.conf").write_text("unqualified-search-registries = []\n")
        if user:
            self.env.update(user.env())

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> Result:
        return run(["podman", "--runtime", self.runtime, *args], env=self.env, check=check, timeout=timeout,
                   user=self.user)

    def run_args(self) -> list[str]:
        """``podman run`` with the settings this VM needs."""
        args = ["run", "--network", "none"]
        if not self.rootless:
            args += ["--cgroup-parent", self.cgroup_parent]
        return args

    def terminal(self, args: Sequence[str], typed: str, timeout: float = 30) -> tuple[int, str]:
        return run_in_terminal(["podman", "--runtime", self.runtime, *args], env=self.env, typed=typed,
                               timeout=timeout, user=self.user)

    def import_image(self, rootfs_tar: Path) -> None:
        self("import", "--change", 'CMD ["/bin/sh"]', "--change", IMAGE_PATH_ENV, str(rootfs_tar), IMAGE)

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name).stdout.strip()

    def close(self) -> list[str]:
        problems = []
        left = self("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        if left:
            problems.append(f"podman containers left by the tests: {left}")
            self("rm", "--force", "--time", "0", *left, check=False)
        self("rmi", "--all", "--force", check=False)
        if self.rootless:
            # The rootless pause process holds the user namespace; it is the user's, found by uid.
            for pid in helpers.processes_owned_by(self.user.uid):  # type: ignore[union-attr]
                helpers.kill_pid(pid)
        return problems


# ---- containerd ------------------------------------------------------------------------------------------

class Containerd:
    """A containerd of our own: root, state and sockets under ``base``, no CRI plugin."""

    def __init__(self, base: Path, runtime: str):
        self.base = helpers.world_reachable_dir(base)
        self.runtime = runtime
        self.socket = self.base / "containerd.sock"
        self.namespace = ENGINE_NAME  # ctr's default cgroupsPath is /<namespace>/<id>: ours by name
        config = self.base / "config.toml"
        config.write_text(f"""\
version = 2
root = "{self.base}/root"
state = "{self.base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base}/opt"
""")
        # The shim's default runtime root is /run/containerd/runc: ours keeps every runtime state file
        # under the session directory.
        self.runtime_root = self.base / "runtime-root"
        self.env = engine_env()
        self.daemon = Daemon("containerd", ["containerd", "--config", str(config)], self.base / "containerd.log",
                             self.socket, self.env)

    def runtime_args(self) -> list[str]:
        """``ctr run`` options that make the runc v2 shim call the runtime under test."""
        return ["--runc-binary", self.runtime, "--runc-root", str(self.runtime_root), *self.fifo_args()]

    def fifo_args(self) -> list[str]:
        """ctr's stdio fifos default to /run/containerd/fifo, and `run --detach` leaves them there."""
        return ["--fifo-dir", str(self.base / "fifo")]

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> Result:
        return run(["ctr", "--address", str(self.socket), "--namespace", self.namespace, *args], env=self.env,
                   check=check, timeout=timeout)

    def ctr_terminal(self, args: Sequence[str], typed: str, timeout: float = 30) -> tuple[int, str]:
        return run_in_terminal(["ctr", "--address", str(self.socket), "--namespace", self.namespace, *args],
                               env=self.env, typed=typed, timeout=timeout)

    def task_status(self, container: str) -> str:
        for line in self.ctr("task", "list").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container:
                return fields[-1]
        return ""

    def wait_status(self, container: str, wanted: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        status = self.task_status(container)
        while status != wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.task_status(container)
        return status

    def remove(self, container: str) -> None:
        """Kill, delete the task and the container, whatever state they are in."""
        if self.task_status(container):
            self.ctr("task", "kill", "--signal", "SIGKILL", container, check=False)
            self.wait_status(container, "STOPPED", timeout=10)
            self.ctr("task", "delete", "--force", container, check=False)
        self.ctr("container", "delete", container, check=False)
        self.ctr("snapshot", "rm", container, check=False)

    def close(self) -> list[str]:
        problems = []
        left = [line.split()[0] for line in self.ctr("container", "list", check=False).stdout.splitlines()[1:]
                if line.strip()]
        if left:
            problems.append(f"containerd containers left by the tests: {left}")
            for container in left:
                self.remove(container)
        self.ctr("images", "remove", IMAGE, check=False)
        self.daemon.stop()
        return problems


# ---- docker --------------------------------------------------------------------------------------------

class Docker:
    """Debian's dockerd on our containerd, with the runtime under test registered as ``ocirt``."""

    def __init__(self, base: Path, runtime: str, containerd: Containerd):
        self.base = helpers.world_reachable_dir(base)
        self.runtime = runtime
        self.socket = self.base / "docker.sock"
        self.cgroup_parent = f"/{ENGINE_NAME}-docker"
        config = self.base / "daemon.json"
        config.write_text("{}\n")  # keeps dockerd away from /etc/docker/daemon.json
        (self.base / "client").mkdir(exist_ok=True)
        self.env = engine_env({"DOCKER_CONFIG": str(self.base / "client"), "DOCKER_HOST": f"unix://{self.socket}"})
        command = [
            "dockerd", "--config-file", str(config),
            "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
            "--pidfile", str(self.base / "docker.pid"), "--host", f"unix://{self.socket}",
            "--containerd", str(containerd.socket),
            "--containerd-namespace", f"{ENGINE_NAME}-docker",
            "--containerd-plugins-namespace", f"{ENGINE_NAME}-docker-plugins",
            # No iptables rules, no docker0 bridge: nothing touches the host's network, and the
            # tests run with --network none anyway.
            "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
            "--userland-proxy=false",
            "--storage-driver=overlay2",
            "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", self.cgroup_parent,
            "--add-runtime", f"{RUNTIME_NAME}={runtime}",
        ]
        self.daemon = Daemon("dockerd", command, self.base / "dockerd.log", self.socket, self.env)
        # The socket appears before the API answers.
        deadline = time.monotonic() + 30
        while self("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                self.daemon.stop()
                raise RuntimeError(f"dockerd does not answer:\n{self.daemon.log_tail()}")
            time.sleep(0.1)

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> Result:
        return run([DOCKER_CLIENT, *args], env=self.env, check=check, timeout=timeout)

    def terminal(self, args: Sequence[str], typed: str, timeout: float = 30) -> tuple[int, str]:
        return run_in_terminal([DOCKER_CLIENT, *args], env=self.env, typed=typed, timeout=timeout)

    def close(self) -> list[str]:
        problems = []
        left = self("ps", "--all", "--quiet", check=False).stdout.split()
        if left:
            problems.append(f"docker containers left by the tests: {left}")
            self("rm", "--force", *left, check=False)
        self("rmi", "--force", IMAGE, check=False)
        self.daemon.stop()
        return problems


# ---- what must be gone afterwards ------------------------------------------------------------------------

def engine_cgroups() -> list[Path]:
    return sorted((p for p in helpers._walk_cgroups() if p.name.startswith(ENGINE_NAME)),
                  key=lambda p: len(p.parts), reverse=True)


def leftovers(base: Path) -> list[str]:
    """Processes, mounts and cgroups of the engines still present; each one found is also removed."""
    problems = []
    for pid, why in helpers.processes_using([base]).items():
        problems.append(f"process {pid} ({helpers.describe_pid(pid)}) remains: {why}")
        helpers.kill_pid(pid)
    for point in sorted(helpers.mounts_mentioning([base]), key=len, reverse=True):
        problems.append(f"mount {point} remains")
        helpers.unmount(point)
    return problems


def remove_engine_cgroups() -> list[str]:
    """The engines' cgroup parents are created by the engines (podman, dockerd) and left behind empty
    by design; anything still *inside* them is a leak."""
    problems = []
    for directory in engine_cgroups():
        if not directory.exists():
            continue
        with contextlib.suppress(OSError):
            procs = (directory / "cgroup.procs").read_text().split()
            if procs:
                problems.append(f"cgroup {directory} still holds processes {procs}")
        if not helpers.remove_cgroup(directory):
            problems.append(f"cgroup {directory} could not be removed")
    return problems


def cgroup_of(pid: int, controller: str) -> Path:
    """The host directory of ``pid``'s cgroup in a v1 ``controller`` hierarchy."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return helpers.CGROUP_ROOT / controller / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no {controller} cgroup")


def protobuf_strings(message: bytes) -> dict[int, str]:
    """The length-delimited fields of a protobuf message, by field number, decoded as text: enough to
    read the string options of containerd's runc shim without the generated code."""
    def varint(position: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = message[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, position

    fields: dict[int, str] = {}
    position = 0
    while position < len(message):
        key, position = varint(position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = varint(position)
        elif wire_type == 2:
            length, position = varint(position)
            fields[number] = message[position:position + length].decode(errors="replace")
            position += length
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    return fields


# ---- containerd's CRI plugin: the path a Kubernetes RuntimeClass takes ----------------------------------

def protobuf_field(number: int, value: bytes | str | int) -> bytes:
    """One protobuf field: an int as a varint, bytes or text as length-delimited (strings and embedded
    messages alike). Enough to speak the few CRI calls the tests need without generated code."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def message(*fields: bytes) -> bytes:
    return b"".join(fields)


CRI_NAMESPACE_NODE = 2
CRI_NAMESPACE_CONTAINER = 1


_GRPC_UNARY_CALL = """
import sys
import grpc
socket, method, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
with grpc.insecure_channel("unix://" + socket) as channel:
    sys.stdout.buffer.write(channel.unary_unary(method)(sys.stdin.buffer.read(), timeout=timeout))
"""


class ContainerdCRI:
    """A second containerd with the CRI plugin on, and the runtime under test registered as the runtime
    handler ``ocirt`` through ``options.BinaryName``: the configuration a Kubernetes RuntimeClass with
    ``handler: ocirt`` selects. The sandbox ("pause") image is the busybox image running a long sleep."""

    SANDBOX_IMAGE = "localhost/ocirt-busybox:pause"

    def __init__(self, base: Path, runtime: str):
        self.base = helpers.world_reachable_dir(base)
        self.runtime = runtime
        self.socket = self.base / "containerd.sock"
        self.runtime_root = self.base / "runtime-root"
        self.cgroup_parent = f"/{ENGINE_NAME}-cri"
        (self.base / "cni").mkdir(exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(f"""\
version = 2
root = "{self.base}/root"
state = "{self.base}/state"

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.base}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNTIME_NAME}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{RUNTIME_NAME}.options]
        BinaryName = "{runtime}"
        Root = "{self.runtime_root}"
""")
        self.env = engine_env()
        self.daemon = Daemon("containerd (CRI)", ["containerd", "--config", str(config)],
                             self.base / "containerd.log", self.socket, self.env)

    def ctr(self, *args: str, check: bool = True) -> Result:
        return run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], env=self.env,
                   check=check)

    def call(self, method: str, request: bytes, timeout: float = 60) -> bytes:
        # In a child process: grpc starts threads in whoever imports it, and its fork handlers leave them
        # running in every process forked afterwards. The suite's forked children would then be
        # multi-threaded: unshare(CLONE_NEWUSER) fails with EINVAL and a seccomp kill of one thread leaves
        # the process alive.
        result = subprocess.run(
            [sys.executable, "-c", _GRPC_UNARY_CALL, str(self.socket), f"/runtime.v1.RuntimeService/{method}",
             str(timeout)],
            input=request, capture_output=True, timeout=timeout + 30,
        )
        if result.returncode != 0:
            raise AssertionError(f"CRI {method} failed: {result.stderr.decode(errors='replace')[-2000:]}")
        return result.stdout

    def run_pod_sandbox(self, name: str, handler: str) -> str:
        metadata = message(protobuf_field(1, name), protobuf_field(2, name), protobuf_field(3, "default"))
        namespaces = message(protobuf_field(1, CRI_NAMESPACE_NODE), protobuf_field(2, CRI_NAMESPACE_CONTAINER))
        linux = message(protobuf_field(1, self.cgroup_parent),
                        protobuf_field(2, message(protobuf_field(1, namespaces))))
        # No hostname: with the node's network (and so its UTS namespace) CRI must not set one.
        config = message(protobuf_field(1, metadata), protobuf_field(8, linux))
        response = self.call("RunPodSandbox", message(protobuf_field(1, config), protobuf_field(2, handler)))
        return protobuf_strings(response)[1]

    def remove_pod_sandbox(self, sandbox: str) -> None:
        self.call("StopPodSandbox", protobuf_field(1, sandbox))
        self.call("RemovePodSandbox", protobuf_field(1, sandbox))

    def close(self) -> list[str]:
        self.ctr("images", "remove", self.SANDBOX_IMAGE, check=False)
        self.daemon.stop()
        return []
