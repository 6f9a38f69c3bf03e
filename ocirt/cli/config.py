"""spec, features, validate and --version: config.json and what this installation supports."""

from __future__ import annotations

import os
import sys

from ocirt.errors import OcirtError, why
from ocirt.version import OCI_VERSION, __version__


def cmd_spec(opts, cmd, positional):
    from ocirt.fastjson import dumps_indent
    from ocirt.spec.default import default_config

    path = os.path.join(cmd.get("bundle") or ".", "config.json")
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


def version_text() -> str:
    """runc's --version lines (docker parses `commit:`), then the libseccomp that seccomp profiles use."""
    from ocirt.linux.seccomp import seccomp_support

    return (f"ocirt version {__version__}\ncommit: {_commit()}\nspec: {OCI_VERSION}\n"
            f"python: {sys.version.split()[0]}\nlibseccomp: {seccomp_support()}\n")


def _commit() -> str:
    """The checkout's commit, read from .git without running git (a worktree's .git is a file)."""
    dot_git = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".git")
    try:
        git_dir = dot_git
        if os.path.isfile(dot_git):
            with open(dot_git) as f:
                git_dir = os.path.join(os.path.dirname(dot_git), f.read().strip().removeprefix("gitdir: "))
        common = git_dir
        if os.path.exists(os.path.join(git_dir, "commondir")):
            with open(os.path.join(git_dir, "commondir")) as f:
                common = os.path.join(git_dir, f.read().strip())
        with open(os.path.join(git_dir, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        for directory in (git_dir, common):
            try:
                with open(os.path.join(directory, ref)) as f:
                    return f.read().strip()[:12]
            except FileNotFoundError:
                pass
        with open(os.path.join(common, "packed-refs")) as f:
            for line in f:
                if line.rstrip().endswith(" " + ref):
                    return line[:12]
    except OSError:
        pass
    return "unknown"
