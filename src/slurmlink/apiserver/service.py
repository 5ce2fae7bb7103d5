"""The generic REST storage: create/get/list/update/patch/delete/watch for every registered kind.

All kind-specific behaviour is delegated to the kind's ``Strategy``; this module owns what is the same
for every kind: metadata, versions, compare-and-swap, no-op detection, finalizers, admission order
(mutate -> schema -> validate) and conversion between served versions and the storage version.
Methods are synchronous (the store is); the HTTP layer calls them from worker threads.
"""

from __future__ import annotations

import builtins
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from slurmlink import jsonutil
from slurmlink.auth import roles
from slurmlink.auth.identity import Identity
from slurmlink.resources import errors, pruning, selectors
from slurmlink.resources.access import Scope, keep_owner
from slurmlink.resources.admission import AdmissionContext
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.meta import meta, now_rfc3339, revision_of, same_except_revision
from slurmlink.resources.patching import apply_patch
from slurmlink.resources.registry import Registry
from slurmlink.resources.watch import WatchEvent
from slurmlink.store import errors as store_errors
from slurmlink.store.events import Event
from slurmlink.store.hub import Subscription, WatchHub
from slurmlink.store.sql import SqlStore

T = TypeVar("T")

NAMESPACE_KEY = "core/namespaces"
#: How long a write without a resourceVersion precondition (PATCH, DELETE) keeps retrying when a
#: concurrent writer wins the compare-and-swap. The API server retries such writes until they apply
#: (GuaranteedUpdate); only a caller-given precondition turns a conflict into 409.
_CONFLICT_RETRY_SECONDS = 30.0


