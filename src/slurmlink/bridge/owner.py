"""The Unix account a job belongs to, as the bridge acts for it."""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from slurmlink.identity import supplementary_groups


class OwnerError(ValueError):
    """No such account here, or root: the message is fit for a job's status."""


@dataclass(frozen=True)
class Owner:
    """A job's owner: login, uid, primary gid and supplementary groups (as their login shell has them).

    Never root: a job, and every file the bridge touches for it, runs with the user's own rights.
    """

    login: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.uid == 0:
            raise OwnerError(f"jobs never run as root: {self.login or 'uid 0'} cannot own a job")

    @classmethod
    def of_uid(cls, uid: int) -> Owner:
        """The account with ``uid`` on this host; OwnerError if there is none, or for root."""
        if uid == 0:
            raise OwnerError("jobs never run as root: uid 0 cannot own a job")
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise OwnerError(f"no Unix account has uid {uid} on this host") from None
        return cls._of(entry)

    @classmethod
    def of_login(cls, login: str) -> Owner:
        """The account named ``login`` on this host; OwnerError if there is none, or for root."""
        try:
            entry = pwd.getpwnam(login)
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            raise OwnerError(f"no Unix account {login!r} on this host") from None
        return cls._of(entry)

    @classmethod
    def _of(cls, entry: pwd.struct_passwd) -> Owner:
        if entry.pw_uid == 0:
            raise OwnerError(f"jobs never run as root: {entry.pw_name} (uid 0) cannot own a job")
        groups = supplementary_groups(entry.pw_uid, entry.pw_gid, entry.pw_name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)
