"""The garbage collector on a real store: background, foreground and orphan propagation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.roles import SYSTEM
from slurmlink.client.informer import InformerFactory
from slurmlink.client.inprocess import InProcessClient
from slurmlink.config import ServerConfig
from slurmlink.controllers.gc import FOREGROUND, ORPHAN, owner_graph
from slurmlink.controllers.registry import CONTROLLERS
from slurmlink.controllers.runtime import ControllerRunner
from slurmlink.resources.catalog import default_registry
from slurmlink.resources.dws.computes import COMPUTES
from slurmlink.resources.dws.group import GROUP
from slurmlink.resources.dws.workflow import WORKFLOW
from slurmlink.resources.errors import ApiError
from slurmlink.resources.kind import Kind, Obj
from slurmlink.server import bootstrap
from slurmlink.store.hub import WatchHub
from slurmlink.store.sql import SqlStore
from support.waiting import eventually

NS = "slurm"


def owner(name: str) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1alpha2",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "desiredState": "Proposal",
            "dwDirectives": [],
            "wlmID": "slurm",
            "jobID": "1",
            "userID": 990,
            "groupID": 990,
        },
    }


def child(name: str, *owners: Obj, block: bool = True) -> Obj:
    refs = [
        {
            "apiVersion": f"{GROUP}/v1alpha7",
            "kind": "Workflow",
            "name": o["metadata"]["name"],
            "uid": o["metadata"]["uid"],
            "blockOwnerDeletion": block,
        }
        for o in owners
    ]
    return {
        "apiVersion": f"{GROUP}/v1alpha7",
        "kind": "Computes",
        "metadata": {"name": name, "namespace": NS, "ownerReferences": refs},
    }


class Env:
    def __init__(self, svc: ResourceService, informers: InformerFactory) -> None:
        self.svc = svc
        self.informers = informers

    def get(self, kind: Kind, name: str) -> Obj | None:
        try:
            return self.svc.get(kind, kind.storage_version, NS, name)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def gone(self, kind: Kind, name: str) -> bool:
        return self.get(kind, name) is None


def run(test: Callable[[Env], Awaitable[None]], tmp_path: Path) -> None:
    """Only the garbage collectors run (no Workflow controller, so Workflows carry no finalizer)."""

    async def main() -> None:
        store = SqlStore(f"sqlite:///{tmp_path}/db")
        hub = WatchHub(store)
        svc = ResourceService(store, default_registry(), hub)
        bootstrap(svc, ServerConfig(state_dir=tmp_path))
        await hub.start()
        client = InProcessClient(svc)
        factory = InformerFactory(client)
        spec = next(s for s in CONTROLLERS if s.name == "garbage-collector")
        runners = [ControllerRunner(client, r, informers=factory) for r in spec.reconcilers()]
        try:
            for runner in runners:
                runner.start()
            for runner in runners:
                await runner.wait_synced(10)
            await test(Env(svc, factory))
        finally:
            for runner in runners:
                await runner.stop()
            await factory.stop()
            await hub.stop()
            store.close()

    asyncio.run(main())


def test_background_deletes_dependents_whose_owners_are_all_gone(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        svc = env.svc
        a = svc.create(WORKFLOW, "v1alpha2", NS, owner("a"), SYSTEM)
        b = svc.create(WORKFLOW, "v1alpha2", NS, owner("b"), SYSTEM)
        svc.create(COMPUTES, "v1alpha7", NS, child("only-a", a), SYSTEM)
        svc.create(COMPUTES, "v1alpha7", NS, child("a-and-b", a, b), SYSTEM)
        svc.delete(WORKFLOW, "v1alpha2", NS, "a", SYSTEM)
        await eventually(lambda: env.gone(COMPUTES, "only-a"), "the dependent of a alone to go")

        def dangling_dropped() -> bool:
            shared = env.get(COMPUTES, "a-and-b")
            refs = (shared or {}).get("metadata", {}).get("ownerReferences") or []
            return [r["name"] for r in refs] == ["b"]

        await eventually(dangling_dropped, "the reference to a to be dropped from the shared dependent")

    run(body, tmp_path)


def test_a_dependent_of_an_owner_that_never_existed_is_collected(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        ghost = {"metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
        env.svc.create(COMPUTES, "v1alpha7", NS, child("stray", ghost), SYSTEM)
        # An owner of that name that is another object (another uid) does not adopt it.
        env.svc.create(WORKFLOW, "v1alpha2", NS, owner("ghost"), SYSTEM)
        await eventually(lambda: env.gone(COMPUTES, "stray"), "the stray dependent to go")
        assert env.get(WORKFLOW, "ghost") is not None

    run(body, tmp_path)


def test_foreground_deletes_blocking_dependents_first(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        svc = env.svc
        start = svc.list(WORKFLOW, "v1alpha7", NS)[1]
        events = await svc.watch(COMPUTES, "v1alpha7", NS, str(start))
        wf_events = await svc.watch(WORKFLOW, "v1alpha7", NS, str(start))
        a = svc.create(WORKFLOW, "v1alpha2", NS, owner("a"), SYSTEM)
        svc.create(COMPUTES, "v1alpha7", NS, child("c1", a), SYSTEM)
        svc.create(COMPUTES, "v1alpha7", NS, child("c2", a), SYSTEM)
        deleting, gone = svc.delete(
            WORKFLOW, "v1alpha2", NS, "a", SYSTEM, {"propagationPolicy": "Foreground"}
        )
        assert not gone and deleting["metadata"]["finalizers"] == [FOREGROUND]
        assert deleting["metadata"]["deletionTimestamp"]
        await eventually(lambda: env.gone(WORKFLOW, "a"), "the owner to go")
        deleted: dict[str, int] = {}
        async with asyncio.timeout(5):
            async for event in events:
                if event.type == "DELETED":
                    deleted[event.object["metadata"]["name"]] = int(
                        event.object["metadata"]["resourceVersion"]
                    )
                if len(deleted) == 2:
                    break
            async for event in wf_events:
                if event.type == "DELETED":
                    owner_gone_at = int(event.object["metadata"]["resourceVersion"])
                    break
        assert set(deleted) == {"c1", "c2"} and max(deleted.values()) < owner_gone_at
        await events.aclose()  # type: ignore[attr-defined]
        await wf_events.aclose()  # type: ignore[attr-defined]

    run(body, tmp_path)


def test_foreground_does_not_wait_for_non_blocking_dependents(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        svc = env.svc
        a = svc.create(WORKFLOW, "v1alpha2", NS, owner("a"), SYSTEM)
        c = child("free", a, block=False)
        c["metadata"]["finalizers"] = ["example.com/hold"]  # would hold the owner forever if it blocked
        svc.create(COMPUTES, "v1alpha7", NS, c, SYSTEM)
        svc.delete(WORKFLOW, "v1alpha2", NS, "a", SYSTEM, {"propagationPolicy": "Foreground"})
        await eventually(lambda: env.gone(WORKFLOW, "a"), "the owner to go")
        held = env.get(COMPUTES, "free")
        assert held is not None and held["metadata"]["deletionTimestamp"]
        svc.patch(COMPUTES, "v1alpha7", NS, "free", "application/merge-patch+json",
                  {"metadata": {"finalizers": None}}, SYSTEM)  # fmt: skip
        await eventually(lambda: env.gone(COMPUTES, "free"), "the dependent to go")

    run(body, tmp_path)


def test_orphan_keeps_dependents_and_drops_their_references(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        svc = env.svc
        a = svc.create(WORKFLOW, "v1alpha2", NS, owner("a"), SYSTEM)
        svc.create(COMPUTES, "v1alpha7", NS, child("kept", a), SYSTEM)
        deleting, _ = svc.delete(WORKFLOW, "v1alpha2", NS, "a", SYSTEM, {"propagationPolicy": "Orphan"})
        assert deleting["metadata"]["finalizers"] == [ORPHAN]
        await eventually(lambda: env.gone(WORKFLOW, "a"), "the owner to go")
        kept = env.get(COMPUTES, "kept")
        assert kept is not None and "ownerReferences" not in kept["metadata"]

    run(body, tmp_path)


def test_what_an_event_relates_to_is_worked_out_again_for_the_next_event(tmp_path: Path) -> None:
    """Every collector asks the graph about each event; the answer is kept for that event only.

    The informer hands the object of one event in again as the ``old`` of the next one; by then
    the graph has changed (here: the owner is gone, so its dependent matters to the collector).
    """

    async def body(env: Env) -> None:
        svc, graph = env.svc, owner_graph(env.informers)
        seen: list[tuple[str, dict[str, list[tuple[str, str]]]]] = []

        def record(event_type: str, new: Obj | None, old: Obj | None) -> None:
            for obj in (new, old):
                if obj is not None and obj["metadata"]["name"] == "a":
                    seen.append((event_type, graph.related(obj)))

        env.informers.informer(WORKFLOW).add_handler(record)
        a = svc.create(WORKFLOW, "v1alpha2", NS, owner("a"), SYSTEM)
        svc.create(COMPUTES, "v1alpha7", NS, child("a-child", a), SYSTEM)
        await eventually(lambda: graph.has_dependents(a), "the graph to index the dependent")
        labelled = svc.get(WORKFLOW, "v1alpha2", NS, "a")
        labelled["metadata"]["labels"] = {"touched": "yes"}
        svc.replace(WORKFLOW, "v1alpha2", NS, "a", labelled, SYSTEM)
        await eventually(lambda: any(t == "MODIFIED" for t, _ in seen), "the label change to be seen")
        svc.delete(WORKFLOW, "v1alpha2", NS, "a", SYSTEM)
        await eventually(lambda: any(t == "DELETED" for t, _ in seen), "the deletion to be seen")
        modified = [related for t, related in seen if t == "MODIFIED"]
        deleted = [related for t, related in seen if t == "DELETED"]
        assert all(related == {} for related in modified)  # a live owner: nothing to collect
        assert deleted == [{COMPUTES.key: [(NS, "a-child")]}]
        await eventually(lambda: env.gone(COMPUTES, "a-child"), "the dependent to be collected")

    run(body, tmp_path)
