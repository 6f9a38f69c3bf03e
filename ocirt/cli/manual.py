"""The man pages (ocirt(8) and ocirt-COMMAND(8)) and the bash completion, made from the command table.

`python -m ocirt.cli.manual [DIR]` writes them under DIR (default: the checkout's share/), where
pip installs them from (pyproject's data-files) and scripts/bootstrap links them from. A test checks that
the files in the checkout are what this module makes of the current table.
"""

from __future__ import annotations

import os
import sys

from ocirt.cli import ALIASES, COMMANDS, GLOBAL_FLAGS, SWITCH, VALUE
from ocirt.cli.helptext import ABOUT, TAGLINE, command_name, usage_line
from ocirt.version import OCI_VERSION, __version__

MAN_DIR = os.path.join("man", "man8")
COMPLETION = os.path.join("bash-completion", "completions", "ocirt")


# -- man pages -------------------------------------------------------------------------------------------
def _roff(text: str) -> str:
    """Text as roff reads it literally: backslashes escaped, hyphens as minus signs, no control lines."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _paragraphs(text: str) -> str:
    out = []
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("    "):
            out.append(f".PP\n.RS 4\n.nf\n{_roff(paragraph.strip())}\n.fi\n.RE")
        else:
            out.append(f".PP\n{_roff(paragraph)}")
    return "\n".join(out)


def _flag_items(flags: tuple) -> str:
    items = []
    for flag in flags:
        label = ", ".join(f"\\fB{_roff(name)}\\fR" + ("" if flag[2] == SWITCH else " \\fIvalue\\fR")
                          for name in flag[0])
        repeat = " (repeatable)" if flag[2] not in (SWITCH, VALUE) and "repeatable" not in flag[3] else ""
        items.append(f".TP\n{label}\n{_roff(flag[3] + repeat)}")
    return "\n".join(items)


def _header(name: str, summary: str) -> str:
    return (f'.TH {name.upper()} 8 "" "ocirt {__version__}" "System Manager\'s Manual"\n'
            f".SH NAME\n{_roff(name)} \\- {_roff(summary)}\n")


def _synopsis(command) -> str:
    return f".SH SYNOPSIS\n.B ocirt\n[\\fIglobal options\\fR]\n{_roff(usage_line(command).removeprefix('ocirt '))}\n"


def man_page(command) -> str:
    text = _header(f"ocirt-{command.name}", command.summary) + _synopsis(command)
    if command.description:
        text += f".SH DESCRIPTION\n{_paragraphs(command.description)}\n"
    if command.flags:
        text += f".SH OPTIONS\n{_flag_items(command.flags)}\n"
    text += (".PP\nThe global options of \\fBocirt\\fR(8) may also be given after the command name.\n"
             ".SH EXIT STATUS\n0 on success, 1 on an error or a wrong command line (the message is on "
             "standard error and in the \\fB\\-\\-log\\fR file)")
    if command.name == "run":
        text += "; in the foreground, the exit status of the container's process"
    text += ".\n.SH SEE ALSO\n\\fBocirt\\fR(8)\n"
    return text


def main_page() -> str:
    commands = "\n".join(f".TP\n\\fB{_roff(command_name(c, ALIASES))}\\fR\n{_roff(c.summary)}"
                         + (f" (\\fBocirt\\-{_roff(c.name)}\\fR(8))" if c.name != "help" else "")
                         for c in COMMANDS)
    see_also = ", ".join(f"\\fBocirt\\-{_roff(c.name)}\\fR(8)" for c in COMMANDS if c.name != "help")
    return (_header("ocirt", TAGLINE)
            + ".SH SYNOPSIS\n.B ocirt\n[\\fIglobal options\\fR] \\fIcommand\\fR [\\fIcommand options\\fR] "
              "[\\fIarguments\\fR...]\n"
            + f".SH DESCRIPTION\n.PP\nocirt implements runtime\\-spec {OCI_VERSION} with runc's commands, "
              "flags, output and exit codes, so container engines can use it in place of runc.\n"
            + f"{_paragraphs(ABOUT)}\n"
            + f".SH COMMANDS\n{commands}\n"
            + f".SH GLOBAL OPTIONS\n{_flag_items(GLOBAL_FLAGS)}\n"
            + ".SH ENVIRONMENT\n.TP\n.B XDG_RUNTIME_DIR\nwhere an unprivileged user's containers keep their "
              "state (\\fI$XDG_RUNTIME_DIR/ocirt\\fR) unless \\fB\\-\\-root\\fR says otherwise\n"
            + ".TP\n.B LISTEN_FDS, LISTEN_PID\nsocket activation: fds passed to ocirt pass on to the "
              "container's process\n"
            + f".SH SEE ALSO\n{see_also}, \\fBrunc\\fR(8)\n")


# -- bash completion -------------------------------------------------------------------------------------
# What a flag's value completes to: files, directories or a fixed list of words.
_FILE_VALUES = {"bundle": "-d", "root": "-d", "cwd": "", "log": "-f", "pid_file": "-f", "process": "-f",
                "resources": "-f", "console_socket": "-f", "pidfd_socket": "-f", "criu": "-f", "path": ""}
_WORD_VALUES = {"log_format": "text json", "rootless": "auto true false", "format": "table json"}


def _value_cases(flags: tuple, indent: str) -> str:
    """case arms that complete the value of the flag just typed (``$prev``)."""
    lines = []
    for flag in flags:
        if flag[2] == SWITCH:
            continue
        names = "|".join(flag[0])
        if flag[1] in _WORD_VALUES:
            action = f'COMPREPLY=($(compgen -W "{_WORD_VALUES[flag[1]]}" -- "$cur")); return'
        elif _FILE_VALUES.get(flag[1]):
            action = f'COMPREPLY=($(compgen {_FILE_VALUES[flag[1]]} -- "$cur")); return'
        else:
            action = "return"
        lines.append(f"{indent}{names}) {action} ;;")
    return "\n".join(lines)


def _words(flags: tuple, takes_value: bool) -> str:
    return " ".join(name for flag in flags for name in flag[0] if (flag[2] != SWITCH) == takes_value)


def bash_completion() -> str:
    names = " ".join([c.name for c in COMMANDS] + list(ALIASES))
    takes_id = " ".join(c.name for c in COMMANDS if c.args.startswith("<container-id>"))
    arms = []
    for c in COMMANDS:
        flags = " ".join([name for flag in c.flags for name in flag[0]] + ["--help"])
        arms.append(f'    {c.name}{"|" + "|".join(a for a, n in ALIASES.items() if n == c.name) if c.name in ALIASES.values() else ""})\n'
                    f'        flags="{flags}"\n        valued="{_words(c.flags, True)}"\n'
                    + (f'        case "$prev" in\n{_value_cases(c.flags, "        ")}\n        esac\n' if _words(c.flags, True) else "")
                    + "        ;;")
    global_cases = _value_cases(GLOBAL_FLAGS, "    ").replace("; return ;;", "; return 0 ;;").replace(
        ") return ;;", ") return 0 ;;")
    return f"""# bash completion for ocirt(8). Made from the command table by `python -m ocirt.cli.manual`: do not edit.
