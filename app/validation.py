"""Pydantic's validation errors said plainly: the field's path, the rule, and the value given.

Modelled on `compression.config`, so the API and `pqz submit` word a bad spec as the library
does: "unknown field 'foo' in spec.prune (allowed: ...)",
"spec.quantize.n_centroids must be at most 256, got 999".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic_core import ErrorDetails

SOURCES = ("body", "query", "path", "header", "cookie")  # FastAPI's first element of a loc

_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def field_path(loc: Sequence[int | str]) -> str:
    """`("body", "spec", "prune", "modules", "features.0")` -> `spec.prune.modules['features.0']`.

    A key that is not a plain name (a module name pattern with dots) is quoted, as the
    library does, so the path stays unambiguous.
    """
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier():
            path += f".{part}" if path else part
        else:
            path += f"[{part!r}]"
    return path


def quote(value: object) -> str:
    """A value as the user wrote it in JSON (true, null), else as the library quotes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return type(value).__name__ if len(repr(value)) > 60 else repr(value)
    return repr(value)


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))  # "at most 256", not "at most 256.0"
    return str(value)


def describe(error: ErrorDetails) -> tuple[str, str]:
    """(field path, one sentence that names the field) for one pydantic error; the path is
    empty where the error is the request body's as a whole."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "json_invalid":  # its loc ends in the character position, not a field
        position = error["loc"][-1]
        at = f" at character {position}" if isinstance(position, int) else ""
        return "", f"the request body is not valid JSON{at}: {ctx.get('error', '')}"
    field = field_path(error["loc"])
    subject = field or "the request body"
    if not field and isinstance(error.get("input"), bytes | str) and kind in _KINDS:
        # FastAPI hands over the raw bytes of a body not sent as JSON.
        return "", "the request body must be a JSON object sent with Content-Type: application/json"
    given = f", got {quote(error.get('input'))}"
    if kind == "unknown_field":  # app.spec.KnownFields
        name = f"{field}.{ctx['field']}" if field else str(ctx["field"])
        return name, f"unknown field {ctx['field']!r} in {subject} (allowed: {ctx['allowed']})"
    if kind == "missing":
        return field, f"{subject} is required"
    if kind in _KINDS:
        return field, f"{subject} must be {_KINDS[kind]}{given}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return field, f"{subject} must be {words} {_number(ctx[key])}{given}"
    if kind == "literal_error":
        return field, f"{subject} must be {ctx['expected']}{given}"
    if kind == "string_too_short":
        rule = "must not be empty" if ctx.get("min_length") == 1 else "is too short"
        return field, f"{subject} {rule}{given}"
    if kind == "string_too_long":
        return field, f"{subject} must be at most {ctx['max_length']} characters long"
    if kind == "value_error":  # our validators word their message to follow the path
        return field, f"{subject} {ctx['error']}"
    return field, f"{field}: {error['msg']}" if field else str(error["msg"])
