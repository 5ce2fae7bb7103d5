"""The slurmlink roles and how an identity carries them.

A client's role travels as a group (``slurmlink:<role>``), in the certificate's O= field or beside a
token, the way Kubernetes reads groups. What each role may do is declared by each kind
(``Kind.access``, see ``resources.access``), not here.
"""

from __future__ import annotations

import re

from slurmlink.auth.identity import Identity

ROLE_PREFIX = "slurmlink:"
#: ``admin`` everything; ``workload-manager`` what DWS's ClusterRole of that name grants (the Slurm
#: plugin); ``viewer`` read-only; ``user`` an HPC user, acting on their own objects only;
#: ``node-agent`` the agent on one storage or compute node, writing only that node's objects;
#: ``accountant`` the bank's grants, adjustments, transfers and refunds.
ROLES = ("admin", "workload-manager", "viewer", "user", "node-agent", "accountant")

#: The ``node-agent`` role's identity rule: the credential's user name is ``system:node:<node>``
#: (the Kubernetes kubelet's convention), and the node it may act for is read from it on every request.
NODE_USER_PREFIX = "system:node:"
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

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
    identity: Identity,
    group: str,
    resource: str,
    verb: str,
    namespace: str | None,
    name: str | None,
    subresource: str | None = None,
) -> str:
    """The API server's wording for an authorisation refusal (``resource "slurmjobs/status"`` for a
    subresource)."""
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    target = f"{resource}/{subresource}" if subresource else resource
    return (
        f'{subject} is forbidden: User "{identity.user}" cannot {verb} resource "{target}" in API group '
        f'"{group}"{where}'
    )


def node_name_error(node: str) -> str | None:
    """Why ``node`` cannot name a node agent's node (None when it can).

    The name is used as is for the node's ``Storage`` object and for the namespace of its
    ``ClientMount``s, so it must be a lowercase RFC 1123 label, as a namespace name.
    """
    if len(node) <= 63 and _NODE_NAME.match(node):
        return None
    return (
        f"node name {node!r} is not a lowercase RFC 1123 label (lower case letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters)"
    )


def node_user(node: str) -> str:
    """The user name of ``node``'s agent."""
    return f"{NODE_USER_PREFIX}{node}"


def node_of(identity: Identity) -> str | None:
    """The node a ``node-agent`` credential acts for, or None when its user name breaks the rule."""
    if not identity.user.startswith(NODE_USER_PREFIX):
        return None
    node = identity.user[len(NODE_USER_PREFIX) :]
    return node if node_name_error(node) is None else None
