"""Client that calls the resource service in the same process (no HTTP, same admission rules)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.identity import Identity
from slurmlink.auth.roles import SYSTEM
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.patching import MERGE
from slurmlink.resources.watch import WatchEvent

T = TypeVar("T")


class InProcessClient:
    """Acts as ``identity`` (the system identity by default)."""

    def __init__(self, service: ResourceService, identity: Identity = SYSTEM) -> None:
        self.service = service
        self.identity = identity

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.service.run(fn, *args, **kwargs)

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        return await self._run(self.service.get_storage, kind, namespace, name)

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        items, revision = await self._run(
            self.service.list, kind, kind.storage_version, namespace, label_selector, None
        )
        return items, str(revision)

    async def create(self, kind: Kind, obj: Obj) -> Obj:
        namespace = (obj.get("metadata") or {}).get("namespace")
        return await self._run(self.service.create, kind, kind.storage_version, namespace, obj, self.identity)

    async def update(self, kind: Kind, obj: Obj) -> Obj:
        return await self._run(self.service.update_storage, kind, obj, self.identity)

    async def update_status(self, kind: Kind, obj: Obj) -> Obj:
        return await self._run(
            functools.partial(self.service.update_storage, subresource="status"), kind, obj, self.identity
        )

    async def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj:
        return await self._run(
            self.service.patch,
            kind,
            kind.storage_version,
            namespace,
            name,
            content_type,
            patch,
            self.identity,
        )

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> Obj:
        options = {"propagationPolicy": propagation_policy} if propagation_policy else None
        obj, _ = await self._run(
            self.service.delete, kind, kind.storage_version, namespace, name, self.identity, options
        )
        return obj

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        return await self.service.watch(
            kind, kind.storage_version, namespace, resource_version, label_selector, bookmark_interval=30.0
        )

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        raise ApiError(501, "NotImplemented", f"{method} {path}: component routes are served over HTTP only")

    async def aclose(self) -> None:
        return None
