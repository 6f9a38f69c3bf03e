"""The command line: runc's global flags and commands over the library. No logic of its own.

``COMMANDS`` is the one command table: every command, its arguments and flags, with the words of its
help. The parser below, `--help` and `ocirt help` (rendered by ``ocirt.cli.helptext``), the man pages and
the bash completion (``ocirt.cli.manual``) all read it, so they cannot disagree. The flag names, argument
counts and defaults are runc's. A flag is ``(names, dest, takes, help)``: ``takes`` is SWITCH (no value;
``--flag=false`` turns it off), VALUE (the last one given wins) or LIST (each one given is kept).

`main` parses the global flags, finds the command, answers --help, checks the number of arguments, and
only then imports the command's module (``ocirt.cli.<group>``) and calls its handler, ``cmd_<name>``.
Handlers import the library when they run. The library never imports this package and no module of it
imports this one back: the table and its readers are handed what they need. The table sits here, in plain
tuples the compiler folds into constants, since a module of its own would cost each hot command (state,
kill, start, delete) one more file to load. A table-driven parser instead of argparse: argparse costs
~10 ms to import, a third of a whole `runc run`.
"""

from __future__ import annotations

import sys

from ocirt import log
from ocirt.errors import OcirtError

SWITCH, VALUE, LIST = 0, 1, 2

Flag = tuple  # (names: tuple[str, ...], dest: str, takes: int, help: str)


class Command:
    """One command. ``module`` (under ocirt.cli) holds its handler, ``cmd_<name>``; ``args`` is the
    usage line's arguments; ``min_args``/``max_args`` (None: no limit) are checked before the handler runs.
    ``interspersed`` is False where flags end at the first argument (exec's and ps's own arguments follow)."""

    __slots__ = ("name", "module", "summary", "args", "min_args", "max_args", "flags", "description",
                 "interspersed")

    def __init__(self, name: str, module: str, summary: str, args: str, min_args: int, max_args: int | None,
                 flags: tuple = (), description: str = "", interspersed: bool = True):
        self.name = name
        self.module = module
        self.summary = summary
        self.args = args
        self.min_args = min_args
        self.max_args = max_args
        self.flags = flags
        self.description = description
        self.interspersed = interspersed

    def lookup(self) -> dict[str, Flag]:
        """Flag name -> flag: the command's own, then the global flags (accepted after the command too)."""
        table = {name: flag for flag in GLOBAL_FLAGS for name in flag[0]}
        table.update({name: flag for flag in self.flags for name in flag[0]})
        return table


GLOBAL_FLAGS: tuple[Flag, ...] = (
    (("--debug",), "debug", SWITCH,
     "trace each step of the lifecycle with its timing (to the --log file, or to stderr)"),
    (("--log",), "log", VALUE, "append log lines to this file (created if missing; default: stderr)"),
    (("--log-format",), "log_format", VALUE, "the log's format: 'text' (default) or 'json'"),
    (("--root",), "root", VALUE,
     "directory for the containers' state (default: /run/ocirt; rootless: $XDG_RUNTIME_DIR/ocirt)"),
    (("--criu",), "criu", VALUE, "accepted for runc's command line; ocirt has no checkpoint/restore"),
    (("--systemd-cgroup",), "systemd_cgroup", SWITCH,
     "make the container's cgroup a systemd scope (cgroupsPath is then slice:prefix:name)"),
    (("--rootless",), "rootless", VALUE,
     "'true', 'false' or 'auto' (default): treat the caller as unprivileged, skipping cgroups it cannot "
     "write"),
    (("--help", "-h"), "help", SWITCH, "show help"),
    (("--version", "-v"), "version", SWITCH, "print the version"),
)

_ID = "<container-id>"
_BUNDLE = (("--bundle", "-b"), "bundle", VALUE,
           "the bundle's directory, holding config.json (default: the current directory)")
_CONSOLE_SOCKET = (("--console-socket",), "console_socket", VALUE,
                   "an AF_UNIX socket that receives the terminal's master fd (for process.terminal)")
