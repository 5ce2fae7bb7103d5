"""Pruning of unknown fields, as the API server does for a structural CustomResourceDefinition.

A kind's structural schema is a pydantic model (``Strategy.structure``); fields it does not declare
are dropped before validation and storage, and their paths are returned so ``fieldValidation=Strict``
can reject the request and ``Warn`` can warn. A field typed ``dict[str, Any]`` or ``Any`` keeps
whatever it holds (``x-kubernetes-preserve-unknown-fields``).
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
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


def prune(obj: Obj, structure: type[BaseModel] | None, stored: Obj | None = None) -> list[str]:
    """Drop fields ``structure`` does not declare from ``obj`` (in place); return their paths.

    ``stored``: the object ``obj`` replaces, pruned when it was written. Parts of ``obj`` equal to
    the same part of it are not walked again (an update mostly changes a few fields).
    """
    found: list[str] = []
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in [k for k in metadata if k not in OBJECT_META_FIELDS]:
            del metadata[key]
            found.append(f"metadata.{key}")
    if structure is None:
        return found
    top = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    found.extend(_model_pruner(structure)(top, "", _NOTHING if stored is None else stored))
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


#: A compiled pruner: prunes a value in place and returns the unknown paths under ``path``. Its
#: third argument is the same part of the stored object the value replaces (``_NOTHING`` if none):
#: what equals it was pruned when it was stored.
_Pruner = Callable[[Any, str, Any], list[str]]

#: No stored counterpart.
_NOTHING: Any = object()


def _keep(_value: Any, _path: str, _stored: Any) -> list[str]:
    return []


@functools.cache
def _model_pruner(model: type[BaseModel]) -> _Pruner:
    """The pruner of one model, compiled once: the walk over type annotations is not redone per write."""
    fields: dict[str, _Pruner] = {}

    def prune_model(value: Any, prefix: str, stored: Any) -> list[str]:
        if not isinstance(value, dict):
            return []
        stored = stored if isinstance(stored, dict) else {}
        found: list[str] = []
        for key in list(value):
            sub = fields.get(key)
            if sub is None:
                del value[key]
                found.append(f"{prefix}.{key}" if prefix else key)
                continue
            part = value[key]
            if sub is _keep or part is None:
                continue
            before = stored.get(key, _NOTHING)
            if before is not _NOTHING and before == part:
                continue
            found.extend(sub(part, f"{prefix}.{key}" if prefix else key, before))
        return found

    # Filled after the function exists, so self-referencing models compile without recursing forever.
    for name, info in model.model_fields.items():
        fields[info.alias or name] = _compile(info.annotation)
    return prune_model


def _compile(annotation: Any) -> _Pruner:
    if annotation is None or annotation is Any:
        return _keep
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _compile(args[0])
    if origin in (typing.Union, types.UnionType):
        branches = [(arg, _compile(arg)) for arg in args if arg is not type(None)]
        if all(branch is _keep for _, branch in branches):
            return _keep

        def prune_union(value: Any, path: str, stored: Any) -> list[str]:
            for arg, branch in branches:
                if _fits(value, arg):
                    return branch(value, path, stored)
            return []

        return prune_union
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_pruner(annotation)
    if origin is list and args:
        item = _compile(args[0])
        if item is _keep:
            return _keep

        def prune_list(value: Any, path: str, stored: Any) -> list[str]:
            found: list[str] = []
            if isinstance(value, list):
                stored = stored if isinstance(stored, list) else []
                for index, element in enumerate(value):
                    if element is None:
                        continue
                    before = stored[index] if index < len(stored) else _NOTHING
                    if before is not _NOTHING and before == element:
                        continue
                    found.extend(item(element, f"{path}[{index}]", before))
            return found

        return prune_list
    if origin is dict and len(args) == 2:
        entry = _compile(args[1])
        if entry is _keep:
            return _keep

        def prune_dict(value: Any, path: str, stored: Any) -> list[str]:
            found: list[str] = []
            if isinstance(value, dict):
                stored = stored if isinstance(stored, dict) else {}
                for key, element in value.items():
                    if element is None:
                        continue
                    before = stored.get(key, _NOTHING)
                    if before is not _NOTHING and before == element:
                        continue
                    found.extend(entry(element, f"{path}.{key}", before))
            return found

        return prune_dict
    return _keep


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
