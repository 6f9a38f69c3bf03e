"""`--help`, `-h` and `ocirt help [COMMAND]`, laid out like runc's. ``ocirt.cli`` hands over the table's
entries to render; this module imports nothing of the CLI."""

from __future__ import annotations

from ocirt.version import OCI_VERSION, __version__

WIDTH = 100
TAGLINE = f"an OCI runtime (runtime-spec {OCI_VERSION}), rootless first, with runc's command line"
ABOUT = ("A bundle is a directory holding a config.json and the root filesystem it names. To run one "
         "in the foreground:\n\n    ocirt run [-b bundle] <container-id>\n\nThe id names the container "
         "under --root until it is deleted; the bundle defaults to the current directory.")


def flag_label(flag: tuple) -> str:
    """'--bundle value, -b value', as runc shows a flag (a flag whose ``takes`` is 0, SWITCH, has no value)."""
    suffix = " value" if flag[2] else ""
    return ", ".join(name + suffix for name in flag[0])


def usage_line(command) -> str:
    options = " [command options]" if command.flags else ""
    return f"ocirt {command.name}{options}{' ' + command.args if command.args else ''}"


def wrap(text: str, indent: str = "   ") -> str:
    """Paragraphs filled to WIDTH; a paragraph indented by four spaces is an example, kept as it is."""
    import textwrap

    out = []
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("    "):
            out.append(indent + paragraph)
        else:
            out.append(textwrap.fill(paragraph, WIDTH, initial_indent=indent, subsequent_indent=indent))
    return "\n\n".join(out)


def _flag_rows(flags: tuple) -> str:
    width = max((len(flag_label(f)) for f in flags), default=0)
    return "".join(f"   {flag_label(f).ljust(width)}  {f[3]}\n" for f in flags)


def command_help(command) -> str:
    text = f"NAME:\n   ocirt {command.name} - {command.summary}\n\nUSAGE:\n   {usage_line(command)}\n"
    if command.description:
        text += f"\nDESCRIPTION:\n{wrap(command.description)}\n"
    if command.flags:
        text += f"\nOPTIONS:\n{_flag_rows(command.flags)}"
    return text


def command_name(command, aliases: dict) -> str:
    """'help, h': the name with its aliases."""
    return ", ".join([command.name] + [alias for alias, name in aliases.items() if name == command.name])


def global_help(commands: tuple, global_flags: tuple, aliases: dict) -> str:
    names = [command_name(c, aliases) for c in commands]
    width = max(len(n) for n in names)
    rows = "".join(f"   {name.ljust(width)}  {c.summary}\n" for name, c in zip(names, commands, strict=True))
    return (f"NAME:\n   ocirt - {TAGLINE}\n\n{wrap(ABOUT)}\n\nUSAGE:\n"
            f"   ocirt [global options] command [command options] [arguments...]\n\n"
            f"VERSION:\n   {__version__} (runtime-spec {OCI_VERSION})\n\nCOMMANDS:\n{rows}\n"
            f"GLOBAL OPTIONS:\n{_flag_rows(global_flags)}")
