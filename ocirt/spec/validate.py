"""Validate config.json, a process definition, a state or a features document against the bundled schemas.

The schemas (``schemas/*.json``, draft-04, written for runtime-spec v1.3.0) are the one statement of what a
well-formed document is. Two engines read them:

- ``_fastvalidate`` (generated from the schemas by ``ocirt.spec.schemagen``) answers valid/invalid in
  microseconds with the standard library only; ``check_config`` uses it on the create path.
- jsonschema explains a failure: every error with its JSON path. It costs about 70 ms to import, so it is
  imported only once a document is known to be invalid, or when a full report is asked for.
"""

from __future__ import annotations

import os

from ocirt.errors import ConfigError, OcirtError
from ocirt.version import OCI_VERSION

# typing costs 10 ms to import: too much for the create path, so it is seen by type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import pathlib
    from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_SCHEMA_DIRS = (
    os.path.join(os.path.dirname(_HERE), "schemas"),  # installed: the package ocirt.schemas
    os.path.join(os.path.dirname(os.path.dirname(_HERE)), "schemas"),  # a source checkout
)

# What each document is checked against: (schema file, JSON pointer inside it).
_TARGETS = {
    "config": ("config-schema.json", ""),
    "process": ("config-schema.json", "/definitions/Process"),
    "state": ("state-schema.json", ""),
    "features": ("features-schema.json", ""),
}


class SchemaIssue(tuple):
    """One schema violation, a (path, message) pair: where (``$.linux.namespaces[0].type``) and what.

    A hand-made named tuple: collections.namedtuple and dataclasses cost milliseconds to import.
    """

    __slots__ = ()

    def __new__(cls, path: str, message: str) -> SchemaIssue:
        return tuple.__new__(cls, (path, message))

    @property
    def path(self) -> str:
        return self[0]

    @property
    def message(self) -> str:
        return self[1]

    def __repr__(self) -> str:
        return f"SchemaIssue(path={self[0]!r}, message={self[1]!r})"

    def __str__(self) -> str:
        return f"{self[0]}: {self[1]}"


def schema_dir() -> str:
    for directory in _SCHEMA_DIRS:
        if os.path.isfile(os.path.join(directory, "config-schema.json")):
            return directory
    raise OcirtError("the bundled JSON schemas are missing (looked in " + ", ".join(_SCHEMA_DIRS) + ")")


def schema_path(name: str) -> pathlib.Path:
    """The bundled schema file ``name`` (e.g. ``config-schema.json``)."""
    import pathlib

    path = pathlib.Path(schema_dir()) / name
    if not path.is_file():
        raise OcirtError(f"no bundled schema named {name!r} in {path.parent}")
    return path


# -- fast path -------------------------------------------------------------------------------------------------
def _fast_verdict(kind: str, doc: Any) -> bool | None:
    """True/False from the generated validator; None when it is unavailable (then jsonschema decides)."""
    try:
        from ocirt.spec import _fastvalidate
    except ImportError:
        return None
    return bool(getattr(_fastvalidate, f"validate_{kind}")(doc))


# -- full report -----------------------------------------------------------------------------------------------
_validators: dict[str, Any] = {}


def _validator(kind: str) -> Any:
    if kind not in _validators:
        import json

        from ocirt.deps import require

        jsonschema = require("jsonschema")
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4

        directory = schema_dir()
        resources = []
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                with open(os.path.join(directory, name)) as stream:
                    contents = json.load(stream)
                # Keyed by bare file name so the schemas' relative refs ("defs.json#/...") resolve.
                resources.append((name, Resource.from_contents(contents, default_specification=DRAFT4)))
        schema_file, pointer = _TARGETS[kind]
        root = {"$ref": f"{schema_file}#{pointer}"}
        _validators[kind] = jsonschema.Draft4Validator(root, registry=Registry().with_resources(resources))
    return _validators[kind]


def format_path(parts: Any) -> str:
    """``['linux', 'namespaces', 0, 'type']`` -> ``$.linux.namespaces[0].type``."""
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}"
        else:
            text += "[" + _quote(part) + "]"
    return text


