"""Pruning of unknown fields, as the API server does for a structural CustomResourceDefinition.

A kind's structural schema is a pydantic model (``Strategy.structure``); fields it does not declare
are dropped before validation and storage, and their paths are returned so ``fieldValidation=Strict``
can reject the request and ``Warn`` can warn. A field typed ``dict[str, Any]`` or ``Any`` keeps
whatever it holds (``x-kubernetes-preserve-unknown-fields``).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from slurmlink.resources import errors

Obj = dict[str, Any]

#: ObjectMeta's fields: anything else under ``metadata`` is unknown.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)

FIELD_VALIDATION_VALUES = ("Ignore", "Warn", "Strict")


def prune(obj: Obj, structure: type[BaseModel] | None) -> list[str]:
    """Drop fields ``structure`` does not declare from ``obj`` (in place); return their paths."""
    found: list[str] = []
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in [k for k in metadata if k not in OBJECT_META_FIELDS]:
            del metadata[key]
            found.append(f"metadata.{key}")
    if structure is None:
        return found
    top = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    for path in _prune_model(top, structure, ""):
        found.append(path)
    for key in list(obj):
        if key not in ("apiVersion", "kind", "metadata") and key not in top:
            del obj[key]
    return found


def field_validation(raw: str | None) -> str:
    """The ``fieldValidation`` query parameter; the API server's default is ``Warn``."""
    if raw in (None, ""):
        return "Warn"
    if raw not in FIELD_VALIDATION_VALUES:
        raise errors.bad_request(
            f'fieldValidation: Invalid value: "{raw}": supported values: "Ignore", "Warn", "Strict"'
        )
    return raw


def strict_error(kind: str, version: str, unknown: list[str]) -> errors.ApiError:
    """What the API server answers a Strict request that carries unknown fields."""
    fields = ", ".join(f'unknown field "{path}"' for path in unknown)
    return errors.bad_request(
        f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: {fields}'
    )


def _prune_model(value: Obj, model: type[BaseModel], prefix: str) -> list[str]:
    found: list[str] = []
    fields = {(f.alias or name): f.annotation for name, f in model.model_fields.items()}
    for key in list(value):
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            del value[key]
            found.append(path)
            continue
        found.extend(_prune_value(value[key], fields[key], path))
    return found


def _prune_value(value: Any, annotation: Any, path: str) -> list[str]:
    if value is None or annotation is None or annotation is Any:
        return []
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _prune_value(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if _fits(value, arg):
                return _prune_value(value, arg, path)
        return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _prune_model(value, annotation, path) if isinstance(value, dict) else []
    if origin is list and args and isinstance(value, list):
        found: list[str] = []
        for index, item in enumerate(value):
            found.extend(_prune_value(item, args[0], f"{path}[{index}]"))
        return found
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        found = []
        for key, item in value.items():
            found.extend(_prune_value(item, args[1], f"{path}.{key}"))
        return found
    return []


def _fits(value: Any, annotation: Any) -> bool:
    """Whether ``value``'s JSON shape matches a union member (to choose the branch to prune by)."""
    if annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation) or annotation
    if origin is typing.Annotated:
        return _fits(value, typing.get_args(annotation)[0])
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return isinstance(value, dict)
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list)
    return not isinstance(value, (dict, list))
