"""create, run, start, state, kill, delete, list and exec: over ocirt.container, run, execute and teardown."""

from __future__ import annotations

import os
import sys

from ocirt.errors import OcirtError, why


def rootless_mode(opts: dict) -> bool:
    value = str(opts.get("rootless", "auto")).lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    if value != "auto":
        raise OcirtError(f"invalid --rootless value {value!r}: use auto, true or false")
    from ocirt.state import rootless_by_default

    return rootless_by_default()


def state_root(opts: dict) -> str:
    from ocirt.state import default_root

    return os.path.abspath(opts["root"]) if opts.get("root") else default_root(rootless_mode(opts))


def preserve_fds(cmd: dict) -> int:
    """--preserve-fds plus systemd's LISTEN_FDS for this process, which pass through to the container."""
    try:
        count = int(cmd.get("preserve_fds", 0))
    except ValueError:
        raise OcirtError(f"--preserve-fds: not a number: {cmd['preserve_fds']!r}") from None
    return count + listen_fds()


def listen_fds() -> int:
    """Socket activation: systemd's LISTEN_FDS for this process pass through to the container."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        try:
            return int(os.environ.get("LISTEN_FDS", "0"))
        except ValueError:
            return 0
    return 0


def _create_options(opts: dict, cmd: dict, positional: list[str], *, detach: bool):
    from ocirt.container import CreateOptions

    return CreateOptions(
        root=state_root(opts), container_id=positional[0], bundle=cmd.get("bundle"),
        pid_file=cmd.get("pid_file"), pidfd_socket=cmd.get("pidfd_socket"), console_socket=cmd.get("console_socket"),
        no_pivot=bool(cmd.get("no_pivot")), no_new_keyring=bool(cmd.get("no_new_keyring")),
        preserve_fds=preserve_fds(cmd), rootless=rootless_mode(opts), detach=detach,
        relay_console=not detach and not cmd.get("console_socket"), listen_fds=listen_fds(),
        systemd_cgroup=bool(opts.get("systemd_cgroup")), seccomp_learn=_learn_options(cmd),
    )


def _learn_options(cmd: dict):
    if not cmd.get("seccomp_learn"):
        if cmd.get("seccomp_learn_errno"):
            raise OcirtError("--seccomp-learn-errno needs --seccomp-learn PROFILE")
        return None
    from ocirt.linux.seccomp_learn import LearnOptions
    from ocirt.seccomp_profile import parse_errno

    errno_text = cmd.get("seccomp_learn_errno")
    return LearnOptions(cmd["seccomp_learn"], parse_errno(errno_text) if errno_text else None)


def cmd_create(opts, cmd, positional):
    from ocirt.container import create

    create(_create_options(opts, cmd, positional, detach=True))


def cmd_run(opts, cmd, positional):
    from ocirt.run import run

    detach = bool(cmd.get("detach"))
    options = _create_options(opts, cmd, positional, detach=detach)
    code = run(options, keep=bool(cmd.get("keep")))
    if options.seccomp_learn is not None and options.seccomp_learn.summary:
        sys.stderr.write(f"ocirt: seccomp-learn: {options.seccomp_learn.summary}\n")
    return code


def cmd_start(opts, cmd, positional):
    from ocirt.container import start

    start(state_root(opts), positional[0])


def cmd_state(opts, cmd, positional):
    from ocirt.container import state
    from ocirt.fastjson import dumps_indent

    sys.stdout.write(dumps_indent(state(state_root(opts), positional[0])) + "\n")


def cmd_kill(opts, cmd, positional):
    from ocirt.container import kill, parse_signal

    sig = parse_signal(positional[1] if len(positional) > 1 else "SIGTERM")
    kill(state_root(opts), positional[0], sig, all_processes=bool(cmd.get("all")))


def cmd_delete(opts, cmd, positional):
    from ocirt.teardown import delete

    delete(state_root(opts), positional[0], force=bool(cmd.get("force")))


def cmd_list(opts, cmd, positional):
    from ocirt.state import list_containers

    fmt = cmd.get("format", "table")
    if fmt not in ("table", "json"):
        raise OcirtError(f"invalid --format {fmt!r}: use table or json")
    states = []
    for container in list_containers(state_root(opts)):
        states.append(container.spec_state())
        container.close()
    if cmd.get("quiet"):
        for s in states:
            print(s["id"])
    elif fmt == "json":
        from ocirt.fastjson import dumps

        print(dumps(states))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]) for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("   ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())


def _process_file(path: str) -> dict:
    from ocirt.config import CONFIG_MAX_BYTES, check_json_document
    from ocirt.fastjson import loads
    from ocirt.files import Unreadable, read_all

    try:
        with open(path, "rb") as f:
            raw = read_all(f.fileno(), CONFIG_MAX_BYTES)
        process = loads(raw)
    except OSError as err:
        raise OcirtError(f"cannot read process file {path}: {why(err)}") from None
    except Unreadable as err:
        raise OcirtError(f"process file {path}: {err}") from None
    except ValueError as err:  # malformed JSON, or not UTF-8
        raise OcirtError(f"process file {path}: malformed JSON: {err}") from None
    if not isinstance(process, dict):
        raise OcirtError(f"process file {path}: the top level must be a JSON object")
    check_json_document(process, raw, where=f"process file {path}")
    return process


def cmd_exec(opts, cmd, positional):
    from ocirt.execute import ExecOptions, exec_process

    process = _process_file(cmd["process"]) if cmd.get("process") else None
    gids = [g for item in cmd.get("additional_gids", []) for g in item.split(",") if g]
    return exec_process(ExecOptions(
        root=state_root(opts), container_id=positional[0], process=process, args=positional[1:],
        tty=True if cmd.get("tty") else None, detach=bool(cmd.get("detach")), pid_file=cmd.get("pid_file"),
        console_socket=cmd.get("console_socket"), cwd=cmd.get("cwd"), env=cmd.get("env"),
        user=cmd.get("user"), additional_gids=gids, caps=cmd.get("cap"),
        no_new_privs=bool(cmd.get("no_new_privs")), preserve_fds=preserve_fds(cmd),
        apparmor=cmd.get("apparmor"), process_label=cmd.get("process_label"),
        ignore_paused=bool(cmd.get("ignore_paused")), pidfd_socket=cmd.get("pidfd_socket"),
        cgroup=cmd.get("cgroup"),
    ))
