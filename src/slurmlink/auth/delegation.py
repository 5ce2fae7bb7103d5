"""Who may act for whom: a service's ``user`` credential submitting SlurmJobs on named users' behalf.

A portal or workflow engine runs with a ``user`` kubeconfig of its own service account; the site's
admin lists, in the server's configuration (``bridge_delegates``), the users it may act for:

    [serve]
    bridge_delegates = { portal = ["alice", "bob"] }

It may then create a SlurmJob owned by one of them (naming the owner in the ``slurmlink.io/owner``
annotation) and read, change and delete the jobs of those users; the job runs as its owner, never as
the service. Nothing else widens: other kinds, other users, and root (never a delegation target)
stay out of reach. The table is set once at start (:func:`configure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_DELEGATES: dict[str, frozenset[str]] = {}


class DelegationError(ValueError):
    """A delegation table that cannot be taken."""


def configure(table: Mapping[str, Sequence[str]]) -> None:
    """Replace the table: service login → logins it may act for."""
    parsed = parse(table)
    _DELEGATES.clear()
    _DELEGATES.update(parsed)


def parse(table: Mapping[str, Sequence[str]]) -> dict[str, frozenset[str]]:
    """The table checked: lists of logins, root in none of them."""
    if not isinstance(table, Mapping):
        raise DelegationError("bridge_delegates: must be a table of service = [user, ...]")
    parsed: dict[str, frozenset[str]] = {}
    for service, users in table.items():
        if not isinstance(users, list | tuple) or not all(isinstance(u, str) and u for u in users):
            raise DelegationError(f"bridge_delegates.{service}: must be a list of user logins")
        if "root" in users:
            raise DelegationError(f"bridge_delegates.{service}: nobody may act for root")
        parsed[str(service)] = frozenset(users)
    return parsed


def delegates_of(login: str) -> frozenset[str]:
    """The logins ``login`` may act for (none unless the admin listed some)."""
    return _DELEGATES.get(login, frozenset())
