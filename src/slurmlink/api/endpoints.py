"""Resource endpoints: one generic handler set for every registered kind."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from slurmlink import jsonutil
from slurmlink.api import metrics, tables
from slurmlink.api.middleware import identity_of
from slurmlink.api.security import authorize
from slurmlink.api.status import error_response
from slurmlink.api.status import json_response as _json
from slurmlink.apiserver.service import ResourceService
from slurmlink.auth.identity import Identity
from slurmlink.resources import errors, patching, pruning, selectors
from slurmlink.resources.access import Scope
from slurmlink.resources.kind import Kind, Obj
from slurmlink.resources.watch import WatchEvent

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRUE = ("1", "true", "True")


class ResourceEndpoints:
    """Handlers for ``/apis/...`` and ``/api/v1/...`` resource paths."""

    def __init__(self, service: ResourceService, *, bookmark_interval: float = 30.0) -> None:
        self.service = service
        self.bookmark_interval = bookmark_interval

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.service.run(fn, *args)

    def _kind(self, request: Request) -> tuple[Kind, str]:
        p = request.path_params
        if (
            "group" not in p
            and "namespace" in p
            and "name" not in p
            and p["plural"] in ("status", "finalize")
        ):
            # ``/api/v1/namespaces/{name}/status``: a namespace's subresource, not a namespaced kind.
            p["name"], p["subresource"], p["plural"] = p.pop("namespace"), p["plural"], "namespaces"
        group = p.get("group", "")
        version = p.get("version", "v1")
        kind = self.service.registry.lookup(group, version, p["plural"])
        if kind is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return kind, version

    async def handle(self, request: Request) -> Response:
        start = time.perf_counter()
        verb, resource, code = request.method.lower(), request.path_params.get("plural", ""), 500
        try:
            response = await self._dispatch(request)
            code = response.status_code
            return response
        except errors.ApiError as exc:
            code = exc.code
            return error_response(exc)
        except Exception as exc:  # a bug: still answer with a Status, as the API server does
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            error = errors.internal(f"{type(exc).__name__}: {exc}")
            code = error.code
            return error_response(error)
        finally:
            metrics.REQUESTS.labels(verb, resource, str(code)).inc()
            metrics.LATENCY.labels(verb, resource).observe(time.perf_counter() - start)

    async def _dispatch(self, request: Request) -> Response:
        identity = identity_of(request)
        kind, version = self._kind(request)
        p = request.path_params
        namespace = p.get("namespace")
        name = p.get("name")
        subresource = p.get("subresource")
        if subresource is not None and not (subresource == "status" and kind.strategy.serves_status):
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not kind.namespaced:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if kind.namespaced and name is not None and namespace is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if kind.source is not None:
            return await self._virtual(request, kind, version, identity, name)
        method = request.method
        query = request.query_params
        dry_run = _dry_run(query.getlist("dryRun")) if method in ("POST", "PUT", "PATCH", "DELETE") else False
        warnings: list[str] = []
        writes: dict[str, Any] = {
            "dry_run": dry_run,
            "field_validation": pruning.field_validation(query.get("fieldValidation")),
            "warnings": warnings,
        }
        if name is None and namespace is None and kind.namespaced and method != "GET":
            # Across all namespaces a namespaced kind can only be listed and watched.
            raise errors.method_not_allowed(f"{method} is not supported on {kind.plural} across namespaces")
        if name is None:
            if method == "GET":
                watch = query.get("watch") in _TRUE
                scope = authorize(identity, kind, "watch" if watch else "list", namespace, None)
                if watch:
                    return await self._watch(request, kind, version, namespace, scope)
                return await self._list(request, kind, version, namespace, scope)
            if method == "POST":
                scope = authorize(identity, kind, "create", namespace, None)
                body = await _body(request)
                obj = await self._run(
                    functools.partial(self.service.create, scope=scope, **writes),
                    kind,
                    version,
                    namespace,
                    body,
                    identity,
                )
                return _json(obj, 201, warnings)
            if method == "DELETE":
                scope = authorize(identity, kind, "deletecollection", namespace, None)
                return await self._delete_collection(
                    request, kind, version, namespace, identity, dry_run, scope
                )
            raise errors.method_not_allowed(f"{method} is not supported on a collection")
        if method == "GET":
            scope = authorize(identity, kind, "get", namespace, name)
            obj = await self._run(
                functools.partial(self.service.get, scope=scope), kind, version, namespace, name
            )
            if tables.wants_table(request.headers.get("accept")):
                return _json(
                    tables.table(kind, [obj], None, include_object=query.get("includeObject", "Metadata"))
                )
            return _json(obj)
        if method == "PUT":
            scope = authorize(identity, kind, "update", namespace, name, subresource)
            body = await _body(request)
            obj = await self._run(
                functools.partial(self.service.replace, subresource=subresource, scope=scope, **writes),
                kind,
                version,
                namespace,
                name,
                body,
                identity,
            )
            return _json(obj, 200, warnings)
        if method == "PATCH":
            scope = authorize(identity, kind, "patch", namespace, name, subresource)
            content_type = request.headers.get("content-type", "")
            if patching.media_type(content_type) not in patching.SUPPORTED:
                raise errors.unsupported_media_type(content_type)
            body = _parse(await request.body())
            obj = await self._run(
                functools.partial(self.service.patch, subresource=subresource, scope=scope, **writes),
                kind,
                version,
                namespace,
                name,
                content_type,
                body,
                identity,
            )
            return _json(obj, 200, warnings)
        if method == "DELETE":
            scope = authorize(identity, kind, "delete", namespace, name)
            raw = await request.body()
            options = _parse(raw) if raw.strip() else None
            if options is not None and not isinstance(options, dict):
                raise errors.bad_request("the body of a DELETE must be a DeleteOptions object")
            dry_run = dry_run or _dry_run((options or {}).get("dryRun") or [])
            obj, _gone = await self._run(
                functools.partial(self.service.delete, dry_run=dry_run, scope=scope),
                kind,
                version,
                namespace,
                name,
                identity,
                options,
            )
            return _json(obj)
        raise errors.method_not_allowed(f"{method} is not supported")

    async def _virtual(
        self, request: Request, kind: Kind, version: str, identity: Identity, name: str | None
    ) -> Response:
        """List and get of a kind computed by its source (``resources.kind.VirtualSource``)."""
        source = kind.source
        assert source is not None
        q = request.query_params
        if request.method != "GET":
            raise errors.method_not_allowed(source.read_only_message)
        as_table = tables.wants_table(request.headers.get("accept"))
        include = q.get("includeObject", "Metadata")
        if name is not None:
            obj = await source.get_object(name, authorize(identity, kind, "get", None, name))
            return _json(tables.table(kind, [obj], None, include_object=include) if as_table else obj)
        if q.get("watch") in _TRUE:
            raise errors.method_not_allowed(
                f"{kind.plural} cannot be watched: they are computed on each read, not stored; list again"
            )
        scope = authorize(identity, kind, "list", None, None)
        match_labels = selectors.parse_label_selector(q.get("labelSelector"))
        match_fields = selectors.parse_field_selector(q.get("fieldSelector"), kind.strategy.field_labels)
        items = [obj for obj in await source.list_objects(scope) if match_labels(obj) and match_fields(obj)]
        if as_table:
            return _json(tables.table(kind, items, None, include_object=include))
        return _json(
            {"apiVersion": kind.api_version(version), "kind": kind.list_kind, "metadata": {}, "items": items}
        )

    async def _list(
        self, request: Request, kind: Kind, version: str, namespace: str | None, scope: Scope | None
    ) -> Response:
        q = request.query_params
        if (
            namespace is not None
            and kind.namespaced
            and not await self._run(self.service.namespace_exists, namespace)
        ):
            items: list[Obj] = []
            revision = await self._run(self.service.store.current_revision)
        else:
            items, revision = await self._run(
                functools.partial(self.service.list, scope=scope),
                kind,
                version,
                namespace,
                q.get("labelSelector"),
                q.get("fieldSelector"),
            )
        if tables.wants_table(request.headers.get("accept")):
            return _json(
                tables.table(kind, items, str(revision), include_object=q.get("includeObject", "Metadata"))
            )
        return _json(
            {
                "apiVersion": kind.api_version(version),
                "kind": kind.list_kind,
                "metadata": {"resourceVersion": str(revision)},
                "items": items,
            }
        )

    async def _delete_collection(
        self,
        request: Request,
        kind: Kind,
        version: str,
        namespace: str | None,
        identity: Identity,
        dry_run: bool,
        scope: Scope | None,
    ) -> Response:
        q = request.query_params
        items, revision = await self._run(
            functools.partial(self.service.list, scope=scope),
            kind,
            version,
            namespace,
            q.get("labelSelector"),
            q.get("fieldSelector"),
        )
        deleted = []
        for item in items:
            m = item["metadata"]
            try:
                obj, _ = await self._run(
                    functools.partial(self.service.delete, dry_run=dry_run, scope=scope),
                    kind,
                    version,
                    m.get("namespace"),
                    m["name"],
                    identity,
                )
                deleted.append(obj)
            except errors.ApiError as exc:
                if exc.code != 404:
                    raise
        return _json(
            {
                "apiVersion": kind.api_version(version),
                "kind": kind.list_kind,
                "metadata": {"resourceVersion": str(revision)},
                "items": deleted,
            }
        )

    async def _watch(
        self, request: Request, kind: Kind, version: str, namespace: str | None, scope: Scope | None
    ) -> Response:
        q = request.query_params
        as_table = tables.wants_table(request.headers.get("accept"))
        include = q.get("includeObject", "Metadata")
        bookmarks = q.get("allowWatchBookmarks") in _TRUE
        try:
            timeout = int(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        except ValueError as exc:
            raise errors.bad_request(
                f'timeoutSeconds: Invalid value: "{q["timeoutSeconds"]}": must be an integer'
            ) from exc
        try:
            batches = await self.service.watch_batches(
                kind,
                version,
                namespace,
                q.get("resourceVersion"),
                q.get("labelSelector"),
                q.get("fieldSelector"),
                bookmark_interval=self.bookmark_interval if bookmarks else None,
                timeout=timeout,
                scope=scope,
            )
        except errors.ApiError as exc:
            if exc.code != 410:
                raise
            expired = exc

            async def gone() -> AsyncIterator[bytes]:
                yield _line({"type": "ERROR", "object": expired.status()})

            return StreamingResponse(gone(), media_type="application/json")

        async def stream() -> AsyncIterator[bytes]:
            metrics.WATCHES.labels(kind.plural).inc()
            sent, writes = metrics.WATCH_EVENTS.labels(kind.plural), metrics.WATCH_WRITES.labels(kind.plural)
            first = True
            try:
                async for batch in batches:
                    lines = []
                    for event in batch:
                        lines.append(_line(_watch_frame(kind, event, as_table, include, first)))
                        first = False
                    sent.inc(len(lines))
                    writes.inc()
                    yield b"".join(lines)
            finally:
                metrics.WATCHES.labels(kind.plural).dec()
                await batches.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(stream(), media_type="application/json")


def _dry_run(values: Any) -> bool:
    """``dryRun=All`` (the only value the API accepts) asks for every check and no change."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        raise errors.bad_request("dryRun must be a list of strings")
    for value in values:
        if value != "All":
            raise errors.bad_request(f'Invalid dryRun value: "{value}": supported values: "All"')
    return bool(values)


def _watch_frame(kind: Kind, event: WatchEvent, as_table: bool, include: str, first: bool) -> dict[str, Any]:
    if event.type in ("ERROR", "BOOKMARK") or not as_table:
        return {"type": event.type, "object": event.object}
    rv = (event.object.get("metadata") or {}).get("resourceVersion")
    return {
        "type": event.type,
        "object": tables.table(kind, [event.object], rv, include_object=include, with_columns=first),
    }


def _line(frame: dict[str, Any]) -> bytes:
    return jsonutil.dumps(frame) + b"\n"


def _parse(raw: bytes) -> Any:
    try:
        return jsonutil.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc


async def _body(request: Request) -> Any:
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if "protobuf" in content_type or "cbor" in content_type:
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format ({content_type}) - accepted media types "
            "include: application/json, application/yaml",
        )
    if "yaml" in content_type and "apply-patch" not in content_type:
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"the request body is not valid YAML: {exc}") from exc
    return _parse(raw)
