"""Role-based access: which verbs each slurmlink role may use on which resources.

A client's role travels as a group (``slurmlink:<role>``), in the certificate's O= field or beside a
token, the way Kubernetes reads groups. The workload-manager role mirrors DWS's ``workload-manager``
ClusterRole: full control of Workflows, read/update of Computes and Servers, read-only elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from slurmlink.auth.identity import Identity

ROLE_PREFIX = "slurmlink:"
ROLES = ("admin", "workload-manager", "viewer")
READ = frozenset({"get", "list", "watch"})
ALL = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})
DWS = "dataworkflowservices.github.io"

#: The identity in-process controllers act as.
SYSTEM = Identity("system:slurmlink", (f"{ROLE_PREFIX}admin",))


@dataclass(frozen=True)
class Rule:
    group: str  # "*" for any
    resource: str  # "*" for any
    verbs: frozenset[str]

    def allows(self, group: str, resource: str, verb: str) -> bool:
        return self.group in ("*", group) and self.resource in ("*", resource) and verb in self.verbs


RULES: dict[str, tuple[Rule, ...]] = {
    "admin": (Rule("*", "*", ALL),),
    "workload-manager": (
        Rule(DWS, "workflows", frozenset({"create", "delete", "get", "list", "patch", "update", "watch"})),
        Rule(DWS, "computes", frozenset({"get", "list", "patch", "update", "watch"})),
        Rule(DWS, "servers", frozenset({"get", "list", "patch", "update", "watch"})),
        Rule("*", "*", READ),
    ),
    "viewer": (Rule("*", "*", READ),),
}


def role_group(role: str) -> str:
    """The group name that carries ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    return f"{ROLE_PREFIX}{role}"


def roles_of(identity: Identity) -> list[str]:
    return [g[len(ROLE_PREFIX) :] for g in identity.groups if g.startswith(ROLE_PREFIX)]


def allowed(identity: Identity, group: str, resource: str, verb: str) -> bool:
    """Whether any of the identity's roles grants ``verb`` on ``group/resource``."""
    return any(
        rule.allows(group, resource, verb) for role in roles_of(identity) for rule in RULES.get(role, ())
    )


def forbidden_message(
    identity: Identity, group: str, resource: str, verb: str, namespace: str | None, name: str | None
) -> str:
    """The API server's wording for an authorisation refusal."""
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return (
        f'{subject} is forbidden: User "{identity.user}" cannot {verb} resource "{resource}" in API group '
        f'"{group}"{where}'
    )
