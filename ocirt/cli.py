"""The command line: runc's global flags and commands over the library. No logic of its own.

A table-driven parser instead of argparse: argparse costs ~10 ms to import, a third of a whole `runc run`.
"""

from __future__ import annotations

import os
import sys

from ocirt import OCI_VERSION, __version__, log
from ocirt.errors import OcirtError, why

# name -> (destination, takes a value). Aliases map to the same destination.
GLOBAL_FLAGS = {
    "--root": ("root", True), "--log": ("log", True), "--log-format": ("log_format", True),
    "--debug": ("debug", False), "--systemd-cgroup": ("systemd_cgroup", False),
    "--rootless": ("rootless", True), "--criu": ("criu", True),
    "--help": ("help", False), "-h": ("help", False), "--version": ("version", False), "-v": ("version", False),
}
_CREATE = {
    "--bundle": ("bundle", True), "-b": ("bundle", True), "--pid-file": ("pid_file", True),
    "--console-socket": ("console_socket", True), "--no-pivot": ("no_pivot", False),
    "--no-new-keyring": ("no_new_keyring", False), "--preserve-fds": ("preserve_fds", True),
    "--pidfd-socket": ("pidfd_socket", True),
}
COMMANDS: dict[str, tuple[dict, str]] = {
    "create": (_CREATE, "ID"),
    "run": (dict(_CREATE, **{"--detach": ("detach", False), "-d": ("detach", False),
                             "--keep": ("keep", False)}), "ID"),
    "start": ({}, "ID"),
    "state": ({}, "ID"),
    "kill": ({"--all": ("all", False), "-a": ("all", False)}, "ID [SIGNAL]"),
    "delete": ({"--force": ("force", False), "-f": ("force", False)}, "ID"),
    "list": ({"--quiet": ("quiet", False), "-q": ("quiet", False), "--format": ("format", True),
              "-f": ("format", True)}, ""),
    "spec": ({"--rootless": ("rootless_spec", False), "--bundle": ("bundle", True), "-b": ("bundle", True)}, ""),
    "features": ({}, ""),
    "validate": ({"--bundle": ("bundle", True), "-b": ("bundle", True)}, ""),
    "exec": ({
        "--tty": ("tty", False), "-t": ("tty", False), "--detach": ("detach", False), "-d": ("detach", False),
        "--pid-file": ("pid_file", True), "--console-socket": ("console_socket", True),
        "--cwd": ("cwd", True), "--env": ("env", "multi"), "-e": ("env", "multi"), "--user": ("user", True),
        "-u": ("user", True), "--additional-gids": ("additional_gids", "multi"),
        "-g": ("additional_gids", "multi"), "--cap": ("cap", "multi"), "-c": ("cap", "multi"),
        "--no-new-privs": ("no_new_privs", False), "--preserve-fds": ("preserve_fds", True),
        "--process": ("process", True), "-p": ("process", True), "--process-label": ("process_label", True),
        "--apparmor": ("apparmor", True), "--ignore-paused": ("ignore_paused", False),
        "--cgroup": ("cgroup", "multi"), "--pidfd-socket": ("pidfd_socket", True),
    }, "ID COMMAND [ARGS...]"),
}

USAGE = """usage: ocirt [global options] COMMAND [options] ARGS

ocirt is an OCI runtime (runtime-spec {spec}) with runc's command line.

commands:
  create    create a container          start     start a created container
  run       create and start            state     print a container's state
  kill      send a signal               delete    delete a container
  list      list containers             spec      write a default config.json
  features  print supported features    validate  check a bundle's config.json
  exec      run a process in a container  ps        list a container's processes
  update    change resource limits      events    stats and OOM events
  pause     freeze a container          resume    thaw a paused container
  cgroup    delegate|undelegate cgroup subtrees to a user (root only)

global options:
  --root DIR          state directory (default /run/ocirt, rootless $XDG_RUNTIME_DIR/ocirt)
  --log FILE          append log lines to FILE      --log-format text|json
  --debug             log debug lines               --rootless auto|true|false
  --systemd-cgroup    the container's cgroup is a systemd scope (cgroupsPath slice:prefix:name)
  --version           print the version
"""


