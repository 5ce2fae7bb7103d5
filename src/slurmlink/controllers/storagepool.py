"""The StoragePool controller: keeps each pool's ``status`` in step with its storage nodes.

A pool's status (total and free granules and bytes, one entry per node, a Ready condition) is
computed by :func:`slurmlink.resources.storage.capacity.pool_status` from the pool's spec and the
``Storage`` objects in namespace ``default``; any change to a Storage (capacity, a drain, a node
going Offline) re-reconciles every pool, since a selector may gain or lose it, and so does any change
to a ``StorageAllocation`` (what a node has handed out, summed over every pool that shares it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from slurmlink.api import metrics
from slurmlink.client.base import Client
from slurmlink.controllers.runtime import Key, Reconciler, Result, Watch, watches
from slurmlink.resources.dws.storage import STORAGE, STORAGE_NAMESPACE
from slurmlink.resources.kind import Obj
from slurmlink.resources.storage.capacity import pool_status
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION, allocated_bytes
from slurmlink.resources.storage.storagepool import STORAGE_POOL


class StoragePoolReconciler(Reconciler):
    name = "storage-pool"
    kind = STORAGE_POOL

    def secondary(self) -> Sequence[Watch]:
        return (
            watches(STORAGE, self._every_pool, namespace=STORAGE_NAMESPACE),
            watches(STORAGE_ALLOCATION, self._every_pool),
        )

    def _every_pool(self, _storage: Obj) -> Iterable[Key]:
        return list(self.informers.informer(STORAGE_POOL).cache)

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return None
        storages = self.informers.informer(STORAGE, STORAGE_NAMESPACE).list()
        allocations = self.informers.informer(STORAGE_ALLOCATION).list()
        status = pool_status(obj, storages, lambda node: allocated_bytes(allocations, node))
        if status is not None:
            name = obj["metadata"]["name"]
            metrics.POOL_BYTES.labels(name, "total").set(status["totalBytes"])
            metrics.POOL_BYTES.labels(name, "free").set(status["freeBytes"])
        if status is None or status == obj.get("status"):
            return None
        updated = await client.update_status(STORAGE_POOL, {**obj, "status": status})
        self.informers.informer(STORAGE_POOL).put(updated)
        return None
