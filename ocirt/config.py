"""The bundle's config.json as ocirt reads it: bounded in size and depth, parsed, validated, and checked for
what a schema can't say; and the copy saved in the container's state directory for exec."""

from __future__ import annotations

import os

from ocirt.errors import ConfigError, OcirtError, why
from ocirt.files import read_all, write_file_atomic
from ocirt.state import Container


def load_config(bundle: str) -> dict:
    path = os.path.join(bundle, "config.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            raw = read_all(fd, CONFIG_MAX_BYTES)
        finally:
            os.close(fd)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {why(err)}") from None
    except ValueError:
        raise ConfigError(f"{path}: larger than {CONFIG_MAX_BYTES >> 20} MiB, the most ocirt reads") from None
    from ocirt.fastjson import JSONError, loads

    try:
        config = loads(raw)
    except (JSONError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    check_json_document(config, raw, where=path)
    from ocirt.spec.validate import check_config

    check_config(config)
    _check_counts(config)
    return config


# The most config.json (or an exec --process file) may hold: far more than any real one (the kernel's
# limit on args plus env is 2-6 MiB), and little enough that parsing the worst of it stays bounded.
CONFIG_MAX_BYTES = 4 << 20


# Deeper than any structure of the spec (seccomp args are the deepest, at 7 levels).
JSON_MAX_DEPTH = 64


def check_json_document(doc: object, raw: bytes, *, where: str) -> None:
    """What a schema can't say about a parsed document: it nests at most JSON_MAX_DEPTH levels (code that
    walks it must not run out of stack), and its strings can reach the kernel as C strings: no NUL byte
    (annotations aside: they never do), no lone UTF-16 surrogate ("\\ud800" is valid JSON, but no byte
    string encodes it)."""
    depth = _depth(doc)
    if depth > JSON_MAX_DEPTH:
        raise ConfigError(f"{where}: nested more than {JSON_MAX_DEPTH} levels deep")
    nul = b"\\u0000" in raw
    surrogate = b"\\ud" in raw or b"\\uD" in raw
    if nul or surrogate:
        found = _bad_string_at(doc, nul=nul, surrogate=surrogate)
        if found:
            raise ConfigError(f"{found[0]}: {found[1]}")


def _depth(doc: object) -> int:
    deepest = 0
    pending = [(doc, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > deepest:
            deepest = depth
            if depth > JSON_MAX_DEPTH:
                break
        for child in node.values() if type(node) is dict else node:  # type: ignore[attr-defined]
            if type(child) is dict or type(child) is list:
                pending.append((child, depth + 1))
    return deepest


def _bad_string_at(doc: object, *, nul: bool, surrogate: bool) -> tuple[str, str] | None:
    """The JSON path of the first string (or key) holding a NUL byte outside the annotations (paths, names
    and values reach the kernel as C strings, which a NUL would silently cut short) or a lone surrogate,
    and what is wrong with it."""

    def problem(text: str, in_annotations: bool) -> str | None:
        if nul and not in_annotations and "\0" in text:
            return "contains a NUL byte"
        if surrogate:
            try:
                text.encode()
            except UnicodeEncodeError:
                return "is not valid Unicode: it holds a lone UTF-16 surrogate"
        return None

    pending: list[tuple[str, object, bool]] = [("$", doc, False)]
    while pending:
        where, node, in_annotations = pending.pop()
        if isinstance(node, str):
            found = problem(node, in_annotations)
            if found:
                return where, found
        elif isinstance(node, dict):
            for key, value in node.items():
                found = problem(key, in_annotations)
                if found:
                    return where, found
                annotations = in_annotations or (where == "$" and key == "annotations")
                pending.append((f"{where}.{key}", value, annotations))
        elif isinstance(node, list):
            pending.extend((f"{where}[{i}]", item, in_annotations) for i, item in enumerate(node))
    return None


def _check_counts(config: dict) -> None:
    """Counts the schema can't bound, because the kernel's limit is a setting of the host."""
    linux = config.get("linux") or {}
    mounts = len(config.get("mounts") or []) + len(linux.get("maskedPaths") or []) + \
        len(linux.get("readonlyPaths") or [])
    if mounts > 1000:
        limit = _mount_max()
        if mounts > limit:
            raise ConfigError(f"$.mounts: {mounts} mounts, with the masked and read-only paths: more than one "
                              f"mount namespace may hold (fs.mount-max is {limit})")


def _mount_max() -> int:
    try:
        with open("/proc/sys/fs/mount-max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 100000


CONFIG_COPY = "config.json"


def save_config(container: Container, config: dict) -> None:
    """exec needs the container's process defaults and seccomp later, even if the bundle changes."""
    from ocirt.fastjson import dumps

    write_file_atomic(container.lock_fd, CONFIG_COPY, dumps(config).encode(), what=f"the config of {container.id!r}")


def saved_config(container: Container) -> dict:
    from ocirt.fastjson import loads

    try:
        fd = os.open(CONFIG_COPY, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=container.lock_fd)
        try:
            config = loads(read_all(fd, 2 * CONFIG_MAX_BYTES))
        finally:
            os.close(fd)
    except OSError as err:
        raise OcirtError(f"container {container.id!r}: cannot read its saved config: {why(err)}") from None
    except ValueError as err:  # JSONError, UnicodeDecodeError, too large
        raise OcirtError(f"container {container.id!r}: its saved config is unreadable: {err}") from None
    if not isinstance(config, dict):
        raise OcirtError(f"container {container.id!r}: its saved config is not a JSON object")
    return config