class ResourceService:
    """Generic registry over the object store."""

    def __init__(
        self,
        store: SqlStore,
        registry: Registry,
        hub: WatchHub | None = None,
        *,
        system_namespace: str = "dws-system",
    ) -> None:
        self.store = store
        self.registry = registry
        self.hub = hub
        self.system_namespace = system_namespace

    # ---- conversion --------------------------------------------------------------------------

    def to_version(self, kind: Kind, obj: Obj, version: str) -> Obj:
        """Storage object -> the client's version.

        The result shares nested values with ``obj``: read-only, like everything the store hands out
        (writers work on ``jsonutil.clone``).
        """
        return kind.strategy.convert(obj, version, kind.api_version(version))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a synchronous service method from async code; the store decides where it runs."""
        return await self.store.call_brief(fn, *args, **kwargs)

    def _to_storage(self, kind: Kind, obj: Obj, version: str, old: Obj | None) -> Obj:
        out = kind.strategy.convert(obj, kind.storage_version, kind.api_version(kind.storage_version))
        if old is not None and version != kind.storage_version:
            for path in kind.strategy.storage_only_paths:
                _copy_path(old, out, path)
            kind.strategy.restore_storage_only(out, old)
        return out

    def _ns(self, kind: Kind, namespace: str | None) -> str:
        return (namespace or "") if kind.namespaced else ""

    def _ctx(self, identity: Identity | None) -> AdmissionContext:
        return AdmissionContext(self, identity, self.system_namespace)

    def require_namespace(self, namespace: str) -> None:
        # As Kubernetes' NamespaceLifecycle admission: the watch cache first, the store if not there.
        hub = self.hub
        if hub is not None and hub.current(NAMESPACE_KEY) and hub.latest(NAMESPACE_KEY, "", namespace):
            return
        if self.store.get(NAMESPACE_KEY, "", namespace) is None:
            raise errors.namespace_not_found(namespace)

    def namespace_exists(self, namespace: str) -> bool:
        return self.store.get(NAMESPACE_KEY, "", namespace) is not None

    # ---- reads -------------------------------------------------------------------------------

    def get_storage(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = _call(self.store.get, kind.key, self._ns(kind, namespace), name)
        if obj is None:
            raise errors.not_found(kind.group, kind.plural, name)
        return obj

    def list_cached(self, kind: Kind, namespace: str | None) -> builtins.list[Obj]:
        """Objects of ``kind`` in storage version (read-only) for admission: from the watch hub once loaded.

        Like Kubernetes' admission plugins, which read informers: a change made on another replica a
        moment ago may not be seen yet.
        """
        if self.hub is not None and self.hub.current(kind.key):
            return self.hub.objects(kind.key, self._ns(kind, namespace) if namespace else None)
        items, _ = _call(self.store.list, kind.key, self._ns(kind, namespace) if namespace else None)
        return items

    def _current_for_write(self, kind: Kind, namespace: str, name: str, *, guess: bool) -> Obj:
        """The object a write starts from: with ``guess``, the watch hub's newest copy if it has one.

        Kubernetes' GuaranteedUpdate does the same with its watch cache: the compare-and-swap on
        the revision catches a stale guess, and the retry then reads the store. It saves the
        read's round trip on PostgreSQL. The copy is private: writers may change it.
        """
        if guess and self.hub is not None:
            cached = self.hub.latest(kind.key, namespace, name)
            if cached is not None:
                return jsonutil.clone(cached)
        return self.get_storage(kind, namespace, name)

    def _if_stale(self, kind: Kind, namespace: str, name: str, guessed: Obj) -> Obj | None:
        """The stored object if it is newer than ``guessed``; None if the guess is what is stored."""
        stored = self.get_storage(kind, namespace, name)
        return None if revision_of(stored) == revision_of(guessed) else stored  # revisions are global

    def get(
        self, kind: Kind, version: str, namespace: str | None, name: str, *, scope: Scope | None = None
    ) -> Obj:
        obj = self.get_storage(kind, namespace, name)
        if scope is not None and not scope.may_read(obj):
            raise _denied(scope, kind, "get", namespace, name)
        return self.to_version(kind, obj, version)

    def list(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        scope: Scope | None = None,
    ) -> tuple[list[Obj], int]:
        match_labels = selectors.parse_label_selector(label_selector)
        match_fields = selectors.parse_field_selector(field_selector, kind.strategy.field_labels)
        items, revision = _call(self.store.list, kind.key, self._ns(kind, namespace) if namespace else None)
        out = [
            self.to_version(kind, o, version)
            for o in items
            if match_labels(o) and match_fields(o) and (scope is None or scope.may_read(o))
        ]
        return out, revision

    # ---- create ------------------------------------------------------------------------------

    def create(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        body: Obj,
        identity: Identity | None,
        *,
        dry_run: bool = False,
        scope: Scope | None = None,
        field_validation: str = "Ignore",
        warnings: builtins.list[str] | None = None,
    ) -> Obj:
        """POST. With ``dry_run`` everything is checked (admission included) but nothing is stored.

        ``scope`` (a ``user``-role caller) stamps the caller as the owner. Unknown fields are pruned;
        ``field_validation`` says whether that is an error (Strict), a warning added to ``warnings``
        (Warn) or silent (Ignore).
        """
        ns, name, obj = self.prepare_create(
            kind,
            version,
            namespace,
            body,
            identity,
            scope=scope,
            field_validation=field_validation,
            warnings=warnings,
        )
        if dry_run:
            if _call(self.store.get, kind.key, ns, name) is not None:
                raise errors.already_exists(kind.group, kind.plural, name)
            return self.to_version(kind, obj, version)
        try:
            stored = _call(self.store.create, kind.key, ns, name, obj)
        except store_errors.AlreadyExistsError as exc:
            raise errors.already_exists(kind.group, kind.plural, name) from exc
        return self.to_version(kind, stored, version)

    def prepare_create(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        body: Obj,
        identity: Identity | None,
        *,
        scope: Scope | None = None,
        field_validation: str = "Ignore",
        warnings: builtins.list[str] | None = None,
    ) -> tuple[str, str, Obj]:
        """Everything a create does before it writes: (namespace, name, the object to store)."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        api_version = kind.api_version(version)
        if body.get("apiVersion", api_version) != api_version:
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match "
                f"the expected API version ({api_version})"
            )
        if body.get("kind", kind.kind) != kind.kind:
            raise errors.bad_request(
                f"the kind in the data ({body.get('kind')}) does not match the expected kind ({kind.kind})"
            )
        obj = jsonutil.clone(body)
        obj["apiVersion"], obj["kind"] = api_version, kind.kind
        m = meta(obj)
        if not m.get("name") and m.get("generateName"):
            m["name"] = f"{m['generateName']}{uuid.uuid4().hex[:5]}"
        name = m.get("name")
        if not name or not isinstance(name, str):
            raise errors.invalid(
                kind.group,
                kind.kind,
                "",
                [errors.Cause("metadata.name", "Required value", "FieldValueRequired")],
            )
        name_causes = kind.strategy.validate_name(name)
        if name_causes:
            raise errors.invalid(kind.group, kind.kind, name, name_causes)
        ns = self._ns(kind, namespace)
        if kind.namespaced:
            if m.get("namespace") not in (None, "", ns):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            m["namespace"] = ns
            self.require_namespace(ns)
        else:
            m.pop("namespace", None)
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            m.pop(field, None)
        m["uid"] = str(uuid.uuid4())
        m["creationTimestamp"] = now_rfc3339()
        m["generation"] = 1
        obj = self._to_storage(kind, obj, version, None)
        strategy = kind.strategy
        if strategy.status_subresource:
            obj.pop("status", None)  # as the API server: a create cannot set what /status owns
        _prune(kind, version, obj, field_validation, warnings)
        if scope is not None:
            if not scope.may_create(obj):
                raise _denied(scope, kind, "create", namespace, name)
            scope.stamp(obj)
        ctx = self._ctx(identity)
        strategy.default(obj)
        strategy.mutate_create(obj, ctx)
        causes = _metadata_causes(obj) + strategy.validate_schema(obj)
        if causes:
            raise errors.invalid(kind.group, kind.kind, name, causes)
        strategy.validate_create(obj, ctx)
        return ns, name, obj

    # ---- update / patch ----------------------------------------------------------------------

    def replace(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        body: Obj,
        identity: Identity | None,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        scope: Scope | None = None,
        field_validation: str = "Ignore",
        warnings: builtins.list[str] | None = None,
    ) -> Obj:
        """PUT: full replacement, conditional on ``metadata.resourceVersion`` (required)."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        body_meta = body.get("metadata") or {}
        if body_meta.get("name") not in (None, name):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        expected = revision_of(body)
        if not expected:
            raise errors.invalid(
                kind.group,
                kind.kind,
                name,
                [
                    errors.Cause(
                        "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"
                    )
                ],
            )

        def build(old_v: Obj) -> Obj:
            return jsonutil.clone(body)

        return self._update(
            kind,
            version,
            namespace,
            name,
            build,
            identity,
            expected,
            _WriteOptions(subresource, dry_run, scope, field_validation, warnings),
        )

    def patch(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        identity: Identity | None,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        scope: Scope | None = None,
        field_validation: str = "Ignore",
        warnings: builtins.list[str] | None = None,
    ) -> Obj:
        """PATCH: applied to the latest object; retried internally on write conflicts."""
        precondition = revision_of(patch) if isinstance(patch, dict) else 0

        def build(old_v: Obj) -> Obj:
            return apply_patch(old_v, content_type, patch)

        return self._update(
            kind,
            version,
            namespace,
            name,
            build,
            identity,
            precondition or None,
            _WriteOptions(subresource, dry_run, scope, field_validation, warnings, "patch"),
        )

    def update_storage(
        self, kind: Kind, obj: Obj, identity: Identity | None, *, subresource: str | None = None
    ) -> Obj:
        """Controller path: PUT of a storage-version object, conditional on its resourceVersion."""
        m = obj.get("metadata") or {}
        return self.replace(
            kind, kind.storage_version, m.get("namespace"), m["name"], obj, identity, subresource=subresource
        )

    def _update(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        build: Callable[[Obj], Obj],
        identity: Identity | None,
        expected_revision: int | None,
        options: _WriteOptions,
    ) -> Obj:
        ns = self._ns(kind, namespace)
        subresource = options.subresource
        if subresource is not None and not (subresource == "status" and kind.strategy.serves_status):
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        deadline = time.monotonic() + _CONFLICT_RETRY_SECONDS
        warned = len(options.warnings) if options.warnings is not None else 0
        guess, stored_now = True, None
        while True:
            guessed, guess = guess, False
            if options.warnings is not None:
                del options.warnings[warned:]  # each attempt warns afresh
            old = stored_now or self._current_for_write(kind, ns, name, guess=guessed)
            old_rev = revision_of(old)
            try:
                new = self._updated(kind, version, ns, name, old, build, identity, expected_revision, options)
            except errors.ApiError:
                if guessed and (stored_now := self._if_stale(kind, ns, name, old)) is not None:
                    continue  # refused perhaps only because the guess was stale: decide again
                raise
            if new is None or options.dry_run:
                # Answered without a write: only right if the guess is what is stored.
                if guessed and (stored_now := self._if_stale(kind, ns, name, old)) is not None:
                    continue
                return self.to_version(kind, old if new is None else new, version)
            try:
                if meta(new).get("deletionTimestamp") and not meta(new).get("finalizers"):
                    stored = _call(self.store.delete, kind.key, ns, name, old_rev)
                else:
                    stored = _call(self.store.update, kind.key, ns, name, new, old_rev)
            except store_errors.ConflictError as exc:
                if guessed or (not expected_revision and time.monotonic() < deadline):
                    continue  # someone else wrote in between: re-read and re-apply
                raise errors.conflict(kind.group, kind.plural, name) from exc
            except store_errors.NotFoundError as exc:
                raise errors.not_found(kind.group, kind.plural, name) from exc
            return self.to_version(kind, stored, version)

    def _updated(
        self,
        kind: Kind,
        version: str,
        ns: str,
        name: str,
        old: Obj,
        build: Callable[[Obj], Obj],
        identity: Identity | None,
        expected_revision: int | None,
        options: _WriteOptions,
    ) -> Obj | None:
        """The object ``build`` makes of ``old``, admitted and validated; None if nothing changes."""
        subresource, scope, strategy = options.subresource, options.scope, kind.strategy
        if scope is not None and not scope.may_write(old):
            raise _denied(scope, kind, options.verb, ns or None, name)
        if expected_revision and expected_revision != revision_of(old):
            raise errors.conflict(kind.group, kind.plural, name)
        new_v = build(self.to_version(kind, old, version))
        if not isinstance(new_v, dict):
            raise errors.bad_request("the patched object must be a JSON object")
        new = self._to_storage(kind, new_v, version, old)
        _prune(kind, version, new, options.field_validation, options.warnings, old)
        self._keep_system_metadata(new, old, kind, ns, name)
        keep_owner(new, old, may_change=scope is None)
        if subresource == "status":
            status = new.get("status")
            new = jsonutil.clone(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif strategy.status_subresource:
            if "status" in old:
                new["status"] = jsonutil.clone(old["status"])
            else:
                new.pop("status", None)
        if scope is not None and not scope.may_write(new):
            raise _denied(scope, kind, options.verb, ns or None, name)
        strategy.default(new)
        ctx = self._ctx(identity)
        strategy.mutate_update(new, old, ctx)
        if same_except_revision(new, old):
            return None
        if strategy.spec_changed(new, old):
            meta(new)["generation"] = int(meta(old).get("generation") or 1) + 1
        causes = _metadata_causes(new, old) + strategy.validate_schema_update(new, old)
        if causes:
            raise errors.invalid(kind.group, kind.kind, name, causes)
        strategy.validate_update(new, old, ctx)
        return new

    @staticmethod
    def _keep_system_metadata(new: Obj, old: Obj, kind: Kind, namespace: str, name: str) -> None:
        """Fields clients may not change: identity, creation, deletion, generation."""
        m, o = meta(new), meta(old)
        m["name"] = name
        if kind.namespaced:
            m["namespace"] = namespace
        else:
            m.pop("namespace", None)
        for field in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if field in o:
                m[field] = o[field]
            else:
                m.pop(field, None)
        m.pop("managedFields", None)
        m["resourceVersion"] = o.get("resourceVersion")
        new["apiVersion"], new["kind"] = old.get("apiVersion"), kind.kind

    # ---- delete ------------------------------------------------------------------------------

    def delete(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        name: str,
        identity: Identity | None,
        options: Obj | None = None,
        *,
        dry_run: bool = False,
        scope: Scope | None = None,
    ) -> tuple[Obj, bool]:
        """Delete, or mark for deletion while finalizers remain. Returns (object, gone_now).

        With ``dry_run`` the answer is the same but nothing changes.
        """
        ns = self._ns(kind, namespace)
        pre = (options or {}).get("preconditions") or {}
        # Foreground and Orphan propagation: a finalizer the garbage collector acts on and removes.
        policy = (options or {}).get("propagationPolicy") or "Background"
        if policy not in _PROPAGATION_FINALIZERS:
            raise errors.bad_request(f"unsupported propagationPolicy {policy!r}")
        cascade = _PROPAGATION_FINALIZERS[policy]
        deadline = time.monotonic() + _CONFLICT_RETRY_SECONDS
        guess, stored_now = not pre, None  # a precondition is decided on the stored object
        while time.monotonic() < deadline:
            guessed, guess = guess, False
            old = stored_now or self._current_for_write(kind, ns, name, guess=guessed)
            try:
                if scope is not None and not scope.may_write(old):
                    raise _denied(scope, kind, "delete", namespace, name)
                kind.strategy.validate_delete(old, self._ctx(identity))
            except errors.ApiError:
                if guessed and (stored_now := self._if_stale(kind, ns, name, old)) is not None:
                    continue  # refused perhaps only because the guess was stale: decide again
                raise
            m = meta(old)
            if pre.get("uid") and pre["uid"] != m.get("uid"):
                raise errors.conflict(kind.group, kind.plural, name)
            if pre.get("resourceVersion") and str(pre["resourceVersion"]) != str(m.get("resourceVersion")):
                raise errors.conflict(kind.group, kind.plural, name)
            finalizers = list(m.get("finalizers") or [])
            if cascade and not m.get("deletionTimestamp") and cascade not in finalizers:
                finalizers.append(cascade)
            answered_without_write = dry_run or (finalizers and m.get("deletionTimestamp"))
            # Such an answer is only right if the guess is what is stored.
            if guessed and answered_without_write and (stored_now := self._if_stale(kind, ns, name, old)):
                continue
            try:
                if finalizers:
                    if m.get("deletionTimestamp"):
                        return self.to_version(kind, old, version), False
                    new = jsonutil.clone(old)
                    meta(new)["finalizers"] = finalizers
                    meta(new)["deletionTimestamp"] = now_rfc3339()
                    meta(new)["deletionGracePeriodSeconds"] = 0
                    if dry_run:
                        return self.to_version(kind, new, version), False
                    stored = _call(self.store.update, kind.key, ns, name, new, revision_of(old))
                    return self.to_version(kind, stored, version), False
                if dry_run:
                    return self.to_version(kind, old, version), True
                stored = _call(self.store.delete, kind.key, ns, name, revision_of(old))
                return self.to_version(kind, stored, version), True
            except store_errors.ConflictError:
                continue
            except store_errors.NotFoundError as exc:
                raise errors.not_found(kind.group, kind.plural, name) from exc
        raise errors.conflict(kind.group, kind.plural, name)

    # ---- watch -------------------------------------------------------------------------------

    async def watch(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        bookmark_interval: float | None = None,
        timeout: float | None = None,
        scope: Scope | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """``watch_batches`` one event at a time (the in-process client's view)."""
        batches = await self.watch_batches(
            kind,
            version,
            namespace,
            resource_version,
            label_selector,
            field_selector,
            bookmark_interval=bookmark_interval,
            timeout=timeout,
            scope=scope,
        )

        async def events() -> AsyncIterator[WatchEvent]:
            try:
                async for batch in batches:
                    for event in batch:
                        yield event
            finally:
                await batches.aclose()  # type: ignore[attr-defined]

        return events()

    async def watch_batches(
        self,
        kind: Kind,
        version: str,
        namespace: str | None,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        bookmark_interval: float | None = None,
        timeout: float | None = None,
        scope: Scope | None = None,
    ) -> AsyncIterator[builtins.list[WatchEvent]]:
        """Kubernetes watch semantics: rv ""/"0" starts with synthetic ADDED events.

        Events come in batches of those already queued, so a busy watcher's events can go out in
        one write (one TLS record, one system call) instead of one each.

        With ``bookmark_interval``, a BOOKMARK carrying the newest revision is sent after each quiet
        interval, so informers can resume without re-listing. With ``timeout`` (the request's
        ``timeoutSeconds``) the stream ends by itself after that many seconds.
        """
        if self.hub is None:
            raise errors.internal("watch is not available in this process")

        match_labels = selectors.parse_label_selector(label_selector)
        match_fields = selectors.parse_field_selector(field_selector, kind.strategy.field_labels)
        ns = self._ns(kind, namespace) if namespace else None

        def visible(obj: Obj) -> bool:
            return match_labels(obj) and match_fields(obj) and (scope is None or scope.may_read(obj))

        def matches(event: Event) -> bool:
            return (
                event.resource == kind.key and (ns is None or event.namespace == ns) and visible(event.object)
            )

        initial: builtins.list[Obj] = []
        if resource_version in (None, "", "0"):
            items, after = await self.run(_call, self.store.list, kind.key, ns)
            initial = [o for o in items if visible(o)]
        else:
            try:
                after = int(resource_version)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resourceVersion {resource_version!r}") from exc
        try:
            sub = await self.hub.subscribe(after, matches)
        except store_errors.ExpiredError as exc:
            raise errors.gone(str(exc)) from exc
        deadline = time.monotonic() + timeout if timeout is not None and timeout > 0 else None
        return self._stream(kind, version, initial, sub, bookmark_interval, deadline)

    async def _stream(
        self,
        kind: Kind,
        version: str,
        initial: builtins.list[Obj],
        sub: Subscription,
        bookmark_interval: float | None,
        deadline: float | None,
    ) -> AsyncIterator[builtins.list[WatchEvent]]:
        try:
            for start in range(0, len(initial), _WATCH_BATCH):
                chunk = initial[start : start + _WATCH_BATCH]
                yield [WatchEvent("ADDED", self.to_version(kind, obj, version)) for obj in chunk]
            while True:
                wait, bookmark_due = bookmark_interval, bookmark_interval is not None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if wait is None or left < wait:
                        wait, bookmark_due = left, False
                event = await sub.next(wait)
                if event is None:
                    if sub.closed:
                        break
                    if not bookmark_due:
                        continue  # the deadline passed: the loop ends at its top
                    revision = max(sub.last_revision, self.hub.revision if self.hub else 0)
                    bookmark = {
                        "kind": kind.kind,
                        "apiVersion": kind.api_version(version),
                        "metadata": {"resourceVersion": str(revision)},
                    }
                    yield [WatchEvent("BOOKMARK", bookmark)]
                    continue
                batch = [WatchEvent(event.type, self.to_version(kind, event.object, version))]
                while len(batch) < _WATCH_BATCH and (event := sub.next_nowait()) is not None:
                    batch.append(WatchEvent(event.type, self.to_version(kind, event.object, version)))
                yield batch
            if sub.overflowed:
                yield [WatchEvent("ERROR", errors.gone("watch fell too far behind; re-list").status())]
        finally:
            sub.close()


#: At most this many watch events go out in one write.
_WATCH_BATCH = 256

_PROPAGATION_FINALIZERS = {"Background": "", "Foreground": "foregroundDeletion", "Orphan": "orphan"}

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


@dataclass(frozen=True)
class _WriteOptions:
    """What a PUT or PATCH asked for besides the object: subresource, dry run, owner scope, pruning."""

    subresource: str | None = None
    dry_run: bool = False
    scope: Scope | None = None
    field_validation: str = "Ignore"
    warnings: builtins.list[str] | None = None
    #: The request's verb, for a scope's refusal.
    verb: str = "update"


def _prune(
    kind: Kind,
    version: str,
    obj: Obj,
    field_validation: str,
    warnings: builtins.list[str] | None,
    stored: Obj | None = None,
) -> None:
    """Drop unknown fields; Strict turns them into 400, Warn into warnings for the response.

    ``stored``: the stored object an update replaces (its unchanged parts are not walked again).
    """
    unknown = pruning.prune(obj, kind.strategy.structure, stored)
    if not unknown:
        return
    if field_validation == "Strict":
        raise pruning.strict_error(kind.kind, version, unknown)
    if field_validation == "Warn" and warnings is not None:
        warnings.extend(f'unknown field "{path}"' for path in unknown)


def _denied(scope: Scope, kind: Kind, verb: str, namespace: str | None, name: str) -> errors.ApiError:
    """Kubernetes' Forbidden for a caller acting on an object outside its scope."""
    identity = Identity(scope.user)
    return errors.forbidden(
        roles.forbidden_message(identity, kind.group, kind.plural, verb, namespace, name),
        kind.group,
        kind.plural,
        name,
    )


def _metadata_causes(obj: Obj, old: Obj | None = None) -> builtins.list[errors.Cause]:
    """Shapes of ``metadata`` fields clients write: labels (as selectors assume), annotations, finalizers.

    On an update (``old``), a field equal to the stored one is not checked again: it passed when stored.
    """
    m = obj.get("metadata") or {}
    before = (old.get("metadata") or {}) if old is not None else None
    causes: builtins.list[errors.Cause] = []
    annotations = m.get("annotations")
    if (
        annotations is not None
        and (before is None or annotations != before.get("annotations"))
        and not (isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values()))
    ):
        causes.append(errors.Cause("metadata.annotations", "Invalid value: must be a map of strings"))
    finalizers = m.get("finalizers")
    if (
        finalizers is not None
        and (before is None or finalizers != before.get("finalizers"))
        and not (isinstance(finalizers, builtins.list) and all(isinstance(f, str) and f for f in finalizers))
    ):
        causes.append(
            errors.Cause("metadata.finalizers", "Invalid value: must be a list of non-empty strings")
        )
    labels = m.get("labels")
    if labels is None or (before is not None and labels == before.get("labels")):
        return causes
    if not isinstance(labels, dict):
        return [*causes, errors.Cause("metadata.labels", "Invalid value: must be a map of strings")]
    for key, value in labels.items():
        prefix, slash, label = str(key).rpartition("/")
        key_ok = (
            bool(label)
            and len(label) <= 63
            and bool(_LABEL_NAME.match(label))
            and (not slash or (0 < len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))))
        )
        if not key_ok:
            causes.append(
                errors.Cause(
                    "metadata.labels",
                    f"Invalid value: {json.dumps(key)}: name part must consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character, with an "
                    "optional DNS subdomain prefix and '/'",
                )
            )
        if not isinstance(value, str) or (value and (len(value) > 63 or not _LABEL_NAME.match(value))):
            causes.append(
                errors.Cause(
                    "metadata.labels",
                    f"Invalid value: {json.dumps(value)}: a valid label must be an empty string or consist "
                    "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character",
                )
            )
    return causes


def _copy_path(src: Obj, dst: Obj, path: tuple[str, ...]) -> None:
    cur: Any = src
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            return
        cur = cur[part]
    target = dst
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            target[part] = nxt
        target = nxt
    target.setdefault(path[-1], jsonutil.clone(cur))


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a store call, turning an unreachable database into 503."""
    try:
        return fn(*args)
    except store_errors.UnavailableError as exc:
        raise errors.unavailable(str(exc)) from exc
