"""Authentication (client certificate or token) and authorisation of API requests."""

from __future__ import annotations

from starlette.requests import Request

from slurmlink.api.tls import PEER_IDENTITY
from slurmlink.auth import delegation, roles, unix
from slurmlink.auth.identity import Identity
from slurmlink.auth.tokens import TokenStore
from slurmlink.resources import access, errors
from slurmlink.resources.access import Scope
from slurmlink.resources.kind import Kind

#: The only paths served without credentials (health checks); see ``api.app``.
ANONYMOUS_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
#: ``Authorization`` schemes that carry an issued token: ``Bearer`` (Kubernetes clients) and ``Token``
#: (Django REST framework's, which the seed's banking plugins send to ``/mybrc-rest``).
TOKEN_SCHEMES = frozenset({"bearer", "token"})


class Authenticator:
    """Finds who a request is from. ``open_access`` (plain-HTTP development only) makes everyone admin."""

    def __init__(self, tokens: TokenStore | None, *, open_access: bool = False) -> None:
        self.tokens = tokens
        self.open_access = open_access

    def identify(self, request: Request) -> Identity | None:
        identity = request.scope.get("extensions", {}).get(PEER_IDENTITY)
        if identity is not None:
            return identity
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() in TOKEN_SCHEMES and self.tokens is not None:
            return self.tokens.lookup(credential.strip())
        if self.open_access:
            return Identity("anonymous", (roles.role_group("admin"),))
        return None

    def require(self, request: Request) -> Identity:
        identity = self.identify(request)
        if identity is None:
            raise errors.unauthorized()
        return identity


def authorize(
    identity: Identity,
    kind: Kind,
    verb: str,
    namespace: str | None,
    name: str | None,
    subresource: str | None = None,
) -> Scope | None:
    """Refuse what the identity's roles do not grant on ``kind``; otherwise the scope it acts in.

    None means the verb reaches every object; an ``OwnerScope`` limits it to the user's own (and, for
    reads, the kind's ``user_reads``); a ``NodeScope`` to the objects of the agent's node. A ``user``
    writes ``/status`` only where the kind allows it (``AccessPolicy.user_writes_status``).
    """
    reach = access.decide(kind.access, roles.roles_of(identity), verb)
    if (
        reach is access.Reach.OWN
        and subresource == "status"
        and verb in access.WRITE
        and not kind.access.user_writes_status
    ):
        raise errors.forbidden(
            roles.forbidden_message(identity, kind.group, kind.plural, verb, namespace, name, subresource),
            kind.group,
            kind.plural,
            name,
        )
    if reach is None:
        raise errors.forbidden(
            roles.forbidden_message(identity, kind.group, kind.plural, verb, namespace, name),
            kind.group,
            kind.plural,
            name,
        )
    if reach is access.Reach.ALL:
        return None
    if reach is access.Reach.NODE:
        node = roles.node_of(identity)
        if node is None:
            raise errors.forbidden(
                f"{roles.forbidden_message(identity, kind.group, kind.plural, verb, namespace, name)}: "
                f"a node-agent credential's user name must be {roles.NODE_USER_PREFIX}<node>",
                kind.group,
                kind.plural,
                name,
            )
        return access.NodeScope(node, identity.user, kind.access)
    try:
        account = unix.account(identity.user)
    except unix.NoSuchUser as exc:
        raise errors.forbidden(
            f"{roles.forbidden_message(identity, kind.group, kind.plural, verb, namespace, name)}: {exc}",
            kind.group,
            kind.plural,
            name,
        ) from exc
    acts_for: dict[str, access.UnixAccount] = {}
    if kind.access.delegable:
        for login in delegation.delegates_of(identity.user):
            try:
                delegator = unix.account(login)
            except unix.NoSuchUser:
                continue  # a listed user who has left: nothing to act for
            if delegator.uid != 0:
                acts_for[login] = delegator
    return access.OwnerScope(account, kind.access, acts_for)
