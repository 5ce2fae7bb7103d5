"""The gateway's view of a shared informer: one kind in one namespace, keyed by object name.

The gateway keeps one for Workflows and one for DWDirectiveRules. The list+watch, the cache, the
reachability state and the event-driven waits are the process's ``SharedInformer``
(``slurmlink.client.informer``); this adapter only narrows it to the gateway's namespace so the
gateway's code can address objects by name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory, SharedInformer, WaitTimeout
from slurmlink.resources.kind import Kind, Obj

__all__ = ["Informer", "WaitTimeout", "sync_problem"]

_T = TypeVar("_T")


class _ByName(Mapping[str, Obj]):
    """The shared cache of one namespace, read by object name."""

    def __init__(self, shared: SharedInformer) -> None:
        self._shared = shared

    def __getitem__(self, name: str) -> Obj:
        obj = self._shared.get(self._shared.namespace, name)
        if obj is None:
            raise KeyError(name)
        return obj

    def __iter__(self) -> Iterator[str]:
        return iter([name for _, name in self._shared.cache])

    def __len__(self) -> int:
        return len(self._shared.cache)


class Informer:
    """Objects of ``kind`` in ``namespace``, by name; waiters wake on change.

    Pass ``factory`` to share the list+watch with other users in the process; without one the
    informer gets a factory of its own.
    """

    def __init__(
        self,
        client: Client,
        kind: Kind,
        namespace: str,
        *,
        retry_delay: float = 0.5,
        factory: InformerFactory | None = None,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        factory = factory or InformerFactory(client, retry_delay=retry_delay)
        self.shared = factory.informer(kind, namespace)
        self.cache: Mapping[str, Obj] = _ByName(self.shared)

    @property
    def synced(self) -> asyncio.Event:
        return self.shared.synced

    @property
    def unreachable_since(self) -> float | None:
        return self.shared.unreachable_since

    @property
    def last_error(self) -> str:
        return self.shared.last_error

    def start(self) -> None:
        self.shared.start()

    async def stop(self) -> None:
        await self.shared.stop()

    def unreachable_for(self) -> float:
        """Seconds the API has been unreachable (0 while reachable)."""
        return self.shared.unreachable_for()

    def put(self, obj: Obj) -> None:
        """Record an object this process just wrote, unless the cache already holds a newer one."""
        self.shared.put(obj)

    async def wait_for(
        self, name: str, probe: Callable[[Obj | None], _T | None], timeout: float | None = None
    ) -> _T:
        """Return ``probe(object-or-None)`` as soon as it is not None (see ``SharedInformer.wait_for``)."""
        return await self.shared.wait_for((self.namespace, name), probe, timeout)


def sync_problem(*informers: Informer | SharedInformer) -> str | None:
    """None when every informer has listed and its watch is live, else why not (for health checks)."""
    for informer in informers:
        if not informer.synced.is_set():
            return f"not synced with the slurmlink API yet ({informer.last_error or 'connecting'})"
        if informer.unreachable_since is not None:
            return f"slurmlink API unreachable: {informer.last_error}"
    return None
