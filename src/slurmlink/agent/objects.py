"""API writes the node agents share: a status written only when it changes, a finalizer removed.

Both retry a conflict (409: the object changed meanwhile) on a fresh copy, and treat a 404 (the object
is gone) as done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slurmlink.client.base import Client, get_or_none
from slurmlink.client.informer import SharedInformer
from slurmlink.resources import errors
from slurmlink.resources.kind import Kind, Obj

_ATTEMPTS = 3


def _where(obj: Obj) -> tuple[str | None, str]:
    m = obj.get("metadata") or {}
    return m.get("namespace"), str(m.get("name") or "")


def trigger(obj: Obj | None) -> Any:
    """What makes an object worth reconciling again: its spec, deletion and finalizers (not its status,
    which the agent writes itself)."""
    if obj is None:
        return None
    m = obj.get("metadata") or {}
    return (obj.get("spec"), m.get("deletionTimestamp"), tuple(m.get("finalizers") or ()))


async def put_status(
    client: Client,
    kind: Kind,
    obj: Obj,
    status: dict[str, Any],
    cache: SharedInformer | None = None,
    *,
    still_wanted: Callable[[Obj], bool] | None = None,
) -> Obj | None:
    """Write ``status`` unless the object already has it; the stored object (None if it is gone).

    After a conflict the write is retried on the fresh copy only if ``still_wanted(fresh)``: a progress
    report that lost the race to the final status must not put the object back to its running state.
    """
    namespace, name = _where(obj)
    for attempt in range(_ATTEMPTS):
        if obj.get("status") == status:
            return obj
        if attempt and still_wanted is not None and not still_wanted(obj):
            return obj
        try:
            updated = await client.update_status(kind, {**obj, "status": status})
        except errors.ApiError as exc:
            if exc.code == 404:
                return None
            if exc.code != 409 or attempt == _ATTEMPTS - 1:
                raise
            fresh = await get_or_none(client, kind, namespace, name)
            if fresh is None:
                return None
            obj = fresh
            continue
        if cache is not None:
            cache.put(updated)
        return updated
    return obj


async def remove_finalizer(
    client: Client, kind: Kind, obj: Obj, finalizer: str, cache: SharedInformer | None = None
) -> None:
    """Remove ``finalizer`` from the object (the API deletes it once no finalizer is left)."""
    namespace, name = _where(obj)
    for attempt in range(_ATTEMPTS):
        m = obj.get("metadata") or {}
        finalizers = list(m.get("finalizers") or [])
        if finalizer not in finalizers:
            return
        finalizers.remove(finalizer)
        try:
            updated = await client.update(kind, {**obj, "metadata": {**m, "finalizers": finalizers}})
        except errors.ApiError as exc:
            if exc.code == 404:
                return
            if exc.code != 409 or attempt == _ATTEMPTS - 1:
                raise
            fresh = await get_or_none(client, kind, namespace, name)
            if fresh is None:
                return
            obj = fresh
            continue
        if cache is not None and (updated.get("metadata") or {}).get("name"):
            cache.put(updated)
        return
