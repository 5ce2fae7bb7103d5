"""The API client interface controllers, agents and the CLI use.

Objects are exchanged in the kind's storage version. Two implementations: in-process (calls the
resource service directly, inside ``slurmlink serve``) and HTTP (any remote replica, with a
kubeconfig), so the same controller code runs either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.patching import MERGE
from slurmlink.resources.watch import WatchEvent


class Client(Protocol):
    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj: ...

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]: ...

    async def create(self, kind: Kind, obj: Obj) -> Obj: ...

    async def update(self, kind: Kind, obj: Obj) -> Obj: ...

    async def update_status(self, kind: Kind, obj: Obj) -> Obj:
        """PUT to ``/status``: changes only ``status`` (kinds that serve a status subresource)."""
        ...

    async def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: Any, content_type: str = MERGE
    ) -> Obj: ...

    async def delete(
        self, kind: Kind, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> Obj: ...

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]: ...

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """A component route beside the resources (``/storage/v1/...``); JSON in and out."""
        ...

    async def aclose(self) -> None: ...


async def get_or_none(client: Client, kind: Kind, namespace: str | None, name: str) -> Obj | None:
    """The object, or None when it does not exist (any other API error propagates)."""
    from slurmlink.resources.errors import ApiError

    try:
        return await client.get(kind, namespace, name)
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise
