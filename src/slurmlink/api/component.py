"""Component routers: a REST API of its own (the bank's, say) mounted beside the Kubernetes dialect.

A component lists its routes and an OpenAPI 3 document; mounting gives every route what the resource
routes have: authentication (by the middleware in front of everything), authorisation by role per
route, errors as Kubernetes ``Status`` bodies, request metrics, and the document served under
``/openapi/v3/<prefix>`` and listed in the ``/openapi/v3`` index, as the API server lists its groups.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from slurmlink import jsonutil
from slurmlink.api import metrics
from slurmlink.api.middleware import identity_of
from slurmlink.api.status import error_response, json_response
from slurmlink.auth import roles
from slurmlink.auth.identity import Identity
from slurmlink.resources import errors

log = logging.getLogger(__name__)

#: A handler gets the request and the caller; it returns a JSON-able body or a Response, or raises
#: an ApiError.
Handler = Callable[[Request, Identity], Awaitable[Any]]


@dataclass(frozen=True)
class ApiRoute:
    """One operation: path (relative to the component's prefix), methods, handler, allowed roles."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    #: Roles that may call it; empty means any authenticated caller.
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Component:
    """A named REST API under ``prefix`` (e.g. ``/bank/v1``) with its OpenAPI 3 document."""

    name: str
    prefix: str
    routes: Sequence[ApiRoute]
    openapi: dict[str, Any] = field(default_factory=dict)

    @property
    def openapi_path(self) -> str:
        """The key of this component in the ``/openapi/v3`` index (the prefix without its slash)."""
        return self.prefix.strip("/")


def _forbidden(identity: Identity, method: str, path: str) -> errors.ApiError:
    """The API server's wording for a refused non-resource request."""
    return errors.ApiError(
        403, "Forbidden", f'forbidden: User "{identity.user}" cannot {method.lower()} path "{path}"'
    )


def _endpoint(component: Component, route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
    label = f"{component.name}:{route.path}"

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        code = 500
        try:
            identity = identity_of(request)
            if route.roles and not set(roles.roles_of(identity)) & route.roles:
                raise _forbidden(identity, request.method, request.url.path)
            result = await route.handler(request, identity)
            response = result if isinstance(result, Response) else json_response(result)
            code = response.status_code
            return response
        except errors.ApiError as exc:
            code = exc.code
            return error_response(exc)
        except Exception as exc:  # a bug: still answer with a Status
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            error = errors.internal(f"{type(exc).__name__}: {exc}")
            code = error.code
            return error_response(error)
        finally:
            metrics.REQUESTS.labels(request.method.lower(), label, str(code)).inc()
            metrics.LATENCY.labels(request.method.lower(), label).observe(time.perf_counter() - start)

    return endpoint


def mount(component: Component) -> Mount:
    """The component's routes under its prefix, each wrapped with authorisation, errors and metrics."""
    return Mount(
        component.prefix,
        routes=[Route(r.path, _endpoint(component, r), methods=list(r.methods)) for r in component.routes],
    )


def _hash(body: bytes) -> str:
    """Content hash for the index's URLs, so clients may cache a document until it changes."""
    return hashlib.sha512(body).hexdigest()[:64]


class OpenApiV3:
    """``/openapi/v3`` (an index of documents, with content hashes) and one document per component."""

    def __init__(self, components: Iterable[Component]) -> None:
        self._bodies: dict[str, bytes] = {}
        for component in components:
            document = {"openapi": "3.0.0", **component.openapi}
            document.setdefault("info", {"title": component.name, "version": component.prefix.strip("/")})
            self._bodies[component.openapi_path] = jsonutil.dumps(document)
        self._index = jsonutil.dumps(
            {
                "paths": {
                    path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(body)}"}
                    for path, body in sorted(self._bodies.items())
                }
            }
        )

    def routes(self) -> list[BaseRoute]:
        async def index(_request: Request) -> Response:
            return Response(self._index, media_type="application/json")

        async def document(request: Request) -> Response:
            body = self._bodies.get(request.path_params["path"])
            if body is None:
                return error_response(
                    errors.ApiError(404, "NotFound", "the server could not find the requested resource")
                )
            return Response(body, media_type="application/json")

        return [Route("/openapi/v3", index), Route("/openapi/v3/{path:path}", document)]