_PID_FILE = (("--pid-file",), "pid_file", VALUE, "write the process's host pid to this file")
_PRESERVE_FDS = (("--preserve-fds",), "preserve_fds", VALUE,
                 "keep N more fds open in the container, after stdio and $LISTEN_FDS (default: 0)")
_PIDFD_SOCKET = (("--pidfd-socket",), "pidfd_socket", VALUE,
                 "an AF_UNIX socket that receives a pidfd of the process")
_CREATE_FLAGS = (
    _BUNDLE, _CONSOLE_SOCKET, _PID_FILE,
    (("--no-pivot",), "no_pivot", SWITCH,
     "move the rootfs with MS_MOVE and chroot instead of pivot_root (for a rootfs on a ramdisk)"),
    (("--no-new-keyring",), "no_new_keyring", SWITCH,
     "keep the caller's session keyring instead of making one for the container"),
    _PRESERVE_FDS, _PIDFD_SOCKET,
    (("--seccomp-learn",), "seccomp_learn", VALUE,
     "record every syscall of the container's processes and merge them into this seccomp profile "
     "(made if missing), in place of the config's own linux.seccomp; works unprivileged"),
    (("--seccomp-learn-errno",), "seccomp_learn_errno", VALUE,
     "the errno the learned profile's default action returns, a name or number (default: EPERM, or "
     "the existing profile's)"),
)
_FORMAT = (("--format", "-f"), "format", VALUE, "'table' (default) or 'json'")

_UPDATE_FLAGS = (
    (("--resources", "-r"), "resources", VALUE,
     "a file of LinuxResources JSON ('-' reads standard input); the other flags are then ignored"),
    (("--blkio-weight",), "blkio_weight", VALUE, "block IO weight, 10 to 1000"),
    (("--cpu-period",), "cpu_period", VALUE, "CFS period in microseconds"),
    (("--cpu-quota",), "cpu_quota", VALUE, "CFS quota in microseconds per period (-1: no limit)"),
    (("--cpu-burst",), "cpu_burst", VALUE, "CFS burst in microseconds"),
    (("--cpu-share", "--cpu-shares"), "cpu_shares", VALUE, "CPU shares, a relative weight"),
    (("--cpu-rt-period",), "cpu_rt_period", VALUE, "realtime period in microseconds"),
    (("--cpu-rt-runtime",), "cpu_rt_runtime", VALUE, "realtime runtime in microseconds per period"),
    (("--cpu-idle",), "cpu_idle", VALUE, "1 makes the cgroup SCHED_IDLE, 0 undoes it"),
    (("--cpuset-cpus",), "cpuset_cpus", VALUE, "the CPUs to run on, e.g. 0-2,4"),
    (("--cpuset-mems",), "cpuset_mems", VALUE, "the memory nodes to use, e.g. 0"),
    (("--memory",), "memory", VALUE, "memory limit in bytes (k, m, g suffixes)"),
    (("--memory-reservation",), "memory_reservation", VALUE, "memory soft limit in bytes"),
    (("--memory-swap",), "memory_swap", VALUE, "memory plus swap limit in bytes (-1: unlimited swap)"),
    (("--kernel-memory",), "kernel_memory", VALUE, "ignored, with a warning: kernels no longer have it"),
    (("--kernel-memory-tcp",), "kernel_memory_tcp", VALUE, "ignored, with a warning"),
    (("--pids-limit",), "pids_limit", VALUE, "the most processes the container may have (-1: no limit)"),
    (("--l3-cache-schema",), "l3_cache_schema", VALUE, "Intel RDT L3 schema (refused: not supported)"),
    (("--mem-bw-schema",), "mem_bw_schema", VALUE, "Intel RDT memory bandwidth schema (refused)"),
)

