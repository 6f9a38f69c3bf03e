"""A one-node Slurm cluster (Debian 12: Slurm 22.05) whose `--container` jobs run through the runtime under test.

Everything lives below one directory: munge's key and socket, slurm.conf and oci.conf (found through
SLURM_CONF, never /etc/slurm), slurmctld's state, slurmd's spool, the logs, and the state roots of the
runtime. munged, slurmctld and slurmd run in the foreground as children of this process and are stopped
by their pids; the slurmstepd processes that slurmd starts are found by the SLURM_CONF in their
environment. The ports are free ones picked at start, so two sessions on one machine don't meet.

The runtime's state root is ``<dir>/state/<user name>`` (``%u`` in oci.conf): ``state`` is a sticky
directory anyone may create a directory in, as /tmp is. The job's own ``run`` creates its user's
directory; root's ``state``, ``kill`` and ``delete`` (Slurm runs those as root) find it by the same
name. See docs/slurm.md.

Usable without pytest (tests/slurm/measure.py drives it too).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import helpers

TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "scancel", "squeue", "scontrol", "sinfo")
SETUP_HINT = "run scripts/slurm-setup as root (scripts/bootstrap --engines does)"

# The oci.conf this project documents (docs/slurm.md), with the runtime and the state parent filled in.
# `exec` makes the runtime itself the job's task, so Slurm's SIGTERM, KillWait and SIGKILL reach it.
# `--keep` leaves the stopped container to Slurm's RunTimeQuery and RunTimeDelete: a query of a container
# that is already gone fails, and slurmstepd writes its JSON parse error into a batch job's error file.
OCI_CONF = """\
RunTimeQuery="{runtime} --root={state}/%u state %n.%u.%j.%s.%t"
RunTimeKill="{runtime} --root={state}/%u kill --all %n.%u.%j.%s.%t"
RunTimeDelete="{runtime} --root={state}/%u delete --force %n.%u.%j.%s.%t"
RunTimeRun="exec {runtime} --root={state}/%u run --keep --bundle %b %n.%u.%j.%s.%t"
"""
# What an administrator gets by putting the runtime into Slurm's own runc example (containers.html of
# 22.05): the shell stays the task's process and the runtime is its child.
OCI_CONF_SLURM_EXAMPLE = """\
RunTimeQuery="{runtime} --root={state}/%u state %n.%u.%j.%s.%t"
RunTimeKill="{runtime} --root={state}/%u kill -a %n.%u.%j.%s.%t"
RunTimeDelete="{runtime} --root={state}/%u delete --force %n.%u.%j.%s.%t"
RunTimeRun="{runtime} --root={state}/%u run %n.%u.%j.%s.%t -b %b"
"""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Result:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    def describe(self) -> str:
        return (f"$ {' '.join(self.command)}\n-> exit {self.returncode} after {self.seconds:.2f}s\n"
                f"stdout: {self.stdout.strip()}\nstderr: {self.stderr.strip()}")


class SlurmError(RuntimeError):
    pass


class Daemon:
    """One daemon in the foreground, its output in ``log``, stopped by its pid."""

    def __init__(self, name: str, command: Sequence[str], log: Path, env: Mapping[str, str]):
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115
        # A session of its own: a Ctrl-C at the test's terminal must not reach it before the jobs are gone.
        self.process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=dict(env), cwd="/",
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
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


@dataclass
class Job:
    id: int
    user_name: str
    node: str

    def container_id(self, step: int | str = 0, task: int = 0) -> str:
        """The id oci.conf's ``%n.%u.%j.%s.%t`` gives the container (the batch step is 0xfffffffb)."""
        if step == "batch":
            step = 0xFFFFFFFB
        return f"{self.node}.{self.user_name}.{self.id}.{step}.{task}"


@dataclass
class SlurmCluster:
    base: Path
    runtime: str
    kill_wait: int = 30
    oci_conf: str = OCI_CONF
    proctrack: str = "linuxproc"
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    daemons: list[Daemon] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    # -- layout ------------------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    @property
    def state_parent(self) -> Path:
        return self.base / "state"

    def state_root(self, user: helpers.UnprivilegedUser | None) -> Path:
        """The runtime's --root for ``user``'s jobs (None: root's own jobs)."""
        return self.state_parent / (user.name if user else "root")

    @property
    def spool(self) -> Path:
        return self.base / "spool"

    @property
    def munge_socket(self) -> Path:
        return self.base / "munge-run" / "munge.socket"

    # -- start and stop ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Write the configuration and start munged, slurmctld and slurmd; raise SlurmError with the
        daemon's last log lines when one doesn't come up."""
        helpers.world_reachable_dir(self.base)
        for name in ("etc", "spool", "log", "munge-run"):
            helpers.world_reachable_dir(self.base / name)
        for name in ("ctld-state", "munge-etc"):
            (self.base / name).mkdir(mode=0o700, exist_ok=True)
        self.state_parent.mkdir(exist_ok=True)
        os.chmod(self.state_parent, 0o1777)
        key = self.base / "munge-etc" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        ctld_port, slurmd_port = free_port(), free_port()
        cluster = f"ocirt{helpers.SESSION_TOKEN}"
        log = self.base / "log"
        self.conf.write_text(f"""\
