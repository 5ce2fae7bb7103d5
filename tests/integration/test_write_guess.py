"""Writes start from the watch hub's copy of an object; a stale copy never changes the outcome.

Two API servers' worth of machinery (store, watch hub, registry service) share one SQLite file. Server
B's hub polls only once an hour, so after server A writes, B's copy is stale for real: B's writes must
still apply to the stored object, and every answer B gives without writing (no-op, refusal, dry run)
must be the one the stored object gives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.resources import errors
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.configmap import CONFIG_MAP as CONFIGMAP
from slurmlink.resources.core import NAMESPACE
from slurmlink.resources.kind import Obj
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore

pytestmark = pytest.mark.anyio

MERGE = "application/merge-patch+json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    store: SqlStore
    hub: WatchHub
    service: ResourceService

    def patch(self, name: str, data: dict[str, Any], **kw: Any) -> Obj:
        return self.service.patch(CONFIGMAP, "v1", "ns", name, MERGE, {"data": data}, SYSTEM, **kw)

    def stored(self, name: str) -> Obj:
        return self.service.get(CONFIGMAP, "v1", "ns", name)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/shared.db"


@pytest.fixture
async def servers(db: str) -> AsyncIterator[tuple[Server, Server]]:
    started: list[Server] = []
    for _ in range(2):
        store = SqlStore(db)
        hub = WatchHub(store, poll_interval=3600)  # learns of the other server's writes only when poked
        started.append(Server(store, hub, ResourceService(store, default_registry(), hub)))
    a, b = started
    a.service.create(NAMESPACE, "v1", None, {"metadata": {"name": "ns"}}, SYSTEM)
    a.service.create(CONFIGMAP, "v1", "ns", configmap("cm", {"n": "1"}), SYSTEM)
    for server in started:
        await server.hub.start()  # each loads every object: both hold cm at n=1
    yield a, b
    for server in started:
        await server.hub.stop()
        server.store.close()


def configmap(name: str, data: dict[str, str]) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def settle() -> None:
    """Let each hub dispatch the local commits queued on the event loop."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_write_from_a_stale_copy_applies_to_the_stored_object(servers: tuple[Server, Server]) -> None:
    a, b = servers
    a.patch("cm", {"other": "x"})
    await settle()
    assert b.hub.latest(CONFIGMAP.key, "ns", "cm")["data"] == {"n": "1"}  # B's copy is stale
    out = b.patch("cm", {"n": "2"})
    assert out["data"] == {"n": "2", "other": "x"}  # A's change kept, B's applied
    assert a.stored("cm") == out


async def test_a_no_op_on_a_stale_copy_is_decided_by_the_store(servers: tuple[Server, Server]) -> None:
    a, b = servers
    a.patch("cm", {"n": "5"})
    await settle()
    # The stale copy already says n=1, so from it this patch changes nothing; the store says n=5.
    out = b.patch("cm", {"n": "1"})
    assert out["data"] == {"n": "1"}
    assert a.stored("cm")["data"] == {"n": "1"}


async def test_a_precondition_is_checked_against_the_stored_object(servers: tuple[Server, Server]) -> None:
    a, b = servers
    fresh = a.patch("cm", {"n": "7"})
    await settle()
    body = {**fresh, "data": {"n": "8"}}
    out = b.service.replace(CONFIGMAP, "v1", "ns", "cm", body, SYSTEM)  # the revision B's copy lacks
    assert out["data"] == {"n": "8"}
    stale = {**out, "metadata": {**out["metadata"], "resourceVersion": fresh["metadata"]["resourceVersion"]}}
    with pytest.raises(errors.ApiError) as info:
        b.service.replace(CONFIGMAP, "v1", "ns", "cm", stale, SYSTEM)
    assert info.value.code == 409


async def test_a_dry_run_answers_from_the_stored_object(servers: tuple[Server, Server]) -> None:
    a, b = servers
    a.patch("cm", {"other": "x"})
    await settle()
    out = b.patch("cm", {"n": "3"}, dry_run=True)
    assert out["data"] == {"n": "3", "other": "x"}
    assert a.stored("cm")["data"] == {"n": "1", "other": "x"}


async def test_a_delete_from_a_stale_copy_deletes_what_is_stored(servers: tuple[Server, Server]) -> None:
    a, b = servers
    a.patch("cm", {"n": "9"})
    await settle()
    gone, now = b.service.delete(CONFIGMAP, "v1", "ns", "cm", SYSTEM, {"propagationPolicy": "Orphan"})
    assert not now and gone["data"] == {"n": "9"}  # marked for deletion from the stored state
    assert "deletionTimestamp" in a.stored("cm")["metadata"]
    # Once B's copy says so too, a second delete is answered without a write, from the store.
    b.hub.poke()
    await wait_for(lambda: "deletionTimestamp" in (b.hub.latest(CONFIGMAP.key, "ns", "cm") or {})["metadata"])
    again, now = b.service.delete(CONFIGMAP, "v1", "ns", "cm", SYSTEM)
    assert not now and again["metadata"]["resourceVersion"] == gone["metadata"]["resourceVersion"]


async def test_admission_lookups_see_this_servers_own_writes_at_once(servers: tuple[Server, Server]) -> None:
    a, _ = servers
    # No await between the write and the lookup: the hub has not dispatched the write yet, so the
    # service must not answer from it.
    a.service.create(CONFIGMAP, "v1", "ns", configmap("new", {}), SYSTEM)
    assert not a.hub.current(CONFIGMAP.key)
    names = [o["metadata"]["name"] for o in a.service.list_cached(CONFIGMAP, "ns")]
    assert names == ["cm", "new"]
    await settle()
    assert a.hub.current(CONFIGMAP.key)
    assert [o["metadata"]["name"] for o in a.service.list_cached(CONFIGMAP, "ns")] == ["cm", "new"]


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
