"""Compile the bundled draft-04 JSON Schemas into plain Python: ``ocirt/spec/_fastvalidate.py``.

jsonschema costs about 70 ms to import, which would double the time of ``ocirt create``. The generated module
answers only "valid or not" for the schemas in ``schemas/``, imports nothing but ``re``, and checks a default
config in tens of microseconds; ``ocirt.spec.validate`` falls back to jsonschema only to explain a failure.

Regenerate with ``python -m ocirt.spec.schemagen``; ``--check`` exits 1 when the generated file is stale.

The compiler supports the draft-04 keywords these schemas use: type, enum, minimum, maximum, minLength,
maxLength, pattern, minItems, maxItems, items (one schema for all items), properties, required,
patternProperties, additionalProperties, dependencies, allOf, anyOf, oneOf, not, $ref (into any bundled file).
It rejects any other validation keyword, so a schema edit cannot silently widen what the fast path accepts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# (module function name, schema file, JSON pointer inside it)
ENTRY_POINTS = (
    ("validate_config", "config-schema.json", ""),
    ("validate_process", "config-schema.json", "/definitions/Process"),
    ("validate_state", "state-schema.json", ""),
    ("validate_features", "features-schema.json", ""),
)

GENERATED_NAME = "_fastvalidate.py"

_ANNOTATION_KEYWORDS = {"description", "title", "$schema", "definitions", "id", "default", "example"}
_SUPPORTED_KEYWORDS = _ANNOTATION_KEYWORDS | {
    "type", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "items", "properties", "required", "patternProperties", "additionalProperties", "dependencies",
    "allOf", "anyOf", "oneOf", "not", "$ref",
}
# Keywords whose check is a single expression: a schema made only of these is inlined at its use.
_LEAF_KEYWORDS = _ANNOTATION_KEYWORDS | {
    "type", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
}

_TYPE_TESTS = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, list)",
    "string": "isinstance({v}, str)",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
    "integer": "(isinstance({v}, int) and not isinstance({v}, bool))",
    "number": "(isinstance({v}, (int, float)) and not isinstance({v}, bool))",
}


class SchemaCompileError(Exception):
    pass


def repository_schema_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "schemas"


def generated_path() -> Path:
    return Path(__file__).resolve().parent / GENERATED_NAME


def schema_digest(schema_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(schema_dir.glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


class _Compiler:
    def __init__(self, schema_dir: Path, entry_points: tuple[tuple[str, str, str], ...]):
        self.schema_dir = schema_dir
        self.entry_points = entry_points
        self.documents: dict[str, object] = {}
        self.function_names: dict[tuple[str, str], str] = {}
        self.pending: list[tuple[str, str, str]] = []
        self.functions: list[str] = []
        self.constants: dict[str, str] = {}  # source text of the value -> constant name
        self.constant_lines: list[str] = []

    # -- locating schemas -------------------------------------------------------------------------------
    def document(self, name: str) -> object:
        if name not in self.documents:
            path = self.schema_dir / name
            if not path.is_file():
                raise SchemaCompileError(f"$ref to {name}, which is not in {self.schema_dir}")
            self.documents[name] = json.loads(path.read_text())
        return self.documents[name]

    def resolve(self, file: str, pointer: str) -> object:
        node = self.document(file)
        for token in pointer.split("/")[1:]:
            token = _unescape(token)
            if isinstance(node, list):
                node = node[int(token)]
            elif isinstance(node, dict) and token in node:
                node = node[token]
            else:
                raise SchemaCompileError(f"{file}#{pointer} does not exist")
        return node

    def follow_ref(self, file: str, ref: str) -> tuple[str, str]:
        target_file, _, pointer = ref.partition("#")
        if "/" in target_file or ":" in target_file:
            raise SchemaCompileError(f"only refs to sibling files are supported, not {ref!r}")
        return (target_file or file), pointer

    # -- constants --------------------------------------------------------------------------------------
    def constant(self, prefix: str, source: str) -> str:
        if source not in self.constants:
            name = f"_{prefix}{len(self.constants)}"
            self.constants[source] = name
            self.constant_lines.append(f"{name} = {source}")
        return self.constants[source]

    def pattern_test(self, regex: str, var: str) -> str:
        """An expression true when ``regex`` matches somewhere in the string ``var`` (re.search semantics)."""
        literal_prefix = regex[1:]
        if regex.startswith("^") and literal_prefix and all(c.isalnum() or c in "/_:" for c in literal_prefix):
            return f"{var}.startswith({literal_prefix!r})"
        return f"_matches({self.constant('P', repr(regex))}, {var})"

    # -- expressions ------------------------------------------------------------------------------------
    def function_for(self, file: str, pointer: str) -> str:
        key = (file, pointer)
        if key not in self.function_names:
            self.function_names[key] = f"_v{len(self.function_names)}"
            self.pending.append((self.function_names[key], file, pointer))
        return self.function_names[key]

    def check(self, file: str, pointer: str, var: str, depth: int = 0) -> str:
        """A Python expression that is true when the value in ``var`` satisfies the schema at file#pointer."""
        schema = self.resolve(file, pointer)
        if schema is True or schema == {}:
            return "True"
        if schema is False:
            return "False"
        if not isinstance(schema, dict):
            raise SchemaCompileError(f"{file}#{pointer} is not a schema")
        unknown = set(schema) - _SUPPORTED_KEYWORDS
        if unknown:
            raise SchemaCompileError(f"{file}#{pointer} uses unsupported keywords {sorted(unknown)}")
        if "$ref" in schema:
            if depth > 20:
                raise SchemaCompileError(f"$ref chain too deep at {file}#{pointer}")
            return self.check(*self.follow_ref(file, schema["$ref"]), var, depth + 1)
        if set(schema) <= _LEAF_KEYWORDS:
            return self.leaf_expression(schema, var)
        return f"{self.function_for(file, pointer)}({var})"

    def leaf_expression(self, schema: dict, var: str) -> str:
        terms: list[str] = []
        declared = schema.get("type")
        types = [declared] if isinstance(declared, str) else list(declared or [])
        if types:
            for name in types:
                if name not in _TYPE_TESTS:
                    raise SchemaCompileError(f"unknown type {name!r}")
            alternatives = [_TYPE_TESTS[name].format(v=var) for name in types]
            terms.append(alternatives[0] if len(alternatives) == 1 else "(" + " or ".join(alternatives) + ")")

        def guarded(type_name: str, condition: str) -> str:
            # A keyword constrains only values of its own type; the guard is redundant once "type" pins it.
            if types == [type_name] or (type_name == "number" and types == ["integer"]):
                return condition
            return f"(not {_TYPE_TESTS[type_name].format(v=var)} or {condition})"

        if "enum" in schema:
            values = schema["enum"]
            if all(isinstance(value, str) for value in values):
                name = self.constant("E", f"frozenset({sorted(values)!r})")
                terms.append(f"(isinstance({var}, str) and {var} in {name})")
            else:
                name = self.constant("E", repr(tuple(values)))
                terms.append(f"_in_enum({var}, {name})")
        if "minimum" in schema:
            terms.append(guarded("number", f"{var} >= {schema['minimum']!r}"))
        if "maximum" in schema:
            terms.append(guarded("number", f"{var} <= {schema['maximum']!r}"))
        if "minLength" in schema:
            terms.append(guarded("string", f"len({var}) >= {schema['minLength']!r}"))
        if "maxLength" in schema:
            terms.append(guarded("string", f"len({var}) <= {schema['maxLength']!r}"))
        if "pattern" in schema:
            terms.append(guarded("string", self.pattern_test(schema["pattern"], var)))
        if not terms:
            return "True"
        return terms[0] if len(terms) == 1 else "(" + " and ".join(terms) + ")"

    # -- functions --------------------------------------------------------------------------------------
    def compile_function(self, name: str, file: str, pointer: str) -> None:
        schema = self.resolve(file, pointer)
        assert isinstance(schema, dict)
        body: list[str] = []
        leaf = {key: value for key, value in schema.items() if key in _LEAF_KEYWORDS}
        if set(leaf) - _ANNOTATION_KEYWORDS:
            body.append(f"if not {self.leaf_expression(leaf, 'x')}:")
            body.append("    return False")
        declared = schema.get("type")
        types = [declared] if isinstance(declared, str) else list(declared or [])

        object_lines = self.object_checks(schema, file, pointer)
        if object_lines:
            if types == ["object"]:
                body.extend(object_lines)
            else:
                body.append("if isinstance(x, dict):")
                body.extend("    " + line for line in object_lines)
        array_lines = self.array_checks(schema, file, pointer)
        if array_lines:
            if types == ["array"]:
                body.extend(array_lines)
            else:
                body.append("if isinstance(x, list):")
                body.extend("    " + line for line in array_lines)
        for keyword in ("allOf", "anyOf", "oneOf"):
            if keyword not in schema:
                continue
            checks = [self.check(file, f"{pointer}/{keyword}/{index}", "x")
                      for index in range(len(schema[keyword]))]
            if keyword == "allOf":
                for check in checks:
                    body.append(f"if not {check}:")
                    body.append("    return False")
            elif keyword == "anyOf":
                body.append(f"if not ({' or '.join(checks)}):")
                body.append("    return False")
            else:
                body.append(f"if ({' + '.join(f'bool({check})' for check in checks)}) != 1:")
                body.append("    return False")
        if "not" in schema:
            body.append(f"if {self.check(file, f'{pointer}/not', 'x')}:")
            body.append("    return False")
        body.append("return True")
        location = f"{file}#{pointer}" if pointer else file
        self.functions.append(
            f"def {name}(x):  # {location}\n" + "".join(f"    {line}\n" for line in body)
        )

    def object_checks(self, schema: dict, file: str, pointer: str) -> list[str]:
        lines: list[str] = []
        required = schema.get("required", [])
        if required:
            missing = " or ".join(f"{key!r} not in x" for key in required)
            lines += [f"if {missing}:", "    return False"]
        properties = schema.get("properties", {})
        for key in properties:
            escaped = key.replace("~", "~0").replace("/", "~1")
            check = self.check(file, f"{pointer}/properties/{escaped}", "v")
            if check == "True":
                continue
            lines += [f"v = x.get({key!r}, _MISSING)", f"if v is not _MISSING and not {check}:",
                      "    return False"]
        patterns = schema.get("patternProperties", {})
        additional = schema.get("additionalProperties", True)
        additional_check = "True"
        if additional is False:
            additional_check = "False"
        elif isinstance(additional, dict):
            additional_check = self.check(file, f"{pointer}/additionalProperties", "v")
        if not patterns and not properties and additional_check != "True":
            lines += ["for v in x.values():", f"    if not {additional_check}:", "        return False"]
        elif patterns or additional_check != "True":
            lines.append("for k, v in x.items():")
            if patterns:
                lines.append("    matched = False")
                for regex in patterns:
                    escaped = regex.replace("~", "~0").replace("/", "~1")
                    check = self.check(file, f"{pointer}/patternProperties/{escaped}", "v")
                    lines.append(f"    if {self.pattern_test(regex, 'k')}:")
                    lines.append("        matched = True")
                    if check != "True":
                        lines.append(f"        if not {check}:")
                        lines.append("            return False")
                condition = "not matched"
            else:
                condition = ""
            if additional_check != "True":
                if properties:
                    known = self.constant("K", f"frozenset({sorted(properties)!r})")
                    condition = f"{condition} and k not in {known}" if condition else f"k not in {known}"
                if condition:
                    lines.append(f"    if {condition} and not {additional_check}:")
                else:
                    lines.append(f"    if not {additional_check}:")
                lines.append("        return False")
        for key, dependency in schema.get("dependencies", {}).items():
            if isinstance(dependency, list):
                if dependency:
                    absent = " or ".join(f"{name!r} not in x" for name in dependency)
                    lines += [f"if {key!r} in x and ({absent}):", "    return False"]
            else:
                escaped = key.replace("~", "~0").replace("/", "~1")
                check = self.check(file, f"{pointer}/dependencies/{escaped}", "x")
                lines += [f"if {key!r} in x and not {check}:", "    return False"]
        return lines

    def array_checks(self, schema: dict, file: str, pointer: str) -> list[str]:
        lines: list[str] = []
        if "minItems" in schema:
            lines += [f"if len(x) < {schema['minItems']!r}:", "    return False"]
        if "maxItems" in schema:
            lines += [f"if len(x) > {schema['maxItems']!r}:", "    return False"]
        if "items" in schema:
            if not isinstance(schema["items"], dict):
                raise SchemaCompileError(f"{file}#{pointer}: only a single schema for items is supported")
            check = self.check(file, f"{pointer}/items", "v")
            if check != "True":
                lines += ["for v in x:", f"    if not {check}:", "        return False"]
        return lines

    def compile(self) -> str:
        entry_checks = [(public, self.check(file, pointer, "doc")) for public, file, pointer in self.entry_points]
        while self.pending:
            self.compile_function(*self.pending.pop(0))
        digest = schema_digest(self.schema_dir)
        parts = [
            '"""Generated by ``python -m ocirt.spec.schemagen`` from schemas/*.json: do not edit.\n\n'
            "Each ``validate_*`` function returns True when the document satisfies the schema. It gives no\n"
            'reasons: ``ocirt.spec.validate`` asks jsonschema for those once a document is known to be invalid.\n"""\n',
            "from ocirt.spec.patterns import KNOWN as _KNOWN\n",
            f"SCHEMA_DIGEST = {digest!r}\n",
            "_MISSING = object()\n",
            "\n".join(self.constant_lines) + "\n" if self.constant_lines else "",
            "_compiled: dict = {}\n",
            "\ndef _matches(regex, text):\n"
            "    # The schemas' own patterns have re-free matchers (importing re costs ~8 ms); any other is\n"
            "    # compiled on first use.\n"
            "    known = _KNOWN.get(regex)\n"
            "    if known is not None:\n"
            "        return known(text)\n"
            "    compiled = _compiled.get(regex)\n"
            "    if compiled is None:\n"
            "        import re\n\n"
            "        compiled = _compiled[regex] = re.compile(regex)\n"
            "    return compiled.search(text) is not None\n",
            "\ndef _in_enum(value, allowed):\n"
            "    for candidate in allowed:\n"
            "        if isinstance(candidate, bool) or isinstance(value, bool):\n"
            "            if type(candidate) is type(value) and candidate == value:\n"
            "                return True\n"
            "        elif candidate == value:\n"
            "            return True\n"
            "    return False\n",
        ]
        parts += ["\n" + function for function in self.functions]
        for public, check in entry_checks:
            parts.append(f"\ndef {public}(doc):\n    return {check}\n")
        return "\n".join(part.rstrip("\n") + "\n" for part in parts if part)


def generate(schema_dir: Path | None = None,
             entry_points: tuple[tuple[str, str, str], ...] = ENTRY_POINTS) -> str:
    """The source text of the fast validator for the schemas in schema_dir (default: the repository's).

    entry_points lists (function name, schema file, JSON pointer) for each public function to generate.
    """
    return _Compiler(schema_dir or repository_schema_dir(), entry_points).compile()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocirt.spec.schemagen", description=__doc__.split("\n")[0])
    parser.add_argument("--schemas", type=Path, default=None, help="schema directory (default: schemas/)")
    parser.add_argument("--output", type=Path, default=None, help=f"output file (default: {GENERATED_NAME})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is out of date")
    args = parser.parse_args(argv)
    source = generate(args.schemas)
    output = args.output or generated_path()
    current = output.read_text() if output.exists() else None
    if args.check:
        if current != source:
            print(f"{output} is out of date: run python -m ocirt.spec.schemagen", file=sys.stderr)
            return 1
        return 0
    if current != source:
        output.write_text(source)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
