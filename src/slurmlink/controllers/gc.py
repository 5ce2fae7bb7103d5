"""Garbage collection by ``ownerReferences``, with Kubernetes' semantics, on the shared informers.

- **Background** (the default): the owner goes at once; a dependent whose owners are all gone is
  deleted, and references to owners that are gone are dropped from dependents that keep another owner.
- **Foreground** (``propagationPolicy: Foreground``; the API adds the ``foregroundDeletion``
  finalizer): the collector deletes the owner's dependents and removes the finalizer once no
  dependent with ``blockOwnerDeletion: true`` is left.
- **Orphan** (``propagationPolicy: Orphan``; the ``orphan`` finalizer): the collector removes the
  owner's references from its dependents, then the finalizer.

One reconciler per kind (every kind served is watched, since any kind may own any other); an event on
one object enqueues its owners and dependents of each kind through ``OwnerGraph``, an index from owner
uid to dependents kept by handlers on the shared informers. An owner is judged gone only after a live
read confirms it, never from a cache that may lag behind the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from slurmlink import jsonutil
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory, Key, object_key
from slurmlink.controllers.runtime import Reconciler, Result, Watch, watches
from slurmlink.resources import errors
from slurmlink.resources.kind import Kind, Obj

log = logging.getLogger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


@dataclass(frozen=True)
class Dependent:
    kind: Kind
    obj: Obj
    ref: Obj  # the ownerReference that points at the owner

    @property
    def blocking(self) -> bool:
        return bool(self.ref.get("blockOwnerDeletion"))


def _refs(obj: Obj) -> list[Obj]:
    return [r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if isinstance(r, dict)]


class OwnerGraph:
    """Owner uid -> dependents, over the all-namespace informers of the tracked kinds.

    One per informer factory (``owner_graph``), shared by the collector and any controller that
    waits for its children.
    """

    def __init__(self, informers: InformerFactory) -> None:
        self.informers = informers
        self.kinds: dict[str, Kind] = {}
        self._by_group_kind: dict[tuple[str, str], Kind] = {}
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}
        #: Per kind, how to queue work for its running collector (``collect_for``).
        self._collectors: dict[str, Callable[[Key], None]] = {}

    def track(self, kind: Kind) -> None:
        if kind.key in self.kinds:
            return
        self.kinds[kind.key] = kind
        self._by_group_kind[(kind.group, kind.kind)] = kind

        def on_event(_type: str, new: Obj | None, old: Obj | None) -> None:
            if old is not None:
                self._index(kind, old, add=False)
            if new is not None:
                self._index(kind, new, add=True)

        self.informers.informer(kind).add_handler(on_event)

    def _index(self, kind: Kind, obj: Obj, *, add: bool) -> None:
        ns, name = object_key(obj)
        entry = (kind.key, ns, name)
        for ref in _refs(obj):
            uid = str(ref.get("uid") or "")
            if not uid:
                continue
            if add:
                self._dependents.setdefault(uid, set()).add(entry)
            else:
                bucket = self._dependents.get(uid)
                if bucket is not None:
                    bucket.discard(entry)
                    if not bucket:
                        del self._dependents[uid]

    def synced(self) -> bool:
        return all(self.informers.informer(k).synced.is_set() for k in self.kinds.values())

    def owner_kind(self, ref: Obj) -> Kind | None:
        group = str(ref.get("apiVersion") or "").rpartition("/")[0]
        return self._by_group_kind.get((group, str(ref.get("kind") or "")))

    def dependents(self, owner: Obj) -> list[Dependent]:
        uid = (owner.get("metadata") or {}).get("uid")
        out: list[Dependent] = []
        for kind_key, ns, name in sorted(self._dependents.get(str(uid or ""), ())):
            kind = self.kinds[kind_key]
            obj = self.informers.informer(kind).get(ns, name)
            if obj is None:
                continue
            for ref in _refs(obj):
                if ref.get("uid") == uid:
                    out.append(Dependent(kind, obj, ref))
                    break
        return out

    def has_dependents(self, owner: Obj) -> bool:
        """Whether some tracked object names ``owner`` in its ownerReferences (one dict lookup)."""
        return str((owner.get("metadata") or {}).get("uid") or "") in self._dependents

    def deleting_or_gone(self, obj: Obj) -> bool:
        """Whether ``obj`` is being deleted, or its kind's cache no longer holds it (handlers run
        after the cache is updated, so a DELETED event's object is already gone from it)."""
        m = obj.get("metadata") or {}
        if m.get("deletionTimestamp"):
            return True
        kind = self.owner_kind(obj)
        if kind is None:
            return False
        current = self.informers.informer(kind).get(*object_key(obj))
        return current is None or current["metadata"].get("uid") != m.get("uid")

    def owner_key(self, dependent: Obj, ref: Obj, owner: Kind) -> Key:
        namespace = (dependent.get("metadata") or {}).get("namespace") or ""
        return (namespace if owner.namespaced else "", str(ref.get("name") or ""))

    def related(self, obj: Obj) -> dict[str, list[Key]]:
        """Per kind, the objects that matter to its collector after a change of ``obj``: its owners
        that are being deleted (they may be waiting for it), and its dependents once it is deleting
        or gone."""
        found: dict[str, list[Key]] = {}
        refs = _refs(obj)
        if not refs and not self.has_dependents(obj):
            return found  # the common case
        for ref in refs:
            kind = self.owner_kind(ref)
            if kind is None:
                continue
            key = self.owner_key(obj, ref, kind)
            owner = self.informers.informer(kind).get(*key)
            if owner is not None and owner["metadata"].get("deletionTimestamp"):
                found.setdefault(kind.key, []).append(key)
        if self.has_dependents(obj) and self.deleting_or_gone(obj):
            for dependent in self.dependents(obj):
                found.setdefault(dependent.kind.key, []).append(object_key(dependent.obj))
        return found

    def collect_for(self, kind: Kind, enqueue: Callable[[Key], None]) -> None:
        """Queue work for ``kind``'s collector with ``enqueue`` from now on (while it runs)."""
        self._collectors[kind.key] = enqueue

    def forget(self, kind: Kind, enqueue: Callable[[Key], None]) -> None:
        if self._collectors.get(kind.key) is enqueue:
            del self._collectors[kind.key]

    def dispatch(self, obj: Obj, own: Kind) -> list[Key]:
        """Queue what a change of ``obj`` relates to with the other kinds' running collectors;
        return what it relates to among ``own``'s objects (for the caller's own queue)."""
        mine: list[Key] = []
        for kind_key, keys in self.related(obj).items():
            if kind_key == own.key:
                mine = keys
                continue
            enqueue = self._collectors.get(kind_key)
            if enqueue is not None:
                for key in keys:
                    enqueue(key)
        return mine