_EXEC_FLAGS = (
    _CONSOLE_SOCKET,
    (("--cwd",), "cwd", VALUE, "the working directory in the container"),
    (("--env", "-e"), "env", LIST, "set an environment variable, NAME=VALUE (repeatable)"),
    (("--tty", "-t"), "tty", SWITCH, "give the process a pseudo-terminal"),
    (("--user", "-u"), "user", VALUE, "the uid[:gid] to run as"),
    (("--additional-gids", "-g"), "additional_gids", LIST, "supplementary gids (repeatable, or comma-separated)"),
    (("--process", "-p"), "process", VALUE, "a process.json to run instead of COMMAND and these flags"),
    (("--detach", "-d"), "detach", SWITCH, "return once the process runs, without waiting for it"),
    _PID_FILE,
    (("--process-label",), "process_label", VALUE, "the SELinux label of the process"),
    (("--apparmor",), "apparmor", VALUE, "the AppArmor profile of the process"),
    (("--no-new-privs",), "no_new_privs", SWITCH, "set no_new_privs for the process"),
    (("--cap", "-c"), "cap", LIST, "add a capability to the process's sets (repeatable)"),
    _PRESERVE_FDS,
    (("--cgroup",), "cgroup", LIST, "run in this existing sub-cgroup, [CONTROLLER:]PATH (repeatable)"),
    (("--ignore-paused",), "ignore_paused", SWITCH, "allow exec in a paused container"),
    _PIDFD_SOCKET,
)

