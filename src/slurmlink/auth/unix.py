"""The ``user`` role's identity rule: a credential's user name is a Unix login on the API server.

The server resolves it with the system's user database (``getpwnam``: /etc/passwd, or LDAP/SSSD
through NSS), so a user's objects carry the uid Slurm knows them by. Looked up on every request, not
cached: accounts added or removed take effect at once, and NSS has its own caches.
"""

from __future__ import annotations

import pwd

from slurmlink.resources.access import UnixAccount


class NoSuchUser(LookupError):
    """The login has no account in the server's user database."""


def account(login: str) -> UnixAccount:
    """The Unix account named ``login``; NoSuchUser when there is none."""
    try:
        entry = pwd.getpwnam(login)
    except KeyError as exc:
        raise NoSuchUser(
            f'no Unix user "{login}" in this host\'s user database: a credential of the user role '
            "names the Unix login it acts as (check with: getent passwd LOGIN)"
        ) from exc
    return UnixAccount(login=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
