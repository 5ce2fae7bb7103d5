"""Small helpers for object metadata and timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any

Obj = dict[str, Any]


def now_rfc3339() -> str:
    """Second-precision UTC time, as ``metadata.creationTimestamp`` is written."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """Microsecond UTC time (Kubernetes MicroTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def meta(obj: Obj) -> dict[str, Any]:
    """``obj['metadata']``, created if absent."""
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = {}
        obj["metadata"] = m
    return m


def revision_of(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def same_except_revision(a: Obj, b: Obj) -> bool:
    """Equal apart from ``metadata.resourceVersion`` (no-op write detection, without copying)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if key == "metadata":
            ma, mb = a[key] or {}, b[key] or {}
            if {k: v for k, v in ma.items() if k != "resourceVersion"} != {
                k: v for k, v in mb.items() if k != "resourceVersion"
            }:
                return False
        elif a[key] != b[key]:
            return False
    return True


def human_duration(seconds: float) -> str:
    """Ages as kubectl shows them (the API server's HumanDuration)."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    if d < 365 * 8:
        return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"
    return f"{d // 365}y"
