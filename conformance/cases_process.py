"""process: args, env, cwd, user, rlimits, capabilities, noNewPrivileges, oomScoreAdj, terminal,
scheduler, ioPriority, execCPUAffinity."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from conformance.harness import CaseContext, CaseFailed, CaseSkipped, case, check, proc_status

CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_KILL": 5, "CAP_SETGID": 6,
               "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
               "CAP_AUDIT_WRITE": 29}


def cap_mask(names: list[str]) -> int:
    return sum(1 << CAP_NUMBERS[name] for name in names)


def cap_names(mask: int) -> list[str]:
    by_number = {v: k for k, v in CAP_NUMBERS.items()}
    return [by_number.get(bit, f"cap{bit}") for bit in range(64) if mask >> bit & 1]


@case("process_args", "config.md#process", "args are passed to the program as given, one argv entry each")
def process_args(ctx: CaseContext) -> None:
    out = ctx.run_ok(["sh", "-c", 'printf "%s|" "$@"', "argv0", "a b", "", "c"])
    check(out == "a b||c|", f"the program saw arguments {out!r}")


@case("process_env", "config.md#process", "env entries are the program's environment")
def process_env(ctx: CaseContext) -> None:
    ctx.config["process"]["env"] = ["PATH=/bin:/usr/bin", "CONF_A=1", "CONF_B=two words", "CONF_C="]
    out = ctx.run_ok(["env"])
    seen = out.splitlines()
    for entry in ctx.config["process"]["env"]:
        check(entry in seen, f"{entry!r} missing from the environment {seen!r}")


@case("process_cwd", "config.md#process", "cwd is the program's working directory")
def process_cwd(ctx: CaseContext) -> None:
    ctx.config["process"]["cwd"] = "/usr/bin"
    out = ctx.run_ok(["pwd"])
    check(out.strip() == "/usr/bin", f"working directory is {out.strip()!r}")


@case("process_user_ids", "config.md#posix-platform-user",
      "user.uid, user.gid and additionalGids set the process credentials",
      rootful_only="needs more than the one id a rootless mapping gives")
def process_user_ids(ctx: CaseContext) -> None:
    ctx.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [5, 100]}
    _, pid = ctx.start_process()
    status = proc_status(pid)
    check(status["Uid"].split() == ["1000"] * 4, f"Uid line is {status['Uid']!r}")
    check(status["Gid"].split() == ["1000"] * 4, f"Gid line is {status['Gid']!r}")
    groups = {int(g) for g in status["Groups"].split()}
    check({5, 100} <= groups <= {5, 100, 1000}, f"supplementary groups are {sorted(groups)}")


@case("process_umask", "config.md#posix-platform-user", "user.umask sets the process umask")
def process_umask(ctx: CaseContext) -> None:
    ctx.config["process"]["user"]["umask"] = 0o027
    _, pid = ctx.start_process()
    umask = proc_status(pid).get("Umask")
    check(umask == "0027", f"umask is {umask!r}, expected 0027")


@case("process_rlimits", "config.md#posix-process", "each rlimit sets the soft and hard limit of its type")
def process_rlimits(ctx: CaseContext) -> None:
    ctx.config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000},
                                        {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096},
                                        {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400}]
    _, pid = ctx.start_process()
    limits = Path(f"/proc/{pid}/limits").read_text()

    def row(title: str) -> list[str]:
        for line in limits.splitlines():
            if line.startswith(title):
                return line[len(title):].split()[:2]
        raise CaseFailed(f"{title} missing from /proc/{pid}/limits")

    check(row("Max open files") == ["512", "1000"], f"RLIMIT_NOFILE is {row('Max open files')}")
    check(row("Max core file size") == ["0", "4096"], f"RLIMIT_CORE is {row('Max core file size')}")
    check(row("Max processes") == ["300", "400"], f"RLIMIT_NPROC is {row('Max processes')}")


def _check_caps(pid: int, expected: dict[str, list[str]]) -> None:
    status = proc_status(pid)
    for line, names in expected.items():
        got = int(status[line], 16)
        check(got == cap_mask(names), f"{line} is {cap_names(got)}, expected {sorted(names)}")


@case("process_capabilities_root", "config.md#linux-process",
      "the five capability sets are applied as configured for a uid 0 process")
def capabilities_root(ctx: CaseContext) -> None:
    bounding = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"]
    ctx.config["process"]["capabilities"] = {
        "bounding": bounding, "effective": bounding, "permitted": bounding,
        "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]}
    _, pid = ctx.start_process()
    _check_caps(pid, {"CapBnd": bounding, "CapPrm": bounding, "CapEff": bounding, "CapInh": ["CAP_KILL"],
                      "CapAmb": ["CAP_KILL"]})


@case("process_capabilities_ambient_nonroot", "config.md#linux-process",
      "a non-root process keeps exactly its ambient capabilities across exec, under the configured bounding set",
      rootful_only="needs a second mapped uid")
def capabilities_ambient_nonroot(ctx: CaseContext) -> None:
    kept = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
    bounding = ["CAP_CHOWN", *kept]
    ctx.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    ctx.config["process"]["capabilities"] = {"bounding": bounding, "effective": kept, "permitted": kept,
                                             "inheritable": kept, "ambient": kept}
    _, pid = ctx.start_process()
    _check_caps(pid, {"CapBnd": bounding, "CapPrm": kept, "CapEff": kept, "CapInh": kept, "CapAmb": kept})


@case("process_capabilities_nonroot_dropped", "config.md#linux-process",
      "a non-root process without ambient capabilities has empty permitted and effective sets after exec",
      rootful_only="needs a second mapped uid")
def capabilities_nonroot_dropped(ctx: CaseContext) -> None:
    caps = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
    ctx.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    ctx.config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    _, pid = ctx.start_process()
    _check_caps(pid, {"CapBnd": caps, "CapPrm": [], "CapEff": [], "CapInh": [], "CapAmb": []})


@case("process_no_new_privileges_on", "config.md#linux-process",
      "noNewPrivileges true sets no_new_privs on the process")
def no_new_privileges_on(ctx: CaseContext) -> None:
    ctx.config["process"]["noNewPrivileges"] = True
    _, pid = ctx.start_process()
    check(proc_status(pid).get("NoNewPrivs") == "1", "NoNewPrivs is not 1")


@case("process_no_new_privileges_off", "config.md#linux-process",
      "noNewPrivileges false leaves no_new_privs unset")
def no_new_privileges_off(ctx: CaseContext) -> None:
    ctx.config["process"]["noNewPrivileges"] = False
    _, pid = ctx.start_process()
    check(proc_status(pid).get("NoNewPrivs") == "0", "NoNewPrivs is set though the config says false")


@case("process_oom_score_adj", "config.md#linux-process", "oomScoreAdj is written to the process's oom_score_adj")
def oom_score_adj(ctx: CaseContext) -> None:
    ctx.config["process"]["oomScoreAdj"] = 513
    _, pid = ctx.start_process()
    value = Path(f"/proc/{pid}/oom_score_adj").read_text().strip()
    check(value == "513", f"oom_score_adj is {value}")


@case("process_scheduler", "config.md#linux-scheduler",
      "scheduler.policy and nice set the scheduling policy and niceness of the process")
def scheduler(ctx: CaseContext) -> None:
    ctx.config["process"]["scheduler"] = {"policy": "SCHED_BATCH", "nice": 7}
    _, pid = ctx.start_process()
    policy = os.sched_getscheduler(pid)
    check(policy == os.SCHED_BATCH, f"policy is {policy}, expected SCHED_BATCH ({os.SCHED_BATCH})")
    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    check(nice == 7, f"nice is {nice}, expected 7")


@case("process_io_priority", "config.md#linux-io-priority",
      "ioPriority sets the I/O scheduling class and priority of the process")
def io_priority(ctx: CaseContext) -> None:
    ctx.config["process"]["ioPriority"] = {"class": "IOPRIO_CLASS_BE", "priority": 6}
    _, pid = ctx.start_process()
    out = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    check(out == "best-effort: prio 6", f"ionice reports {out!r}, expected 'best-effort: prio 6'")


@case("process_exec_cpu_affinity", "config.md#linux-process",
      "execCPUAffinity.final is the CPU affinity of a process executed in a running container")
def exec_cpu_affinity(ctx: CaseContext) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise CaseSkipped("needs at least two CPUs to tell a set affinity from the default")
    final = cpus[-1]
    container_id, _ = ctx.start_process()
    process = {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/",
               "args": ["grep", "Cpus_allowed_list", "/proc/self/status"],
               "env": ["PATH=/usr/bin:/bin"], "execCPUAffinity": {"initial": str(cpus[0]), "final": str(final)}}
    process_file = ctx.bundle / "exec-process.json"
    process_file.write_text(json.dumps(process))
    ctx.chown(process_file)
    # The spec defines no exec operation; runc's `exec --process FILE` is how engines run one.
    result = ctx.call(["exec", "--process", str(process_file), container_id])
    if result.returncode != 0 and "process" in result.output and "flag" in result.output:
        raise CaseSkipped(f"the runtime has no `exec --process` ({result.describe()})")
    check(result.returncode == 0, f"exec failed: {result.describe()}")
    allowed = result.stdout.split(":", 1)[-1].strip()
    check(allowed == str(final), f"the executed process may run on CPUs {allowed!r}, expected {final}")


@case("process_rlimits_duplicate_fails", "config.md#posix-process",
      "rlimits with two entries of the same type is an error")
def rlimits_duplicate_fails(ctx: CaseContext) -> None:
    ctx.config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 512},
                                        {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 256}]
    ctx.config["process"]["args"] = ["true"]
    _, result = ctx.create()
    check(result.returncode != 0, "create accepted two RLIMIT_NOFILE entries")


@case("process_capabilities_unknown_reported", "config.md#linux-process",
      "a capability name that maps to nothing in the kernel is logged (as a warning, or as the error that fails create)")
def capabilities_unknown_reported(ctx: CaseContext) -> None:
    # The spec: such a value "MUST be logged as a warning"; runc and crun warn and run, ocirt refuses the
    # config (docs/conformance.md). Either way the name must reach the caller.
    caps = ctx.config["process"]["capabilities"]
    for name in ("bounding", "effective", "permitted"):
        caps[name] = [*caps[name], "CAP_CONFORMANCE_UNKNOWN"]
    result = ctx.run(["true"])
    check("CAP_CONFORMANCE_UNKNOWN" in result.output,
          f"the unknown capability was dropped without a word: {result.describe()}")


def _drop_from_bounding_set(cap: int):
    def setup() -> None:
        import ctypes

        pr_capbset_drop = 24
        if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return setup


@case("process_capabilities_unavailable_tolerated", "config.md#linux-process",
      "a capability the runtime cannot grant (not in its bounding set) is a warning: the container runs without it",
      rootful_only="the runtime of a rootless container holds every capability of its user namespace")
def capabilities_unavailable_tolerated(ctx: CaseContext) -> None:
    cap_sys_resource, cap_kill = 24, 5
    ctx.caller_setup = _drop_from_bounding_set(cap_sys_resource)
    wanted = ["CAP_KILL", "CAP_SYS_RESOURCE"]
    ctx.config["process"]["capabilities"] = {kind: list(wanted) for kind in ("bounding", "effective", "permitted")}
    container_id, pid = ctx.start_process()
    status = Path(f"/proc/{pid}/status").read_text()
    effective = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    check(effective == 1 << cap_kill, f"CapEff is {effective:#x}, expected CAP_KILL only")


@case("process_ambient_not_raisable_quiet", "config.md#linux-process",
      "the config `runc spec` writes (ambient capabilities that are not inheritable) runs with nothing on stderr")
def ambient_not_raisable_quiet(ctx: CaseContext) -> None:
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    ctx.config["process"]["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps}
    result = ctx.run(["true"])
    check(result.returncode == 0, f"the container failed: {result.describe()}")
    check(result.stderr.strip() == "", f"the runtime wrote to stderr: {result.stderr.strip()[:200]!r}")


def _set_caller_oom_score_adj(oom_score_adj: int):
    def setup() -> None:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write(str(oom_score_adj))
    return setup


@case("process_oom_score_adj_unset", "config.md#linux-process",
      "without oomScoreAdj the runtime leaves oom_score_adj as the caller had it")
def oom_score_adj_unset(ctx: CaseContext) -> None:
    ctx.config["process"].pop("oomScoreAdj", None)
    ctx.caller_setup = _set_caller_oom_score_adj(321)
    _, pid = ctx.start_process()
    value = Path(f"/proc/{pid}/oom_score_adj").read_text().strip()
    check(value == "321", f"oom_score_adj is {value}, but the runtime was started with 321")


@case("process_terminal", "config.md#process",
      "terminal true gives the process a pseudoterminal as stdio, handed over through --console-socket")
def terminal(ctx: CaseContext) -> None:
    sock_path = ctx.bundle / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    ctx.chown(sock_path)
    listener.listen(1)
    listener.settimeout(10)
    ctx.add_cleanup(listener.close)
    received: list[int] = []

    def accept() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 1024, 4)
                received.extend(fds)
        except OSError:
            pass

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    ctx.config["process"]["terminal"] = True
    ctx.config["process"]["args"] = ["sh", "-c", "tty; test -t 0 && test -t 1 && echo stdio-is-tty; sleep 30"]
    ctx.write_config()
    container_id = ctx.new_id()
    result = ctx.call(["create", "--bundle", str(ctx.bundle), "--console-socket", str(sock_path),
                       container_id], cwd=ctx.bundle)
    check(result.returncode == 0, f"create with a console socket failed: {result.describe()}")
    acceptor.join(10)
    check(len(received) == 1, f"expected one pty master fd over the console socket, got {len(received)}")
    master = received[0]
    ctx.add_cleanup(lambda: os.close(master))
    check(ctx.start(container_id).returncode == 0, "start failed")
    output = b""
    deadline = time.monotonic() + 5
    os.set_blocking(master, False)
    while b"stdio-is-tty" not in output and time.monotonic() < deadline:
        try:
            output += os.read(master, 4096)
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break
    text = output.decode(errors="replace")
    check("stdio-is-tty" in text, f"the process's stdio is not the terminal: {text!r}")
    check("/dev/pts/" in text or "/dev/console" in text, f"tty names no pseudoterminal: {text!r}")

