"""The ASGI application: discovery, health, metrics and the generic resource routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from slurmlink.api import discovery, metrics
from slurmlink.api.endpoints import ResourceEndpoints, _json, error_response
from slurmlink.api.security import Authenticator
from slurmlink.resources import errors
from slurmlink.resources.service import ResourceService

ReadyCheck = Callable[[], Awaitable[bool]]

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def build_app(
    service: ResourceService, auth: Authenticator, ready: ReadyCheck, *, bookmark_interval: float = 30.0
) -> Starlette:
    """Wire routes to the service. ``ready`` says whether controllers and the store are up."""
    registry = service.registry
    resources = ResourceEndpoints(service, auth, bookmark_interval=bookmark_interval)

    def authenticated(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                auth.require(request)
                return await handler(request)
            except errors.ApiError as exc:
                return error_response(exc)

        return wrapped

    async def version(_request: Request) -> Response:
        return _json(discovery.version_info())

    @authenticated
    async def api(_request: Request) -> Response:
        return _json(discovery.api_versions())

    @authenticated
    async def api_v1(_request: Request) -> Response:
        return _json(discovery.core_resources(registry))

    @authenticated
    async def apis(_request: Request) -> Response:
        return _json(discovery.group_list(registry))

    @authenticated
    async def api_group(request: Request) -> Response:
        group = request.path_params["group"]
        if group not in registry.groups():
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(discovery.group_document(registry, group))

    @authenticated
    async def api_group_version(request: Request) -> Response:
        doc = discovery.version_resources(
            registry, request.path_params["group"], request.path_params["version"]
        )
        if doc is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(doc)

    @authenticated
    async def openapi_v2(_request: Request) -> Response:
        return Response(discovery.OPENAPI_V2_BODY, media_type=discovery.OPENAPI_V2_MEDIA_TYPE)

    async def not_found(_request: Request) -> Response:
        return error_response(
            errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        )

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_request: Request) -> Response:
        if await ready():
            return PlainTextResponse("ok")
        return PlainTextResponse("not ready", status_code=503)

    @authenticated
    async def metrics_endpoint(_request: Request) -> Response:
        metrics.STORE_REVISION.set(service.hub.revision if service.hub else 0)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    h = resources.handle
    routes = [
        Route("/version", version),
        Route("/healthz", healthz),
        Route("/livez", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/openapi/v2", openapi_v2),
        Route("/openapi/v3", not_found),
        Route("/api", api),
        Route("/api/v1", api_v1),
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
    ]
    return Starlette(routes=routes)