def owner_graph(informers: InformerFactory) -> OwnerGraph:
    """The factory's graph, created on first use."""
    graph = getattr(informers, "_owner_graph", None)
    if graph is None:
        graph = OwnerGraph(informers)
        informers._owner_graph = graph  # type: ignore[attr-defined]
    return graph


async def delete_dependents(client: Client, graph: OwnerGraph, owner: Obj, policy: str) -> list[Dependent]:
    """Delete the owner's dependents not yet being deleted; return those still present."""
    remaining = graph.dependents(owner)
    for dep in remaining:
        if (dep.obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        ns, name = object_key(dep.obj)
        try:
            await client.delete(dep.kind, ns or None, name, propagation_policy=policy)
        except errors.ApiError as exc:
            if exc.code != 404:
                raise
    return remaining


class GarbageCollector(Reconciler):
    """Collects garbage among objects of one kind (as owners being deleted, and as dependents)."""

    def __init__(self, kind: Kind, kinds: Iterable[Kind]) -> None:
        self.kind = kind
        self.name = f"gc-{kind.plural}"
        self.all_kinds = list(kinds)

    @property
    def graph(self) -> OwnerGraph:
        graph = owner_graph(self.informers)
        for kind in self.all_kinds:
            graph.track(kind)
        return graph

    def secondary(self) -> list[Watch]:
        """Every kind's events, watched by one collector for all of them.

        Any kind may own any other, so each collector would watch every kind: one handler per
        collector per event. The first kind's collector watches instead and queues work for the
        others (``OwnerGraph.dispatch``); they register while they run (``background``), and a
        collector that starts again queues all its objects anyway.
        """
        graph = self.graph
        if not self.all_kinds or self.kind.key != self.all_kinds[0].key:
            return []

        def related(obj: Obj) -> list[Key]:
            return graph.dispatch(obj, self.kind)

        return [watches(kind, related) for kind in self.all_kinds]

    async def background(self, enqueue: Callable[[Key], None]) -> None:
        graph = self.graph
        graph.collect_for(self.kind, enqueue)
        try:
            await asyncio.Event().wait()  # until the workers stop
        finally:
            graph.forget(self.kind, enqueue)

    def wants(self, obj: Obj) -> bool:
        """Only dependents and owners being deleted with a cascade finalizer have anything to collect."""
        m = obj.get("metadata") or {}
        cascading = bool(m.get("deletionTimestamp")) and bool(
            {ORPHAN, FOREGROUND} & set(m.get("finalizers") or [])
        )
        return cascading or bool(_refs(obj))

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        graph = self.graph
        if not graph.synced():
            return Result(requeue_after=0.5)
        m = obj["metadata"]
        finalizers = list(m.get("finalizers") or [])
        if m.get("deletionTimestamp") and ORPHAN in finalizers:
            await self._orphan(client, graph, obj)
            return None
        if m.get("deletionTimestamp") and FOREGROUND in finalizers:
            return await self._foreground(client, graph, obj)
        await self._check_owners(client, graph, obj)
        return None

    async def _orphan(self, client: Client, graph: OwnerGraph, owner: Obj) -> None:
        uid = owner["metadata"].get("uid")
        for dep in graph.dependents(owner):
            updated = jsonutil.clone(dep.obj)
            updated["metadata"]["ownerReferences"] = [r for r in _refs(dep.obj) if r.get("uid") != uid]
            if not updated["metadata"]["ownerReferences"]:
                del updated["metadata"]["ownerReferences"]
            await client.update(dep.kind, updated)
        await self._remove_finalizer(client, owner, ORPHAN)

    async def _foreground(self, client: Client, graph: OwnerGraph, owner: Obj) -> Result | None:
        remaining = await delete_dependents(client, graph, owner, "Foreground")
        if any(dep.blocking for dep in remaining):
            return None  # each dependent's deletion re-triggers us through the graph
        await self._remove_finalizer(client, owner, FOREGROUND)
        return None

    async def _remove_finalizer(self, client: Client, obj: Obj, finalizer: str) -> None:
        updated = jsonutil.clone(obj)
        updated["metadata"]["finalizers"] = [
            f for f in obj["metadata"].get("finalizers") or [] if f != finalizer
        ]
        await client.update(self.kind, updated)

    async def _check_owners(self, client: Client, graph: OwnerGraph, obj: Obj) -> None:
        refs = _refs(obj)
        if not refs or obj["metadata"].get("deletionTimestamp"):
            return
        dangling = [ref for ref in refs if await self._owner_gone(client, graph, obj, ref)]
        if not dangling:
            return
        ns, name = object_key(obj)
        if len(dangling) == len(refs):
            log.info("%s %s/%s: every owner is gone; deleting", self.kind.kind, ns, name)
            try:
                await client.delete(self.kind, ns or None, name, propagation_policy="Background")
            except errors.ApiError as exc:
                if exc.code != 404:
                    raise
            return
        updated = jsonutil.clone(obj)
        updated["metadata"]["ownerReferences"] = [r for r in refs if r not in dangling]
        await client.update(self.kind, updated)

    async def _owner_gone(self, client: Client, graph: OwnerGraph, dependent: Obj, ref: Obj) -> bool:
        """True only when the API confirms the owner is absent (or is another object of that name)."""
        kind = graph.owner_kind(ref)
        if kind is None:
            return False  # a kind this server does not serve: not ours to judge
        ns, name = graph.owner_key(dependent, ref, kind)
        cached = graph.informers.informer(kind).get(ns, name)
        if cached is not None and cached["metadata"].get("uid") == ref.get("uid"):
            return False
        try:
            live = await client.get(kind, ns or None, name)
        except errors.ApiError as exc:
            if exc.code == 404:
                return True
            raise
        return bool(live["metadata"].get("uid") != ref.get("uid"))