_ocirt_global_value() {{
    local cur=$2
    case "$1" in
{global_cases}
    esac
    return 1
}}

_ocirt() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local global_valued="{_words(GLOBAL_FLAGS, True)}"
    local command="" root="" i=1 word
    # The command is the first word that is neither a global flag nor a global flag's value.
    while [ "$i" -lt "$COMP_CWORD" ]; do
        word=${{COMP_WORDS[i]}}
        if [[ " $global_valued " == *" $word "* ]]; then
            [ "$word" = --root ] && root=${{COMP_WORDS[i+1]}}
            i=$((i + 2))
        elif [[ "$word" == -* ]]; then
            i=$((i + 1))
        else
            command=$word
            break
        fi
    done
    if [ -z "$command" ]; then
        _ocirt_global_value "$prev" "$cur" && return
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "{_words(GLOBAL_FLAGS, False)} {_words(GLOBAL_FLAGS, True)}" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{names}" -- "$cur"))
        fi
        return
    fi
    local flags="" valued=""
    case "$command" in
{chr(10).join(arms)}
    *) return ;;
    esac
    # Global flags may follow the command too, unless the command has a flag of the same name.
    [[ " $flags " == *" $prev "* ]] || ! _ocirt_global_value "$prev" "$cur" || return
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi
    # Which argument of the command this is: its flags and their values do not count.
    local count=1 j=$((i + 1))
    while [ "$j" -lt "$COMP_CWORD" ]; do
        word=${{COMP_WORDS[j]}}
        if [[ " $valued $global_valued " == *" $word "* ]]; then
            j=$((j + 2))
            continue
        fi
        [[ "$word" == -* ]] || count=$((count + 1))
        j=$((j + 1))
    done
    case "$command" in
    help|h) [ "$count" -eq 1 ] && COMPREPLY=($(compgen -W "{names}" -- "$cur")) ;;
    cgroup) [ "$count" -eq 1 ] && COMPREPLY=($(compgen -W "delegate undelegate" -- "$cur")) ;;
    kill) [ "$count" -eq 2 ] && COMPREPLY=($(compgen -W "$(compgen -A signal | sed 's/^SIG//')" -- "$cur")) ;;
    esac
    if [ "$count" -eq 1 ] && [[ " {takes_id} " == *" $command "* ]]; then
        COMPREPLY=($(compgen -W "$("${{COMP_WORDS[0]}}" ${{root:+--root "$root"}} list --quiet 2>/dev/null)" -- "$cur"))
    fi
}}
complete -F _ocirt ocirt
"""


# -- writing ---------------------------------------------------------------------------------------------
def generated() -> dict[str, str]:
    """Relative path under share/ -> content, for every file this module makes."""
    files = {os.path.join(MAN_DIR, "ocirt.8"): main_page()}
    for command in COMMANDS:
        if command.name != "help":
            files[os.path.join(MAN_DIR, f"ocirt-{command.name}.8")] = man_page(command)
    files[COMPLETION] = bash_completion()
    return files


def default_share_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "share")


def write(share_dir: str) -> list[str]:
    written = []
    for relative, content in generated().items():
        path = os.path.join(share_dir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(sys.argv[1] if len(sys.argv) > 1 else default_share_dir()):
        print(path)