def _quote(text: str) -> str:
    import json

    return json.dumps(text)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _issues_from_error(error: Any) -> list[SchemaIssue]:
    keyword = error.validator
    path = list(error.absolute_path)
    instance = error.instance
    expected = error.validator_value
    if keyword == "required":
        # jsonschema reports one error per missing property, each naming it in the message.
        missing = [name for name in expected if isinstance(instance, dict) and name not in instance]
        name = missing[0] if missing else str(expected)
        for candidate in missing:
            if repr(candidate) in error.message:
                name = candidate
        return [SchemaIssue(format_path([*path, name]), "required property is missing")]
    if keyword == "type":
        wanted = expected if isinstance(expected, str) else " or ".join(expected)
        message = f"must be of type {wanted}, not {_json_type(instance)} {_short(instance)}"
    elif keyword == "enum":
        message = f"{_short(instance)} is not one of: " + ", ".join(str(value) for value in expected)
    elif keyword == "pattern":
        description = error.schema.get("description")
        if description:
            message = f"{_short(instance)} is not {description}"
        else:
            message = f"{_short(instance)} does not match the pattern {expected}"
    elif keyword == "minimum":
        message = f"{instance} is below the minimum {expected}"
    elif keyword == "maximum":
        message = f"{instance} is above the maximum {expected}"
    elif keyword == "minItems":
        message = f"must have at least {expected} item{'s' if expected != 1 else ''}"
    elif keyword == "maxItems":
        message = f"must have at most {expected} item{'s' if expected != 1 else ''}"
    elif keyword == "minLength":
        message = f"{_short(instance)} is shorter than {expected} character{'s' if expected != 1 else ''}"
    elif keyword == "additionalProperties":
        import re

        patterns = list(error.schema.get("patternProperties", {}))
        extra = [name for name in (instance if isinstance(instance, dict) else {})
                 if name not in error.schema.get("properties", {})
                 and not any(re.search(pattern, name) for pattern in patterns)]
        message = "property not allowed: " + ", ".join(_short(name) for name in extra)
    elif keyword == "dependencies":
        message = error.message.replace("'", "")
        for name, needed in expected.items():
            if isinstance(instance, dict) and name in instance and isinstance(needed, list):
                absent = [other for other in needed if other not in instance]
                if absent:
                    message = f"{name} requires " + ", ".join(absent)
    elif keyword in ("anyOf", "oneOf"):
        description = error.schema.get("description")
        if description:
            message = description
        else:
            from jsonschema.exceptions import best_match

            best = best_match(error.context)
            if best is not None:
                return _issues_from_error(best)
            message = error.message
    else:
        message = error.message
    return [SchemaIssue(format_path(path), message)]


def _report(kind: str, doc: Any) -> list[SchemaIssue]:
    issues: list[SchemaIssue] = []
    for error in _validator(kind).iter_errors(doc):
        for issue in _issues_from_error(error):
            if issue not in issues:
                issues.append(issue)
    return issues


def _validate(kind: str, doc: Any) -> list[SchemaIssue]:
    if _fast_verdict(kind, doc) is True:
        return []
    return _report(kind, doc)


def validate_config(doc: Any) -> list[SchemaIssue]:
    """Every way ``doc`` (a parsed config.json) violates the schema; empty when it is valid."""
    return _validate("config", doc)


def validate_process(doc: Any) -> list[SchemaIssue]:
    """Every schema violation of a process definition (``ocirt exec --process FILE``)."""
    return _validate("process", doc)


def validate_state(doc: Any) -> list[SchemaIssue]:
    return _validate("state", doc)


def validate_features(doc: Any) -> list[SchemaIssue]:
    return _validate("features", doc)


def _check(kind: str, what: str, doc: Any) -> None:
    verdict = _fast_verdict(kind, doc)
    if verdict is True:
        return
    from ocirt.deps import MissingDependency

    try:
        issues = _report(kind, doc)
    except MissingDependency as err:
        if verdict is False:
            raise ConfigError(f"{what}: does not match the runtime-spec {OCI_VERSION} schema; {err}") from None
        raise ConfigError(f"{what}: cannot be validated: {err}") from None
    if not issues:
        return
    message = f"{what}: {issues[0]}"
    if len(issues) > 1:
        message += f" (and {len(issues) - 1} more; run `ocirt validate` for all)"
    raise ConfigError(message)


def check_config(doc: Any) -> None:
    """Raise ConfigError naming the JSON path and problem of the first violation; fast for a valid config."""
    _check("config", "config.json", doc)


def check_process(doc: Any) -> None:
    """Like check_config, for the process definition given to ``ocirt exec --process``."""
    _check("process", "process", doc)
