"""Structural validation with pydantic, reported the way the Kubernetes API server words it."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from slurmlink.resources.errors import Cause


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('status', 'drivers', 0, 'status')`` -> ``status.drivers[0].status``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return f'"{type(value).__name__}"'


_TYPE_NAMES = {
    "int_type": "integer",
    "int_from_float": "integer",
    "int_parsing": "integer",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "string_type": "string",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "float_type": "number",
}


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, as the API server names it in messages."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def causes_from(error: ValidationError, prefix: tuple[str, ...] = ()) -> list[Cause]:
    """Translate pydantic errors into Kubernetes field causes."""
    causes: list[Cause] = []
    seen: set[str] = set()
    for err in error.errors():
        loc = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union[")))
        )
        loc = tuple(p for p in loc if p not in ("int", "str", "literal", "str-enum"))
        path = field_path(prefix + loc)
        kind = err["type"]
        value = err.get("input")
        if path in seen:
            continue
        if kind == "missing":
            causes.append(Cause(path, "Required value", "FieldValueRequired"))
        elif kind in ("literal_error", "enum"):
            expected = (err.get("ctx") or {}).get("expected", "")
            allowed = ", ".join(
                json.dumps(x.strip().strip("'"))
                for x in expected.replace(" or ", ", ").split(", ")
                if x.strip()
            )
            causes.append(
                Cause(
                    path,
                    f"Unsupported value: {_quote(value)}: supported values: {allowed}",
                    "FieldValueNotSupported",
                )
            )
        elif kind in _TYPE_NAMES:
            causes.append(
                Cause(
                    path,
                    f"Invalid value: {json.dumps(json_type(value))}: {path} in body must be of type "
                    f"{_TYPE_NAMES[kind]}: {json.dumps(json_type(value))}",
                    "FieldValueTypeInvalid",
                )
            )
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            ctx = err.get("ctx") or {}
            bound = next(iter(ctx.values()), "")
            words = {
                "greater_than_equal": "greater than or equal to",
                "less_than_equal": "less than or equal to",
                "greater_than": "greater than",
                "less_than": "less than",
            }[kind]
            causes.append(
                Cause(path, f"Invalid value: {_quote(value)}: {path} in body should be {words} {bound}")
            )
        elif kind == "too_short":
            ctx = err.get("ctx") or {}
            causes.append(
                Cause(
                    path,
                    f"Invalid value: {ctx.get('actual_length', 0)}: {path} in body should have at least "
                    f"{ctx.get('min_length', 0)} items",
                )
            )
        elif kind == "extra_forbidden":
            causes.append(Cause(path, f'unknown field "{path}"', "FieldValueInvalid"))
        else:
            causes.append(Cause(path, f"Invalid value: {_quote(value)}: {err['msg']}"))
        seen.add(path)
    return causes


def validate_part(model: type[BaseModel], value: Any, path: str) -> list[Cause]:
    """Validate ``value`` (the object's ``path`` part) against ``model``."""
    if value is None:
        return []
    try:
        model.model_validate(value, strict=True)
    except ValidationError as exc:
        return causes_from(exc, (path,))
    return []