class UsageError(OcirtError):
    pass


def parse(argv: list[str], table: dict, into: dict, *, stop_at_positional: bool = False) -> list[str]:
    """Parse flags of ``table`` into ``into``; return the positional arguments."""
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional.extend(argv[i + 1:])
            break
        if arg.startswith("-") and len(arg) > 1 and not (positional and stop_at_positional):
            name, eq, value = arg.partition("=")
            spec = table.get(name) or GLOBAL_FLAGS.get(name)
            if spec is None:
                raise UsageError(f"flag provided but not defined: {name}")
            dest, takes_value = spec
            if takes_value:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise UsageError(f"flag needs an argument: {name}")
                    value = argv[i]
                if takes_value == "multi":
                    into.setdefault(dest, []).append(value)
                else:
                    into[dest] = value
            else:
                into[dest] = value.lower() not in ("false", "0") if eq else True
        else:
            if stop_at_positional and not positional:
                positional.append(arg)
                positional.extend(argv[i + 1:])
                break
            positional.append(arg)
        i += 1
    return positional


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts: dict = {}
    try:
        rest = parse(argv, {}, opts, stop_at_positional=True)
        if opts.get("version"):
            print(version_text())
            return 0
        if not rest or opts.get("help"):
            sys.stdout.write(USAGE.format(spec=OCI_VERSION))
            return 0 if opts.get("help") else 1
        command, args = rest[0], rest[1:]
        if command in ("help", "--help"):
            sys.stdout.write(USAGE.format(spec=OCI_VERSION))
            return 0
        log.configure(opts.get("log"), opts.get("log_format", "text"), bool(opts.get("debug")))
        if command == "ps":
            log.config.quiet_stderr = True
        if opts.get("log_format", "text") not in ("text", "json"):
            raise UsageError(f"invalid --log-format {opts['log_format']!r}: use text or json")
        handler = _HANDLERS.get(command)
        if handler is None:
            raise UsageError(f"unknown command {command!r}; run `ocirt --help`")
        table, _ = COMMANDS.get(command, ({}, ""))
        cmd_opts: dict = {}
        if command in _RAW_ARGS:
            positional = args
        else:
            # exec's command keeps its own flags: stop at the first argument after the id.
            positional = parse(args, table, cmd_opts, stop_at_positional=command == "exec")
        late_log_flags = any(key in cmd_opts for key in ("log", "log_format", "debug"))
        for key in ("root", "log", "log_format", "debug", "rootless"):
            if key in cmd_opts:
                opts[key] = cmd_opts.pop(key)
        if late_log_flags:
            # Logging flags given after the command name count as much as those before it.
            if opts.get("log_format", "text") not in ("text", "json"):
                raise UsageError(f"invalid --log-format {opts['log_format']!r}: use text or json")
            log.configure(opts.get("log"), opts.get("log_format", "text"), bool(opts.get("debug")))
        return handler(opts, cmd_opts, positional) or 0
    except OcirtError as err:
        log.error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - a bug must still end as one error line, not a traceback
        if log.config.threshold <= log.LEVELS["debug"]:
            import traceback

            traceback.print_exc()
        log.error(f"internal error: {type(err).__name__}: {err}")
        return 1


def version_text() -> str:
    from ocirt.linux.seccomp import seccomp_support

    return (f"ocirt version {__version__}\ncommit: {_commit()}\nspec: {OCI_VERSION}\n"
            f"python: {sys.version.split()[0]}\nlibseccomp: {seccomp_support()}")


def _commit() -> str:
    git = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".git")
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            try:
                with open(os.path.join(git, ref)) as f:
                    return f.read().strip()[:12]
            except FileNotFoundError:
                with open(os.path.join(git, "packed-refs")) as f:
                    for line in f:
                        if line.rstrip().endswith(ref):
                            return line[:12]
        return head[:12]
    except OSError:
        return "unknown"


