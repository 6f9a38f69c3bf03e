"""JSON through the C accelerator alone.

``import json`` pulls in ``re`` and ``enum`` and costs several milliseconds, a large share of a `state` or
`kill` call. The ``_json`` extension does the real work in both directions, so the hot path talks to it
directly; the output matches ``json.dumps(obj, separators=(",", ":"))``.
"""

from __future__ import annotations

import _json


class _ScannerContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"invalid constant {name}")


_scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]


class JSONError(ValueError):
    pass


def loads(text: str | bytes) -> object:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip())
    try:
        value, end = _scan(text, start)
    except StopIteration as err:
        raise JSONError(f"invalid JSON at offset {err.value}") from None
    except ValueError as err:
        raise JSONError(str(err)) from None
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except SystemError:
        # The C scanner reports syntax errors through json.decoder, which it looks up only if already
        # imported: pay for the import on this error path alone, for the message.
        import json

        try:
            return json.loads(text)
        except ValueError as err:
            raise JSONError(str(err)) from None
    finally:
        _ScannerContext.memo.clear()
    if text[end:].strip():
        raise JSONError(f"extra data at offset {end}")
    return value


def _float_repr(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        raise JSONError("NaN and infinity have no JSON form")
    return float.__repr__(value)


def _default(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(
    {}, _default, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)


def dumps(obj: object) -> str:
    try:
        return "".join(_encode(obj, 0))
    except RecursionError:
        raise JSONError("nested too deeply") from None


def dumps_indent(obj: object, indent: str = "  ", _level: int = 0) -> str:
    """``json.dumps(obj, indent=2)``, as runc prints `state`."""
    pad = indent * (_level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{dumps(str(k))}: {dumps_indent(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent * _level + "}"
    if isinstance(obj, list) and obj:
        items = [pad + dumps_indent(v, indent, _level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + indent * _level + "]"
    return dumps(obj)