_CONTAINER = "container"
COMMANDS: tuple[Command, ...] = (
    Command("create", _CONTAINER, "create a container", _ID, 1, 1, _CREATE_FLAGS,
            "Sets the container up from its bundle (namespaces, cgroups, mounts) and leaves its process "
            "waiting, before execve, for `ocirt start`. The id must be unique under --root."),
    Command("run", _CONTAINER, "create and start a container", _ID, 1, 1, _CREATE_FLAGS + (
        (("--detach", "-d"), "detach", SWITCH, "return once the process runs, without waiting for it"),
        (("--keep",), "keep", SWITCH, "keep the container's state after it exits (delete it later)"),
    ), "Creates and starts the container from its bundle. In the foreground it waits for the process, "
       "relays its terminal when process.terminal is set, exits with the process's exit code (128+N "
       "when killed by signal N) and deletes the container unless --keep is given."),
    Command("start", _CONTAINER, "start the process of a created container", _ID, 1, 1, (),
            "Lets the created container's process run its program (the spec's start operation)."),
    Command("state", _CONTAINER, "print a container's state as JSON", _ID, 1, 1, (),
            "Prints the OCI state of the container: ociVersion, id, status, pid, bundle and annotations."),
    Command("kill", _CONTAINER, "send a signal to a container's process", f"{_ID} [signal]", 1, 2, (
        (("--all", "-a"), "all", SWITCH, "send the signal to every process in the container"),
    ), "Sends the signal (a name such as KILL or SIGKILL, or a number; default SIGTERM) to the "
       "container's process."),
    Command("delete", _CONTAINER, "delete a container and what it holds", _ID, 1, 1, (
        (("--force", "-f"), "force", SWITCH, "kill the container's processes first if it still runs"),
    ), "Removes a stopped (or, with --force, any) container: its processes, cgroups and state."),
    Command("list", _CONTAINER, "list the containers under --root", "", 0, 0, (
        _FORMAT, (("--quiet", "-q"), "quiet", SWITCH, "print only the containers' ids"),
    ), "Lists every container in the state directory with its pid, status, bundle, creation time and "
       "owner."),
    Command("exec", _CONTAINER, "run a new process in a running container",
            f"{_ID} <command> [args...]  ||  -p process.json {_ID}", 1, None, _EXEC_FLAGS,
            "Runs a process in the container's namespaces, cgroups and security settings. Flags must come "
            "before the id: what follows the id is the command and its own arguments.",
            interspersed=False),
    Command("ps", "control", "list the processes of a container", f"{_ID} [ps options]", 1, None, (_FORMAT,),
            "Lists the container's processes with ps(1), passing the options after the id (after `--`) to "
            "it; --format json prints their host pids as a JSON array.", interspersed=False),
    Command("pause", "control", "freeze every process of a container", _ID, 1, 1, (),
            "Freezes the container's processes through the cgroup freezer."),
    Command("resume", "control", "thaw a paused container", _ID, 1, 1, (),
            "Thaws the processes of a paused container."),
    Command("update", "control", "change a container's resource limits", _ID, 1, 1, _UPDATE_FLAGS,
            "Changes the cgroup limits of a created, running or paused container. A value of 0 (or an "
            "empty one) leaves a limit as it is, as in runc."),
    Command("events", "control", "print a container's stats and OOM events", _ID, 1, 1, (
        (("--interval",), "interval", VALUE, "how often to print stats, e.g. 5s or 500ms (default: 5s)"),
        (("--stats",), "stats", SWITCH, "print the stats once and exit"),
    ), "Prints the container's resource usage as JSON lines every --interval, and an event when the "
       "kernel's OOM killer strikes, until the container stops."),
    Command("spec", "config", "write a default config.json", "", 0, 0, (
        (("--bundle", "-b"), "bundle", VALUE, "write config.json into this directory (default: the current one)"),
        (("--rootless",), "rootless_spec", SWITCH,
         "a config an unprivileged user can run (a user namespace mapping the caller to root)"),
    ), "Writes a config.json for a busybox-like shell (rootfs in ./rootfs) to edit. It refuses to "
       "replace an existing config.json."),
    Command("features", "config", "print the features this ocirt supports", "", 0, 0, (),
            "Prints the runtime-spec features document: the spec versions, hooks, mount options, "
            "namespaces, capabilities, cgroup and seccomp support of this installation."),
    Command("validate", "config", "check a bundle's config.json against runtime-spec", "", 0, 0, (_BUNDLE,),
            "Checks config.json against the runtime-spec schemas and prints each violation with its JSON "
            "path (an ocirt command; runc has none)."),
    Command("cgroup", "cgroup", "hand cgroup subtrees to a user (root only)", "delegate|undelegate", 1, 1, (
        (("--user", "-u"), "user", VALUE, "the user who gets (or gives back) the subtrees (required)"),
        (("--controllers",), "controllers", VALUE, "a comma-separated list (default: all that can be delegated)"),
        (("--path",), "path", VALUE, "the subtree's path under each hierarchy (default: a per-user one)"),
    ), "delegate chowns a cgroup subtree in each hierarchy to the user, so rootless containers of that "
       "user get resource limits; undelegate gives them back to root (an ocirt command; runc has none)."),
    Command("seccomp", "seccomp", "show, compare and apply seccomp profiles", "show|diff|apply <profile>...",
            2, 3, (_BUNDLE,),
            "show PROFILE lists a profile's rules (a linux.seccomp section, or a config.json holding one); "
            "diff A B shows the syscalls and actions B adds, removes or changes from A (exit code 1 when "
            "they differ); apply PROFILE writes it into the bundle's config.json as linux.seccomp. "
            "Profiles are learned with `ocirt run --seccomp-learn` (an ocirt command; runc has none)."),
    Command("help", "", "show the commands, or one command's help", "[command]", 0, 1, (),
            "Prints the list of commands, or the help of the command named."),
)

BY_NAME: dict[str, Command] = {command.name: command for command in COMMANDS}
ALIASES = {"h": "help"}


_GLOBAL_LOOKUP = {name: flag for flag in GLOBAL_FLAGS for name in flag[0]}
_LOG_KEYS = ("root", "log", "log_format", "debug", "rootless")


class UsageError(OcirtError):
    """A command line that does not fit the table; ``command`` is the one whose help goes with it."""

    def __init__(self, message: str, command: Command | None = None, *, usage_only: bool = False):
        super().__init__(message)
        self.command = command
        self.usage_only = usage_only


