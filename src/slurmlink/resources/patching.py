"""Merge patch (RFC 7386) and JSON patch (RFC 6902) application with Kubernetes error texts."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from slurmlink.resources.errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(doc: dict[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
    """Apply a patch of the given media type; raises ApiError with the API server's wording."""
    media = content_type.split(";")[0].strip().lower()
    if media == MERGE:
        if not isinstance(patch, dict):
            raise bad_request("json: cannot unmarshal into Go value of type map[string]interface {}")
        out = merge_patch(doc, patch)
        assert isinstance(out, dict)
        return out
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request(
                f"json: cannot unmarshal {type(patch).__name__ if patch is not None else 'null'} "
                "into Go value of type jsonpatch.Patch".replace("dict", "object")
            )
        try:
            out = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(doc))
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise ApiError(
                422,
                "Invalid",
                "the server rejected our request due to an error in our request",
                {"causes": [{"reason": "FieldValueInvalid", "message": _patch_error_text(exc), "field": ""}]},
            ) from exc
        except (TypeError, KeyError, IndexError) as exc:
            raise bad_request(f"invalid JSON patch: {exc}") from exc
        if not isinstance(out, dict):
            raise bad_request("JSON patch must leave an object")
        return out
    raise unsupported_media_type(media)


def _patch_error_text(exc: Exception) -> str:
    text = str(exc)
    if "can't remove a non-existent object" in text or "non-existent" in text or "not found" in text.lower():
        return f"doc is missing path: {text}"
    return text
