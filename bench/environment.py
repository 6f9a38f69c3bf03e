"""What the benchmark builds before it measures, and takes down after: the bench user, the work directory,
the shared busybox rootfs, one bundle per container, each runtime's state root, and the cgroups.

Everything carries the prefix ``ocirt-bench-<token>``, so cleanup removes exactly what this run made.
"""

from __future__ import annotations

import copy
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

from bench.launch import (
    DEFAULT_PATH,
    BenchError,
    Identity,
    Runtime,
    call,
    hybrid_cgroup_host,
    private_cgroup_v1_namespace,
)

BENCH_USER = "ocirt-bench"
CGROUP_MOUNT = "/sys/fs/cgroup"
# crun 1.8.1 rejects "1.3.0" ("unknown version specified"); every field the bench configs use exists in
# 1.1.0, and ocirt and runc accept it, so all three runtimes read the same config.
BENCH_OCI_VERSION = "1.1.0"

KNOWN_RUNTIMES = {
    "ocirt": lambda repo: os.path.join(repo, "bin", "ocirt"),
    "runc": lambda repo: shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin"),
    "crun": lambda repo: shutil.which("crun", path="/usr/sbin:/usr/bin:/sbin:/bin"),
}


def ensure_bench_user() -> tuple[int, int]:
    """The unprivileged account rootless runs use: created (system account, no home, no login) if missing."""
    try:
        entry = pwd.getpwnam(BENCH_USER)
    except KeyError:
        done = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", BENCH_USER], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"cannot create user {BENCH_USER}: {done.stderr.strip()}") from None
        entry = pwd.getpwnam(BENCH_USER)
    return entry.pw_uid, entry.pw_gid


