"""``meta.k8s.io/v1`` Tables: what ``kubectl get`` prints, computed on the server from printer columns."""

from __future__ import annotations

import datetime as dt
from typing import Any

from slurmlink.resources.kind import Kind, Obj, PrinterColumn
from slurmlink.resources.meta import human_duration, parse_time

_DEFAULT_COLUMNS = (PrinterColumn("Age", ".metadata.creationTimestamp", "date"),)


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in (accept or "")


def _lookup(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _cell(column: PrinterColumn, obj: Obj, now: dt.datetime) -> Any:
    value = column.value(obj) if column.value is not None else _lookup(obj, column.json_path)
    if value is None:
        return None
    if column.type == "date":
        try:
            age = (now - parse_time(str(value))).total_seconds()
        except ValueError:
            return str(value)
        # As the API server's HumanDuration: up to 2 s in the future is clock skew, shown as "0s".
        return human_duration(max(age, 0.0) if age > -2 else age)
    if column.type == "string":
        return (
            value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
        )
    return value


def columns(kind: Kind) -> tuple[PrinterColumn, ...]:
    return kind.printer_columns or _DEFAULT_COLUMNS


def column_definitions(kind: Kind) -> list[dict[str, Any]]:
    defs: list[dict[str, Any]] = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        }
    ]
    for col in columns(kind):
        defs.append(
            {
                "name": col.name,
                "type": col.type,
                "format": col.format,
                "description": col.description,
                "priority": col.priority,
            }
        )
    return defs


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    m = obj.get("metadata") or {}
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": m}


def table(
    kind: Kind,
    objects: list[Obj],
    resource_version: str | None,
    *,
    include_object: str = "Metadata",
    with_columns: bool = True,
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    rows = []
    for obj in objects:
        cells = [(obj.get("metadata") or {}).get("name")]
        cells.extend(_cell(c, obj, now) for c in columns(kind))
        row: dict[str, Any] = {"cells": cells}
        row_obj = _row_object(obj, include_object)
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    out: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version} if resource_version else {},
    }
    if with_columns:
        out["columnDefinitions"] = column_definitions(kind)
    out["rows"] = rows
    return out
