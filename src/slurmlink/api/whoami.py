"""``/slurmlink/v1/whoami``: who the server takes the caller for, and as which Unix user it acts.

Answers the first question of anyone handed a kubeconfig ("which account is this, and what may it
do?"); for the ``user`` role it shows the uid and gid the server resolved, which is what stamps the
user's objects and what data is moved as.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from slurmlink.api.component import ApiRoute, Component
from slurmlink.auth import roles, unix
from slurmlink.auth.identity import Identity

PREFIX = "/slurmlink/v1"


async def _whoami(_request: Request, identity: Identity) -> dict[str, Any]:
    held = roles.roles_of(identity)
    out: dict[str, Any] = {"user": identity.user, "groups": list(identity.groups), "roles": held}
    if "user" in held:
        try:
            account = unix.account(identity.user)
            out["unix"] = {"login": account.login, "uid": account.uid, "gid": account.gid}
        except unix.NoSuchUser as exc:
            out["unix"] = {"error": str(exc)}
    if "node-agent" in held:
        out["node"] = roles.node_of(identity)
    return out


_WHOAMI_SCHEMA = {
    "type": "object",
    "required": ["user", "groups", "roles"],
    "properties": {
        "user": {"type": "string", "description": "The authenticated user name"},
        "groups": {"type": "array", "items": {"type": "string"}},
        "roles": {"type": "array", "items": {"type": "string", "enum": list(roles.ROLES)}},
        "node": {
            "type": "string",
            "nullable": True,
            "description": "For the node-agent role: its node (null if the user name breaks the rule)",
        },
        "unix": {
            "type": "object",
            "description": "For the user role: the Unix account the server resolved",
            "properties": {
                "login": {"type": "string"},
                "uid": {"type": "integer"},
                "gid": {"type": "integer"},
                "error": {"type": "string"},
            },
        },
    },
}

WHOAMI = Component(
    name="identity",
    prefix=PREFIX,
    routes=[ApiRoute("/whoami", _whoami)],
    openapi={
        "info": {"title": "slurmlink identity", "version": "v1"},
        "paths": {
            f"{PREFIX}/whoami": {
                "get": {
                    "operationId": "whoami",
                    "summary": "Who the server takes the caller for",
                    "responses": {
                        "200": {
                            "description": "The caller",
                            "content": {"application/json": {"schema": _WHOAMI_SCHEMA}},
                        },
                        "401": {"description": "No credentials"},
                    },
                }
            }
        },
    },
)