# -- helpers --------------------------------------------------------------------------------------------------
def rootless_mode(opts: dict) -> bool:
    value = str(opts.get("rootless", "auto")).lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    if value != "auto":
        raise UsageError(f"invalid --rootless value {value!r}: use auto, true or false")
    # Like runc: unprivileged, or uid 0 inside a user namespace someone else made (rootless podman runs
    # the runtime so), unless the caller says it is really root (USER=root).
    if os.geteuid() != 0:
        return True
    from ocirt.state import in_user_namespace

    return in_user_namespace() and os.environ.get("USER") != "root"


def state_root(opts: dict) -> str:
    from ocirt.state import default_root

    return os.path.abspath(opts["root"]) if opts.get("root") else default_root(rootless_mode(opts))


def one_id(positional: list[str], command: str, extra: int = 0) -> str:
    if not positional or len(positional) > 1 + extra:
        raise UsageError(f"{command}: requires exactly {'one' if not extra else 'one or two'} argument"
                         f"{'' if not extra else 's'}: {COMMANDS.get(command, ({}, 'ID'))[1]}")
    return positional[0]


def _create_options(opts: dict, cmd: dict, positional: list[str], command: str, *, detach: bool):
    from ocirt.container import CreateOptions

    container_id = one_id(positional, command)
    try:
        preserve = int(cmd.get("preserve_fds", 0))
    except ValueError:
        raise UsageError(f"--preserve-fds: not a number: {cmd['preserve_fds']!r}") from None
    listen_fds = _listen_fds()
    return CreateOptions(
        root=state_root(opts), container_id=container_id, bundle=cmd.get("bundle"),
        pid_file=cmd.get("pid_file"), console_socket=cmd.get("console_socket"),
        no_pivot=bool(cmd.get("no_pivot")), no_new_keyring=bool(cmd.get("no_new_keyring")),
        preserve_fds=preserve + listen_fds, rootless=rootless_mode(opts), detach=detach,
        relay_console=not detach and not cmd.get("console_socket"), listen_fds=listen_fds,
        systemd_cgroup=bool(opts.get("systemd_cgroup")),
    )