def parse(argv: list[str], lookup: dict, into: dict, *, interspersed: bool = True) -> list[str]:
    """Parse the flags of ``lookup`` into ``into``; return the arguments. Without ``interspersed``, flags
    end at the first argument: everything after it is returned as it is."""
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional.extend(argv[i + 1:])
            break
        if arg.startswith("-") and len(arg) > 1:
            name, eq, value = arg.partition("=")
            flag = lookup.get(name)
            if flag is None:
                raise UsageError(f"flag provided but not defined: {name}")
            dest, takes = flag[1], flag[2]
            if takes == SWITCH:
                into[dest] = value.lower() not in ("false", "0") if eq else True
            else:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise UsageError(f"flag needs an argument: {name}")
                    value = argv[i]
                if takes == LIST:
                    into.setdefault(dest, []).append(value)
                else:
                    into[dest] = value
        else:
            positional.append(arg)
            if not interspersed:
                positional.extend(argv[i + 1:])
                break
        i += 1
    return positional


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts: dict = {}
    command: Command | None = None
    try:
        rest = parse(argv, _GLOBAL_LOOKUP, opts, interspersed=False)
        if opts.get("version"):
            from ocirt.cli.config import version_text

            sys.stdout.write(version_text())
            return 0
        if not rest or opts.get("help"):
            _print_help(None)
            return 0  # runc prints its help and exits 0 without a command too
        name = ALIASES.get(rest[0], rest[0])
        command = BY_NAME.get(name)
        if command is None:
            # runc's exit code for an unknown command, with words that say what is wrong.
            raise OcirtError(f"unknown command {name!r}; run `ocirt --help`", exit_code=3)
        _configure_log(opts)
        cmd_opts: dict = {}
        positional = parse(rest[1:], command.lookup(), cmd_opts, interspersed=command.interspersed)
        if cmd_opts.get("help"):
            _print_help(command)
            return 0
        late = [key for key in _LOG_KEYS if key in cmd_opts]
        for key in late:
            opts[key] = cmd_opts.pop(key)
        if late:
            # Flags of the global table given after the command name count as much as those before it.
            _configure_log(opts)
        for key in ("version", "criu", "systemd_cgroup", "help"):
            if key in cmd_opts:
                opts[key] = cmd_opts.pop(key)
        check_count(command, positional)
        if command.name == "help":
            return _help(positional)
        module = __import__(f"ocirt.cli.{command.module}", fromlist=("_",))
        return getattr(module, f"cmd_{command.name}")(opts, cmd_opts, positional) or 0
    except UsageError as err:
        # As runc: the error on stderr (and in the log), the command's help on stdout.
        sys.stdout.write(f"Incorrect Usage{'.' if err.usage_only else ': ' + str(err)}\n\n")
        _print_help(err.command or command)
        log.error(str(err))
        return err.exit_code
    except OcirtError as err:
        log.error(str(err), fields=err.fields())
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - a bug must still end as one error line, not a traceback
        if log.config.threshold <= log.LEVELS["debug"]:
            import traceback

            traceback.print_exc()
        log.error(f"internal error: {type(err).__name__}: {err}")
        return 1


def _configure_log(opts: dict) -> None:
    log_format = opts.get("log_format", "text")
    if log_format not in ("text", "json"):
        raise UsageError(f"invalid --log-format {log_format!r}: use text or json")
    log.configure(opts.get("log"), log_format, bool(opts.get("debug")))


def check_count(command: Command, positional: list[str]) -> None:
    """runc's words for a wrong number of arguments."""
    count, low, high = len(positional), command.min_args, command.max_args
    if low == high and count != low:
        rule = f"exactly {low}"
    elif count < low:
        rule = f"a minimum of {low}"
    elif high is not None and count > high:
        rule = f"a maximum of {high}"
    else:
        return
    raise UsageError(f'"{command.name}" requires {rule} argument(s)', command, usage_only=True)


def _print_help(command: Command | None) -> None:
    from ocirt.cli import helptext

    sys.stdout.write(helptext.command_help(command) if command
                     else helptext.global_help(COMMANDS, GLOBAL_FLAGS, ALIASES))


def _help(topic: list[str]) -> int:
    """`ocirt help [COMMAND]`."""
    if not topic:
        _print_help(None)
        return 0
    command = BY_NAME.get(ALIASES.get(topic[0], topic[0]))
    if command is None:
        raise OcirtError(f"no help topic for {topic[0]!r}: run `ocirt help` for the commands", exit_code=3)
    _print_help(command)
    return 0
