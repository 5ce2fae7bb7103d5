"""The gateway's view of the site's burst-buffer storage: pools and persistent buffers, from informers.

job_process checks ``#DW`` buffer directives against it inside slurmctld, so it answers from caches.
"""

from __future__ import annotations

import asyncio
import contextlib

from slurmlink.burstbuffer.directives import SiteStorage
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory
from slurmlink.resources.dws.persistentstorageinstance import PERSISTENT_STORAGE_INSTANCE
from slurmlink.resources.storage.storagepool import STORAGE_POOL


class BufferView:
    """StoragePools (cluster-wide) and the PersistentStorageInstances of the gateway's namespace."""

    def __init__(self, client: Client, namespace: str, factory: InformerFactory | None = None) -> None:
        factory = factory or InformerFactory(client)
        self.namespace = namespace
        self.pools = factory.informer(STORAGE_POOL, None)
        self.instances = factory.informer(PERSISTENT_STORAGE_INSTANCE, namespace)

    def start(self) -> None:
        self.pools.start()
        self.instances.start()

    async def stop(self) -> None:
        await self.pools.stop()
        await self.instances.stop()

    async def wait_synced(self, timeout: float) -> bool:
        for informer in (self.pools, self.instances):
            if not informer.synced.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(informer.synced.wait(), timeout)
        return self.pools.synced.is_set() and self.instances.synced.is_set()

    def site(self) -> SiteStorage:
        return SiteStorage.from_objects(self.pools.list(), self.instances.list(self.namespace))
