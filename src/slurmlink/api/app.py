"""The ASGI application: authentication middleware, health, metrics, discovery, OpenAPI, the generic
resource routes of the Kubernetes dialect, and the component routers mounted beside them."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from slurmlink.api import discovery, metrics
from slurmlink.api.component import Component, OpenApiV3, mount
from slurmlink.api.endpoints import ResourceEndpoints
from slurmlink.api.middleware import AuthenticationMiddleware
from slurmlink.api.security import Authenticator
from slurmlink.api.status import error_response
from slurmlink.api.status import json_response as _json
from slurmlink.api.whoami import WHOAMI
from slurmlink.apiserver.service import ResourceService
from slurmlink.resources import errors

ReadyCheck = Callable[[], Awaitable[bool]]
#: Called before each ``/metrics`` answer, to set gauges read from elsewhere (the bank's balances).
ScrapeHook = Callable[[], Awaitable[None]]

log = logging.getLogger(__name__)

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


#: Seconds between watch BOOKMARK events (for watches that allow them); overridable for tests.
BOOKMARK_INTERVAL_ENV = "SLURMLINK_WATCH_BOOKMARK_INTERVAL"
DEFAULT_BOOKMARK_INTERVAL = 30.0


def bookmark_interval_from_env() -> float:
    """``$SLURMLINK_WATCH_BOOKMARK_INTERVAL`` (a positive number of seconds), else 30."""
    raw = os.environ.get(BOOKMARK_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_BOOKMARK_INTERVAL
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{BOOKMARK_INTERVAL_ENV}={raw!r} is not a number of seconds") from exc
    if value <= 0:
        raise ValueError(f"{BOOKMARK_INTERVAL_ENV}={raw!r} must be positive")
    return value


def build_app(
    service: ResourceService,
    auth: Authenticator,
    ready: ReadyCheck,
    *,
    bookmark_interval: float | None = None,
    components: Sequence[Component] = (WHOAMI,),
    scrape_hooks: Sequence[ScrapeHook] = (),
) -> Starlette:
    """Wire routes to the service and mount ``components``. ``ready`` says whether controllers and the
    store are up; ``scrape_hooks`` refresh gauges when ``/metrics`` is read.

    Only the health endpoints are open; the authentication middleware answers everything else,
    unknown paths included, with 401 unless it carries a client certificate or a bearer token.
    """
    registry = service.registry
    if bookmark_interval is None:
        bookmark_interval = bookmark_interval_from_env()
    resources = ResourceEndpoints(service, bookmark_interval=bookmark_interval)
    openapi_v3 = OpenApiV3(components)

    def mapped(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except errors.ApiError as exc:
                return error_response(exc)

        return wrapped

    @mapped
    async def version(_request: Request) -> Response:
        return _json(discovery.version_info())

    @mapped
    async def api(_request: Request) -> Response:
        return _json(discovery.api_versions())

    @mapped
    async def api_v1(_request: Request) -> Response:
        return _json(discovery.core_resources(registry))

    @mapped
    async def apis(_request: Request) -> Response:
        return _json(discovery.group_list(registry))

    @mapped
    async def api_group(request: Request) -> Response:
        group = request.path_params["group"]
        if group not in registry.groups():
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(discovery.group_document(registry, group))

    @mapped
    async def api_group_version(request: Request) -> Response:
        doc = discovery.version_resources(
            registry, request.path_params["group"], request.path_params["version"]
        )
        if doc is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(doc)

    async def openapi_v2(_request: Request) -> Response:
        return Response(discovery.OPENAPI_V2_BODY, media_type=discovery.OPENAPI_V2_MEDIA_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own 404/405 (no route, wrong method) as Status bodies."""
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        if code == 405:
            return error_response(
                errors.method_not_allowed("the server does not allow this method on the requested resource")
            )
        if code == 404:
            return error_response(
                errors.ApiError(404, "NotFound", "the server could not find the requested resource")
            )
        return error_response(errors.ApiError(code, "InternalError", str(getattr(exc, "detail", ""))))

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_request: Request) -> Response:
        if await ready():
            return PlainTextResponse("ok")
        return PlainTextResponse("not ready", status_code=503)

    async def metrics_endpoint(_request: Request) -> Response:
        metrics.STORE_REVISION.set(service.hub.revision if service.hub else 0)
        for hook in scrape_hooks:
            try:
                await hook()
            except Exception:  # a failed refresh leaves its gauges as they were; the rest is served
                log.exception("refreshing metrics before a scrape failed")
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    h = resources.handle
    routes: list[BaseRoute] = [
        Route("/version", version),
        Route("/healthz", healthz),
        Route("/livez", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/openapi/v2", openapi_v2),
        *openapi_v3.routes(),
        Route("/api", api),
        Route("/api/v1", api_v1),
        # Namespaced core kinds first; ``/api/v1/namespaces/{name}/status`` lands here too and is
        # told apart by the handler (no core kind is called "status").
        Route("/api/v1/namespaces/{namespace}/{plural}", h, methods=ALL_METHODS),
        Route("/api/v1/namespaces/{namespace}/{plural}/{name}", h, methods=ALL_METHODS),
        Route("/api/v1/namespaces/{namespace}/{plural}/{name}/{subresource}", h, methods=ALL_METHODS),
        Route("/api/v1/{plural}", h, methods=ALL_METHODS),
        Route("/api/v1/{plural}/{name}", h, methods=ALL_METHODS),
        Route("/api/v1/{plural}/{name}/{subresource}", h, methods=ALL_METHODS),
        Route("/apis", apis),
        Route("/apis/{group}", api_group),
        Route("/apis/{group}/{version}", api_group_version),
        Route("/apis/{group}/{version}/namespaces/{namespace}/{plural}", h, methods=ALL_METHODS),
        Route("/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", h, methods=ALL_METHODS),
        Route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/{subresource}",
            h,
            methods=ALL_METHODS,
        ),
        Route("/apis/{group}/{version}/{plural}", h, methods=ALL_METHODS),
        Route("/apis/{group}/{version}/{plural}/{name}", h, methods=ALL_METHODS),
        Route("/apis/{group}/{version}/{plural}/{name}/{subresource}", h, methods=ALL_METHODS),
        *(mount(component) for component in components),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthenticationMiddleware, authenticator=auth)],
        exception_handlers={HTTPException: http_error},
    )
