"""Authentication as ASGI middleware: one gate in front of every route the server has.

Each request but the health checks must carry a client certificate or a bearer token (401 with a
Kubernetes Status otherwise, unknown paths included, as the API server does); the identity found is
put in the ASGI scope for the handlers behind it, whichever component they belong to. What the
identity may do is each handler's question (a kind's access policy, a component route's roles).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from slurmlink.api.security import ANONYMOUS_PATHS, Authenticator
from slurmlink.api.status import error_response
from slurmlink.auth.identity import Identity
from slurmlink.resources import errors

#: Where the middleware leaves the caller's identity in the ASGI scope.
IDENTITY_KEY = "slurmlink.identity"


class AuthenticationMiddleware:
    """Refuses requests without credentials and records who sent the others."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ANONYMOUS_PATHS:
            await self.app(scope, receive, send)
            return
        identity = self.authenticator.identify(Request(scope))
        if identity is None:
            await error_response(errors.unauthorized())(scope, receive, send)
            return
        scope[IDENTITY_KEY] = identity
        await self.app(scope, receive, send)


def identity_of(request: Request) -> Identity:
    """The authenticated caller (the middleware guarantees one on every non-health route)."""
    identity = request.scope.get(IDENTITY_KEY)
    if identity is None:
        raise errors.unauthorized()
    return identity