def _listen_fds() -> int:
    """Socket activation: systemd's LISTEN_FDS for this process pass through to the container."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        try:
            return int(os.environ.get("LISTEN_FDS", "0"))
        except ValueError:
            return 0
    return 0


# -- command handlers -----------------------------------------------------------------------------------------
def cmd_create(opts, cmd, positional):
    from ocirt.container import create

    container, _ = create(_create_options(opts, cmd, positional, "create", detach=True))
    container.close()


def cmd_run(opts, cmd, positional):
    from ocirt.container import run

    detach = bool(cmd.get("detach"))
    return run(_create_options(opts, cmd, positional, "run", detach=detach), keep=bool(cmd.get("keep")))


def cmd_start(opts, cmd, positional):
    from ocirt.container import start

    start(state_root(opts), one_id(positional, "start"))


def cmd_state(opts, cmd, positional):
    from ocirt.container import state
    from ocirt.fastjson import dumps_indent

    sys.stdout.write(dumps_indent(state(state_root(opts), one_id(positional, "state"))) + "\n")


def cmd_kill(opts, cmd, positional):
    from ocirt.container import kill, parse_signal

    container_id = one_id(positional, "kill", extra=1)
    sig = parse_signal(positional[1] if len(positional) > 1 else "SIGTERM")
    kill(state_root(opts), container_id, sig, all_processes=bool(cmd.get("all")))


def cmd_delete(opts, cmd, positional):
    from ocirt.container import delete

    delete(state_root(opts), one_id(positional, "delete"), force=bool(cmd.get("force")))


def cmd_exec(opts, cmd, positional):
    from ocirt.container import ExecOptions, exec_process

    if not positional:
        raise UsageError("exec: requires at least one argument: ID COMMAND [ARGS...]")
    process = None
    if cmd.get("process"):
        from ocirt.fastjson import JSONError, loads

        try:
            with open(cmd["process"], "rb") as f:
                process = loads(f.read())
        except OSError as err:
            raise OcirtError(f"cannot read process file {cmd['process']}: {why(err)}") from None
        except JSONError as err:
            raise OcirtError(f"process file {cmd['process']}: malformed JSON: {err}") from None
        if not isinstance(process, dict):
            raise OcirtError(f"process file {cmd['process']}: the top level must be a JSON object")
    try:
        preserve = int(cmd.get("preserve_fds", 0))
    except ValueError:
        raise UsageError(f"--preserve-fds: not a number: {cmd['preserve_fds']!r}") from None
    gids = [g for item in cmd.get("additional_gids", []) for g in item.split(",") if g]
    return exec_process(ExecOptions(
        root=state_root(opts), container_id=positional[0], process=process, args=positional[1:],
        tty=True if cmd.get("tty") else None, detach=bool(cmd.get("detach")), pid_file=cmd.get("pid_file"),
        console_socket=cmd.get("console_socket"), cwd=cmd.get("cwd"), env=cmd.get("env"),
        user=cmd.get("user"), additional_gids=gids, caps=cmd.get("cap"),
        no_new_privs=bool(cmd.get("no_new_privs")), preserve_fds=preserve + _listen_fds(),
        apparmor=cmd.get("apparmor"), process_label=cmd.get("process_label"),
        ignore_paused=bool(cmd.get("ignore_paused")),
    ))


def cmd_list(opts, cmd, positional):
    from ocirt.state import list_containers

    fmt = cmd.get("format", "table")
    if fmt not in ("table", "json"):
        raise UsageError(f"invalid --format {fmt!r}: use table or json")
    containers = list_containers(state_root(opts))
    states = []
    for c in containers:
        states.append(c.spec_state())
        c.close()
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


def cmd_spec(opts, cmd, positional):
    from ocirt.fastjson import dumps_indent
    from ocirt.spec.default import default_config

    bundle = cmd.get("bundle") or "."
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise OcirtError(f"{path} exists: remove it first")
    config = default_config(rootless=bool(cmd.get("rootless_spec")))
    try:
        with open(path, "x") as f:
            f.write(dumps_indent(config) + "\n")
    except OSError as err:
        raise OcirtError(f"cannot write {path}: {why(err)}") from None


def cmd_features(opts, cmd, positional):
    from ocirt.fastjson import dumps_indent
    from ocirt.spec.features import features

    sys.stdout.write(dumps_indent(features()) + "\n")


def cmd_validate(opts, cmd, positional):
    from ocirt.fastjson import JSONError, loads
    from ocirt.spec.validate import validate_config

    path = os.path.join(cmd.get("bundle") or ".", "config.json")
    try:
        with open(path, "rb") as f:
            config = loads(f.read())
    except OSError as err:
        raise OcirtError(f"cannot read {path}: {why(err)}") from None
    except JSONError as err:
        raise OcirtError(f"{path}: malformed JSON: {err}") from None
    issues = validate_config(config)
    for issue in issues:
        print(f"{issue.path}: {issue.message}")
    if issues:
        raise OcirtError(f"{path}: {len(issues)} error{'s' if len(issues) != 1 else ''}")
    print(f"{path}: valid (runtime-spec {OCI_VERSION})")


_HANDLERS = {
    "create": cmd_create, "run": cmd_run, "start": cmd_start, "state": cmd_state, "kill": cmd_kill,
    "delete": cmd_delete, "list": cmd_list, "spec": cmd_spec, "features": cmd_features,
    "validate": cmd_validate, "exec": cmd_exec,
}
_RAW_ARGS: set[str] = set()


def _register(commands: dict, handlers: dict, raw: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    COMMANDS.update(commands)
    _HANDLERS.update(handlers)
    _RAW_ARGS.update(raw)


try:
    from ocirt import cli_control
except ImportError:  # pragma: no cover - while the module is being written
    cli_control = None  # type: ignore[assignment]
else:
    _register(cli_control.COMMANDS, cli_control.HANDLERS, getattr(cli_control, "RAW_ARGS", set()))


if __name__ == "__main__":
    sys.exit(main())