class Environment:
    def __init__(self, *, repo: str, rootless: bool, runtime_names: list[str]):
        if os.geteuid() != 0:
            raise BenchError("the benchmark runs as root (rootless mode drops to the ocirt-bench user itself)")
        self.repo = repo
        self.rootless = rootless
        self.token = f"ocirt-bench-{secrets.token_hex(3)}"
        self.workdir = tempfile.mkdtemp(prefix=f"{self.token}-", dir="/tmp")
        os.chmod(self.workdir, 0o755)
        self.cgroup_parent = self.token
        self._counter = 0
        self._templates: dict[str, dict] = {}
        self.mntns_fd: int | None = None
        self.identity = self._identity()
        self.runtimes = self._runtimes(runtime_names)

    # -- setup ----------------------------------------------------------------------------------------------
    def _identity(self) -> Identity:
        if not self.rootless:
            return Identity(0, 0, {"PATH": DEFAULT_PATH})
        uid, gid = ensure_bench_user()
        runtime_dir = os.path.join(self.workdir, "xdg")
        os.mkdir(runtime_dir, 0o700)
        os.chown(runtime_dir, uid, gid)
        return Identity(uid, gid, {"PATH": DEFAULT_PATH, "HOME": runtime_dir, "USER": BENCH_USER,
                                   "LOGNAME": BENCH_USER, "XDG_RUNTIME_DIR": runtime_dir})

    def _runtimes(self, names: list[str]) -> list[Runtime]:
        state_dir = os.path.join(self.workdir, "state")
        output_dir = os.path.join(self.workdir, "out")
        os.mkdir(state_dir, 0o755)
        os.mkdir(output_dir, 0o755)
        if self.rootless:
            os.chown(state_dir, self.identity.uid, self.identity.gid)
            # `time -o` writes its report as the bench user.
            os.chown(output_dir, self.identity.uid, self.identity.gid)
        runtimes = []
        for name in names:
            if name not in KNOWN_RUNTIMES:
                raise BenchError(f"unknown runtime {name!r}: choose from {', '.join(KNOWN_RUNTIMES)}")
            binary = KNOWN_RUNTIMES[name](self.repo)
            if not binary or not os.access(binary, os.X_OK):
                print(f"bench: {name} is not installed: skipped")
                continue
            runtime = Runtime(name, binary, os.path.join(state_dir, name), output_dir=output_dir)
            if name == "crun" and hybrid_cgroup_host():
                if self.mntns_fd is None:
                    self.mntns_fd = private_cgroup_v1_namespace()
                runtime.mntns_fd = self.mntns_fd
            runtimes.append(runtime)
        return runtimes

    def build_rootfs(self) -> None:
        from ocirt.bundle import build_rootfs
        from ocirt.spec.default import default_config

        self.rootfs = str(build_rootfs(os.path.join(self.workdir, "rootfs")))
        uid = self.identity.uid if self.rootless else None
        gid = self.identity.gid if self.rootless else None
        for kind, args in (("true", ["/bin/true"]), ("sleep", ["/bin/sleep", "600"])):
            config = default_config(rootless=self.rootless, uid=uid, gid=gid, args=args, terminal=False)
            config["ociVersion"] = BENCH_OCI_VERSION
            config["root"]["path"] = self.rootfs
            self._templates[kind] = config

    def new_container(self, runtime: Runtime, kind: str) -> tuple[str, str]:
        """A fresh container id and its bundle (the shared rootfs, its own config). Rootful containers get
        an absolute cgroupsPath under the bench's own parent cgroup, so no runtime puts a cgroup beside the
        ones this machine's own processes live in."""
        self._counter += 1
        container_id = f"{self.token}-{runtime.name}-{self._counter}"
        bundle = os.path.join(self.workdir, "bundles", container_id)
        os.makedirs(bundle)
        config = copy.deepcopy(self._templates[kind])
        if not self.rootless:
            config["linux"]["cgroupsPath"] = f"/{self.cgroup_parent}/{container_id}"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f)
        return container_id, bundle

    def drop_bundle(self, bundle: str) -> None:
        shutil.rmtree(bundle, ignore_errors=True)

    # -- cleanup --------------------------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Delete every container, cgroup and file this run made; return what could not be removed."""
        problems: list[str] = []
        _reap_children()
        for runtime in self.runtimes:
            try:
                leftovers = [d for d in os.listdir(runtime.state_root) if d.startswith(self.token)]
            except FileNotFoundError:
                leftovers = []
            for container_id in leftovers:
                result = call(runtime, self.identity, "delete", "--force", container_id, tag="cleanup")
                if not result.ok:
                    problems.append(f"{runtime.name} delete --force {container_id}: {result.output().strip()}")
        problems += self._remove_cgroups()
        if self.mntns_fd is not None:
            os.close(self.mntns_fd)
            self.mntns_fd = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if os.path.exists(self.workdir):
            problems.append(f"cannot remove {self.workdir}")
        return problems

    def _remove_cgroups(self) -> list[str]:
        problems = []
        for directory in self._own_cgroups():
            for attempt in range(50):
                _kill_members(directory)
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if attempt == 49:
                        problems.append(f"cannot remove cgroup {directory}: {err.strerror}")
                    time.sleep(0.02)
        return problems

    def _own_cgroups(self) -> list[str]:
        """Cgroup directories whose name carries this run's token, deepest first. Only the top of each
        hierarchy and the bench parent are read: the tree below holds the machine's own cgroups."""
        found = []
        try:
            hierarchies = os.listdir(CGROUP_MOUNT)
        except OSError:
            return []
        for hierarchy in hierarchies:
            top = os.path.join(CGROUP_MOUNT, hierarchy)
            parent = os.path.join(top, self.cgroup_parent)
            if os.path.isdir(parent):
                for dirpath, _dirnames, _files in os.walk(parent, topdown=False):
                    found.append(dirpath)
        return found


def _reap_children(timeout: float = 15.0) -> None:
    """Wait for runtime calls still in flight (an interrupted parallel round), so that cleanup sees each
    runtime's state after its call has finished, not halfway through."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def _kill_members(directory: str) -> None:
    for name in ("cgroup.procs", "tasks"):
        try:
            with open(os.path.join(directory, name)) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return
