"""Merge patch (RFC 7386) and JSON patch (RFC 6902) application with Kubernetes error texts.

Error wording follows the API server, which applies JSON patches with evanphx/json-patch: a failed
operation is a 422 Invalid whose single cause carries texts such as
``remove operation does not apply: doc is missing path: "/a": missing value`` (kubectl prints
``The request is invalid: : <cause>``), and a body of the wrong JSON type is a 400 BadRequest worded
like Go's ``encoding/json`` error.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer

from slurmlink import jsonutil
from slurmlink.resources.errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

#: Patch media types the server applies; everything else is 415 (custom resources never get
#: strategic merge, and server-side apply is not offered).
SUPPORTED = frozenset({MERGE, JSON_PATCH})

_OPS = ("add", "remove", "replace", "move", "copy", "test")


def media_type(content_type: str) -> str:
    """``application/merge-patch+json; charset=utf-8`` -> ``application/merge-patch+json``."""
    return content_type.split(";")[0].strip().lower()


def _go_type(value: Any) -> str:
    """The JSON type name Go's ``encoding/json`` uses in unmarshal errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces.

    Neither argument is modified; the result shares no mutable parts with ``patch``.
    """
    if not isinstance(patch, dict):
        return jsonutil.clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers compare by value, but ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _invalid(message: str) -> ApiError:
    """A failed patch operation, shaped as the API server reports it."""
    return ApiError(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        {"causes": [{"reason": "FieldValueInvalid", "message": message, "field": ""}]},
    )


def _resolve(doc: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of a JSON pointer."""
    try:
        return True, jsonpointer.resolve_pointer(doc, path)
    except jsonpointer.JsonPointerException:
        return False, None


def _apply_op(doc: Any, op: Any, index: int) -> Any:
    if not isinstance(op, dict):
        raise _invalid(f"invalid JSON patch operation {index}: must be an object, not {_go_type(op)}")
    kind = op.get("op")
    if kind not in _OPS:
        raise _invalid(f"Unexpected kind: {kind}" if kind is not None else "Unexpected kind: unknown")
    path = op.get("path")
    if not isinstance(path, str):
        raise _invalid(f"{kind} operation does not apply: path is missing")
    if path and not path.startswith("/"):
        raise _invalid(f'{kind} operation does not apply: invalid path "{path}": must start with /')
    if kind in ("add", "replace", "test") and "value" not in op:
        raise _invalid(f'{kind} operation does not apply: missing value for path "{path}"')
    if kind in ("move", "copy") and not isinstance(op.get("from"), str):
        raise _invalid(f'{kind} operation does not apply: missing "from" for path "{path}"')
    if kind == "test":
        found, value = _resolve(doc, path)
        if not found or not json_equal(value, op["value"]):
            raise _invalid(f"testing value {path} failed: test failed")
        return doc
    try:
        return jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
        where = op["from"] if kind == "move" and not _resolve(doc, op["from"])[0] else path
        raise _invalid(
            f'{kind} operation does not apply: doc is missing path: "{where}": missing value'
        ) from exc


def json_patch(doc: dict[str, Any], patch: Any) -> Any:
    """RFC 6902, all operations or none; ``doc`` is not modified."""
    if not isinstance(patch, list):
        raise bad_request(f"json: cannot unmarshal {_go_type(patch)} into Go value of type jsonpatch.Patch")
    out: Any = jsonutil.clone(doc)
    for index, op in enumerate(patch):
        out = _apply_op(out, op, index)
    return out


def apply_patch(doc: dict[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
    """Apply a patch of the given media type; raises ApiError with the API server's wording."""
    media = media_type(content_type)
    if media == MERGE:
        if not isinstance(patch, dict):
            raise bad_request(
                f"json: cannot unmarshal {_go_type(patch)} into Go value of type map[string]interface {{}}"
            )
        out = merge_patch(jsonutil.clone(doc), patch)
        assert isinstance(out, dict)
        return out
    if media == JSON_PATCH:
        result = json_patch(doc, patch)
        if not isinstance(result, dict):
            raise _invalid("the patched document must be a JSON object")
        return result
    raise unsupported_media_type(media)
