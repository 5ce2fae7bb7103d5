"""The slurmlink roles and how an identity carries them.

A client's role travels as a group (``slurmlink:<role>``), in the certificate's O= field or beside a
token, the way Kubernetes reads groups. What each role may do is declared by each kind
(``Kind.access``, see ``resources.access``), not here.
"""

from __future__ import annotations

from slurmlink.auth.identity import Identity

ROLE_PREFIX = "slurmlink:"
#: ``admin`` everything; ``workload-manager`` what DWS's ClusterRole of that name grants (the Slurm
#: plugin); ``viewer`` read-only; ``user`` an HPC user, acting on their own objects only.
ROLES = ("admin", "workload-manager", "viewer", "user")

#: The identity in-process controllers act as.
SYSTEM = Identity("system:slurmlink", (f"{ROLE_PREFIX}admin",))


def role_group(role: str) -> str:
    """The group name that carries ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")
    return f"{ROLE_PREFIX}{role}"


def roles_of(identity: Identity) -> list[str]:
    return [g[len(ROLE_PREFIX) :] for g in identity.groups if g.startswith(ROLE_PREFIX)]


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
