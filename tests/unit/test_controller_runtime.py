"""The controller runtime on a real store: shared informers, secondary watches, label selectors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory, Key
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig
from slurmlink.controllers.runtime import ControllerRunner, Reconciler, Result, Watch, owns, watches
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.group import GROUP
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.watch import WatchEvent
from slurmlink.server import bootstrap
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore
from support.waiting import eventually

NS = "slurm"


class CountingClient:
    """Passes calls through, counting lists and watches per kind."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner
        self.lists: dict[str, int] = {}
        self.watches: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list(
        self, kind: Kind, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[Obj], str]:
        self.lists[kind.plural] = self.lists.get(kind.plural, 0) + 1
        return await self.inner.list(kind, namespace, label_selector)

    async def watch(
        self,
        kind: Kind,
        namespace: str | None = None,
        resource_version: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> AsyncIterator[WatchEvent]:
        self.watches[kind.plural] = self.watches.get(kind.plural, 0) + 1
        return await self.inner.watch(kind, namespace, resource_version, label_selector=label_selector)


class Recorder(Reconciler):
    """Records every reconcile of a Workflow key."""

    kind = WORKFLOW

    def __init__(self, name: str, extra: tuple[Watch, ...] = (), label_selector: str | None = None) -> None:
        self.name = name
        self.extra = extra
        self.label_selector = label_selector
        self.seen: list[Key] = []

    def secondary(self) -> tuple[Watch, ...]:
        return self.extra

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        self.seen.append((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        return None


def workflow(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1alpha2",
        "kind": "Workflow",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": "1",
            "userID": 990,
            "groupID": 990,
        },
    }


def computes(name: str, owner: Obj | None = None, labels: dict[str, str] | None = None) -> Obj:
    m: Obj = {"name": name, "namespace": NS, "labels": labels or {}}
    if owner is not None:
        m["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/v1alpha2",
                "kind": "Workflow",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return {"apiVersion": f"{GROUP}/v1alpha7", "kind": "Computes", "metadata": m}


def run(test: Callable[[ResourceService, CountingClient], Awaitable[None]], tmp_path: Path) -> None:
    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path}/db")
        hub = WatchHub(store)
        svc = ResourceService(store, default_registry(), hub)
        bootstrap(svc, ServerConfig(state_dir=tmp_path))
        await hub.start()
        try:
            await test(svc, CountingClient(InProcessClient(svc)))
        finally:
            await hub.stop()
            store.close()

    asyncio.run(main())


def test_two_controllers_of_one_kind_share_one_list_and_watch(tmp_path: Path) -> None:
    async def body(svc: ResourceService, client: CountingClient) -> None:
        factory = InformerFactory(client)
        a, b = Recorder("a"), Recorder("b")
        runners = [ControllerRunner(client, r, informers=factory) for r in (a, b)]
        for runner in runners:
            runner.prepare()
        factory.start()
        try:
            for runner in runners:
                runner.start_workers()
                await runner.wait_synced(10)
            svc.create(WORKFLOW, "v1alpha2", NS, workflow("w1"), SYSTEM)
            await eventually(lambda: (NS, "w1") in a.seen and (NS, "w1") in b.seen, "both to reconcile w1")
            assert client.lists == {"workflows": 1} and client.watches == {"workflows": 1}
        finally:
            for runner in runners:
                await runner.stop()
            await factory.stop()

    run(body, tmp_path)


def test_owned_children_reconcile_their_controlling_owner(tmp_path: Path) -> None:
    async def body(svc: ResourceService, client: CountingClient) -> None:
        rec = Recorder("owner", (owns(COMPUTES),))
        runner = ControllerRunner(client, rec)
        runner.start()
        try:
            await runner.wait_synced(10)
            wf = svc.create(WORKFLOW, "v1alpha2", NS, workflow("w2"), SYSTEM)
            svc.create(WORKFLOW, "v1alpha2", NS, workflow("other"), SYSTEM)
            await eventually(lambda: rec.seen.count((NS, "w2")) == 1, "the first reconcile")
            svc.create(COMPUTES, "v1alpha7", NS, computes("w2", wf), SYSTEM)
            await eventually(lambda: rec.seen.count((NS, "w2")) == 2, "a reconcile for the child's creation")
            svc.create(COMPUTES, "v1alpha7", NS, computes("orphan"), SYSTEM)
            svc.delete(COMPUTES, "v1alpha7", NS, "w2", SYSTEM)
            await eventually(lambda: rec.seen.count((NS, "w2")) == 3, "a reconcile for the child's deletion")
            assert rec.seen.count((NS, "other")) == 1  # an unowned child maps to nothing
        finally:
            await runner.stop()

    run(body, tmp_path)


def test_mapped_watch_with_a_label_selector(tmp_path: Path) -> None:
    async def body(svc: ResourceService, client: CountingClient) -> None:
        target: Key = (NS, "hub")
        rec = Recorder("mapped", (watches(COMPUTES, lambda _obj: [target], label_selector="team=a"),))
        runner = ControllerRunner(client, rec)
        runner.start()
        try:
            await runner.wait_synced(10)
            svc.create(WORKFLOW, "v1alpha2", NS, workflow("hub"), SYSTEM)
            await eventually(lambda: rec.seen.count(target) == 1, "the first reconcile")
            svc.create(COMPUTES, "v1alpha7", NS, computes("b1", labels={"team": "b"}), SYSTEM)
            svc.create(COMPUTES, "v1alpha7", NS, computes("a1", labels={"team": "a"}), SYSTEM)
            await eventually(lambda: rec.seen.count(target) == 2, "a reconcile for the labelled child")
            informer = runner.informers.informer(COMPUTES, None, "team=a")
            assert set(informer.cache) == {(NS, "a1")}  # the unlabelled child never reached the cache
        finally:
            await runner.stop()

    run(body, tmp_path)


def test_primary_label_selector_narrows_the_cache(tmp_path: Path) -> None:
    async def body(svc: ResourceService, client: CountingClient) -> None:
        rec = Recorder("selected", label_selector="pick=yes")
        runner = ControllerRunner(client, rec)
        runner.start()
        try:
            await runner.wait_synced(10)
            svc.create(WORKFLOW, "v1alpha2", NS, workflow("no"), SYSTEM)
            svc.create(WORKFLOW, "v1alpha2", NS, workflow("yes", {"pick": "yes"}), SYSTEM)
            await eventually(lambda: (NS, "yes") in rec.seen, "the selected workflow")
            assert (NS, "no") not in rec.seen and set(runner.cache) == {(NS, "yes")}
        finally:
            await runner.stop()

    run(body, tmp_path)


class Picky(Recorder):
    """Wants only Workflows labelled ``work=yes``."""

    def wants(self, obj: Obj) -> bool:
        return (obj["metadata"].get("labels") or {}).get("work") == "yes"


def test_a_primary_update_is_queued_by_what_the_object_is_now(tmp_path: Path) -> None:
    """``wants`` judges the object's current state: an update that leaves nothing wanted wakes no
    worker, even when the state before it was wanted."""

    async def body(svc: ResourceService, client: CountingClient) -> None:
        rec = Picky("picky")
        marker = Recorder("marker")  # reconciles everything: shows when an event has been handled
        factory = InformerFactory(client)
        runners = [ControllerRunner(client, r, informers=factory) for r in (rec, marker)]
        for runner in runners:
            runner.start()
        try:
            for runner in runners:
                await runner.wait_synced(10)
            svc.create(WORKFLOW, "v1alpha2", NS, workflow("w", {"work": "yes"}), SYSTEM)
            await eventually(lambda: rec.seen == [(NS, "w")], "the wanted Workflow's reconcile")
            idle = svc.get(WORKFLOW, "v1alpha2", NS, "w")
            idle["metadata"]["labels"] = {"work": "no"}
            svc.replace(WORKFLOW, "v1alpha2", NS, "w", idle, SYSTEM)
            await eventually(lambda: marker.seen.count((NS, "w")) == 2, "the update to be handled")
            other = svc.create(WORKFLOW, "v1alpha2", NS, workflow("x"), SYSTEM)
            await eventually(lambda: (NS, "x") in marker.seen, "a later event to be handled")
            assert rec.seen == [(NS, "w")]  # the update to an unwanted state queued nothing
            again = svc.get(WORKFLOW, "v1alpha2", NS, "w")
            again["metadata"]["labels"] = {"work": "yes"}
            svc.replace(WORKFLOW, "v1alpha2", NS, "w", again, SYSTEM)
            await eventually(lambda: rec.seen == [(NS, "w")] * 2, "the update back to wanted")
            assert other["metadata"]["name"] == "x" and (NS, "x") not in rec.seen
        finally:
            for runner in runners:
                await runner.stop()
            await factory.stop()

    run(body, tmp_path)