ClusterName={cluster}
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={self.base}/ctld-state
SlurmdSpoolDir={self.spool}
SlurmctldPidFile={self.base}/munge-run/slurmctld.pid
SlurmdPidFile={self.base}/munge-run/slurmd.pid
SlurmctldLogFile={log}/slurmctld.log
SlurmdLogFile={log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=debug
PlugStackConfig={self.base}/etc/plugstack.conf
MailProg=/bin/true
# linuxproc follows the task's descendants by their parent pids, pgid signals the task's process group;
# cgroup tracking would make Slurm cgroups on this machine, which is not ours to do. docs/slurm.md says
# what each tracker needs.
ProctrackType=proctrack/{self.proctrack}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# 16 CPUs on a 2-CPU machine, so ten one-CPU jobs run at once.
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={self.kill_wait}
NodeName={self.node} NodeAddr=127.0.0.1 CPUs=16 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        (self.base / "etc" / "plugstack.conf").write_text("")
        self.write_oci_conf(self.oci_conf)
        env = self.env()
        munged = Daemon("munged", ["munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
                                   f"--log-file={log}/munged.log", f"--pid-file={self.base}/munge-run/munged.pid",
                                   f"--seed-file={self.base}/munge-etc/seed"], log / "munged.out", env)
        self.daemons.append(munged)
        self._wait("munged", munged, lambda: self.munge_socket.exists(), 15)
        ctld = Daemon("slurmctld", ["slurmctld", "-D", "-i"], log / "slurmctld.out", env)
        self.daemons.append(ctld)
        self._wait("slurmctld", ctld, lambda: self._quiet(["scontrol", "ping"], "UP"), 30)
        slurmd = Daemon("slurmd", ["slurmd", "-D"], log / "slurmd.out", env)
        self.daemons.append(slurmd)
        self._wait("slurmd", slurmd, lambda: self._quiet(["sinfo", "-h", "-N", "-o", "%T"], "idle"), 30)

    def write_oci_conf(self, text: str) -> None:
        """oci.conf beside slurm.conf (Slurm reads it at each step's start)."""
        self.oci_conf = text
        (self.base / "etc" / "oci.conf").write_text(text.format(runtime=self.runtime, state=self.state_parent))

    def _quiet(self, command: list[str], expect: str) -> bool:
        try:
            out = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return expect in out.stdout

    def _wait(self, name: str, daemon: Daemon, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not daemon.alive() or time.monotonic() > deadline:
                tail = daemon.log_tail()
                self.close()
                raise SlurmError(f"{name} did not come up (exit {daemon.process.poll()}):\n{tail}")
            time.sleep(0.1)

    def stepds(self) -> list[int]:
        """The slurmstepd processes of this cluster (they carry slurmd's SLURM_CONF)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for pid in helpers._pids():
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read().startswith(b"slurmstepd"):
                        continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        found.append(pid)
        return found

    def settle(self, timeout: float = 60) -> list[str]:
        """Wait until no job is queued or running and every slurmstepd has finished its cleanup; returns
        what was still there when the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue() and not [p for p in self.stepds() if helpers.pid_alive(p)]:
                return []
            time.sleep(0.1)
        left = [f"job {j} still queued" for j in self.queue()]
        left += [f"slurmstepd {p} ({helpers.describe_pid(p)}) still running" for p in self.stepds()
                 if helpers.pid_alive(p)]
        return left

    def close(self) -> list[str]:
        """Cancel what is left, stop the daemons by pid, and report anything that outlived them."""
        problems: list[str] = []
        if any(d.name == "slurmd" and d.alive() for d in self.daemons):
            queued = self.queue()
            if queued:
                problems.append(f"jobs still queued at the end: {queued}")
                self._quiet(["scancel", *map(str, queued)], "")
            problems += self.settle(self.kill_wait + 30)
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.daemons.clear()
        for pid in self.stepds():
            if helpers.pid_alive(pid):
                problems.append(f"slurmstepd {pid} outlived slurmd")
            helpers.kill_pid(pid)
        return problems

    # -- clients -----------------------------------------------------------------------------------------
    def env(self, user: helpers.UnprivilegedUser | None = None) -> dict[str, str]:
        env = helpers.base_env(user)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, command: Sequence[str], *, user: helpers.UnprivilegedUser | None = None, timeout: float = 60,
            check: bool = False) -> Result:
        """A client command with its output through files: a process that outlives the client must not
        hold our pipe."""
        identity: dict = {}
        cwd = None
        if user is not None:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": []}
            cwd = user.home
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            began = time.monotonic()
            proc = subprocess.run(list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  env=self.env(user), cwd=cwd, timeout=timeout, check=False, **identity)
            seconds = time.monotonic() - began
            out.seek(0)
            err.seek(0)
            result = Result(list(command), proc.returncode, out.read(), err.read(), seconds)
        if check and result.returncode != 0:
            raise AssertionError(result.describe())
        return result

    def popen(self, command: Sequence[str], *, user: helpers.UnprivilegedUser, out: Path) -> subprocess.Popen:
        """A client left running (an srun in the foreground), stdout and stderr both into ``out``."""
        with open(out, "wb") as sink:
            os.chown(out, user.uid, user.gid)
            return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                    env=self.env(user), cwd=user.home, user=user.uid, group=user.gid,
                                    extra_groups=[])

    def srun_background(self, user: helpers.UnprivilegedUser, bundle: Path, *args: str,
                        out: Path) -> tuple[Job, subprocess.Popen]:
        """An srun left running, its output into ``out``; returns once slurmctld has the job."""
        before = set(self.job_ids_of(user))
        client = self.popen(["srun", f"--container={bundle}", *args], user=user, out=out)
        new = helpers.wait_for(lambda: set(self.job_ids_of(user)) - before, timeout=20, interval=0.05)
        if not new:
            client.kill()
            client.wait()
            raise AssertionError(f"the srun job did not appear; its output: {out.read_text()}")
        return self.record(new.pop(), user), client

    def srun(self, user: helpers.UnprivilegedUser, bundle: Path, *args: str, timeout: float = 60) -> Result:
        return self.run(["srun", f"--container={bundle}", *args], user=user, timeout=timeout)

    def sbatch(self, user: helpers.UnprivilegedUser, bundle: Path | None, script: str, *, wait: bool = False,
               output: Path | None = None, error: Path | None = None, timeout: float = 60) -> tuple[Job, Result]:
        """Submit ``script`` (a file in the user's home) as a batch job; with ``wait``, sbatch -W returns
        the job's exit code."""
        path = user.home / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o755)
        command = ["sbatch", "--parsable"]
        if bundle is not None:
            command.append(f"--container={bundle}")
        if wait:
            command.append("--wait")
        if output is not None:
            command.append(f"--output={output}")
        if error is not None:
            command.append(f"--error={error}")
        result = self.run([*command, str(path)], user=user, timeout=timeout)
        match = re.search(r"^(\d+)", result.stdout, re.M)
        if not match:
            raise AssertionError(f"sbatch did not report a job id:\n{result.describe()}")
        job = self.record(int(match.group(1)), user)
        return job, result

    def record(self, job_id: int, user: helpers.UnprivilegedUser | None) -> Job:
        job = Job(job_id, user.name if user else "root", self.node)
        self.jobs.append(job)
        return job

    def queue(self) -> list[int]:
        """Ids of the jobs slurmctld still has pending, running or completing."""
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env(), capture_output=True, text=True,
                             timeout=20)
        return [int(x) for x in out.stdout.split() if x.isdigit()]

    def job_ids_of(self, user: helpers.UnprivilegedUser) -> list[int]:
        out = subprocess.run(["squeue", "-h", "-u", user.name, "-o", "%i"], env=self.env(), capture_output=True,
                             text=True, timeout=20)
        return [int(x) for x in out.stdout.split() if x.isdigit()]

    def job_field(self, job_id: int, name: str) -> str | None:
        out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], env=self.env(), capture_output=True,
                             text=True, timeout=20)
        match = re.search(rf"(?:^| ){name}=(\S*)", out.stdout)
        return match.group(1) if match else None

    def wait_gone(self, job_ids: Sequence[int], timeout: float) -> dict[int, float]:
        """Seconds from now until each job left the queue (missing: still there at ``timeout``)."""
        began = time.monotonic()
        gone: dict[int, float] = {}
        while len(gone) < len(job_ids) and time.monotonic() - began < timeout:
            queued = set(self.queue())
            for job_id in job_ids:
                if job_id not in gone and job_id not in queued:
                    gone[job_id] = time.monotonic() - began
            time.sleep(0.1)
        return gone

    def slurmd_log(self, pattern: str = "") -> str:
        with contextlib.suppress(OSError):
            lines = (self.base / "log" / "slurmd.log").read_text(errors="replace").splitlines()
            return "\n".join(line for line in lines if pattern in line)
        return ""


def make_user_bundle(directory: Path, user: helpers.UnprivilegedUser, runtime: str, rootfs_source: Path) -> Path:
    """A bundle as a user would make one: their own copy of the rootfs in ``rootfs`` (Slurm 22.05 always
    points root.path at ``<bundle>/rootfs``) and a config from ``<runtime> spec --rootless``, run as them."""
    helpers.world_reachable_dir(directory)
    subprocess.run(["cp", "-a", str(rootfs_source), str(directory / "rootfs")], check=True)
    helpers.chown_tree(directory, user.uid, user.gid)
    subprocess.run([runtime, "spec", "--rootless"], cwd=directory, user=user.uid, group=user.gid, extra_groups=[],
                   env=helpers.base_env(user), check=True, capture_output=True)
    return directory
