"""Who may do what to one kind: the access policy each kind declares, and the decision per request.

Roles travel as groups (``slurmlink:<role>``, see ``auth.roles``). Each kind declares the verbs each
role has on all of its objects, and what the ``user`` role may do: users act only on objects they own
(stamped with their Unix uid and login at creation), plus, where the kind says so, read objects that
concern them (a Workflow whose ``spec.userID`` is their uid). A kind may also let the ``node-agent``
role write the objects of its own node (``node_verbs`` on the objects ``node_writes`` accepts), e.g.
the DWS ``Storage`` named after the node. There is no central table: a new kind states its own
policy next to its schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from slurmlink.resources import errors

Obj = dict[str, Any]

READ = frozenset({"get", "list", "watch"})
WRITE = frozenset({"create", "update", "patch", "delete", "deletecollection"})
ALL = READ | WRITE

#: Label carrying the owner's uid (selectable: ``kubectl get ... -l slurmlink.io/owner-uid=1001``).
OWNER_UID_LABEL = "slurmlink.io/owner-uid"
#: Annotation carrying the owner's login (logins need not be valid label values).
OWNER_ANNOTATION = "slurmlink.io/owner"


@dataclass(frozen=True)
class UnixAccount:
    """The Unix user a ``user``-role credential stands for, as the server's user database knows it."""

    login: str
    uid: int
    gid: int


def owner_uid(obj: Obj) -> int | None:
    """The uid an object is stamped with, or None for objects no user owns."""
    raw = ((obj.get("metadata") or {}).get("labels") or {}).get(OWNER_UID_LABEL)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def owner_login(obj: Obj) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION)


#: The role of the agent on a storage or compute node (see ``auth.roles``).
NODE_AGENT = "node-agent"

#: What every kind grants unless it says otherwise.
_BASE_ROLES: Mapping[str, frozenset[str]] = {"admin": ALL, "workload-manager": READ, "viewer": READ}


@dataclass(frozen=True)
class AccessPolicy:
    """A kind's policy.

    ``roles`` maps a role to the verbs it has on every object of the kind. ``user_verbs`` are the
    verbs the ``user`` role has on objects it owns (``create`` among them makes the kind
    user-creatable). ``user_reads`` names further objects a user may get, list and watch.
    ``node_verbs`` are the verbs the ``node-agent`` role has on the objects ``node_writes(obj,
    node)`` accepts for its node (checked on the object before and after the write).
    ``user_writes_status`` lets the ``user`` role write ``/status`` of its own objects too; by default
    it may not, since a status is what the system reports (a job's phase, its outputs' digests) and
    an owner who could write it could claim anything.
    """

    roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: dict(_BASE_ROLES))
    user_verbs: frozenset[str] = frozenset()
    user_reads: Callable[[Obj, UnixAccount], bool] | None = None
    node_verbs: frozenset[str] = frozenset()
    node_writes: Callable[[Obj, str], bool] | None = None
    user_writes_status: bool = False
    #: A ``user`` the admin lets act for named users (``auth.delegation``) may own objects of this
    #: kind on their behalf (SlurmJobs: a portal submitting for its users).
    delegable: bool = False

    def user_may(self, verb: str) -> bool:
        return verb in self.user_verbs or (verb in READ and self.user_reads is not None)

    def node_may(self, verb: str) -> bool:
        return verb in self.node_verbs and self.node_writes is not None


def base_roles(**role_verbs: frozenset[str]) -> dict[str, frozenset[str]]:
    """Admin everything, viewer and workload-manager read; ``role_verbs`` (``workload_manager=...``) adds."""
    roles = dict(_BASE_ROLES)
    for role, verbs in role_verbs.items():
        name = role.replace("_", "-")
        roles[name] = roles.get(name, frozenset()) | verbs
    return roles


def default_policy(**role_verbs: frozenset[str]) -> AccessPolicy:
    """The policy of :func:`base_roles`, with nothing for the ``user`` and ``node-agent`` roles."""
    return AccessPolicy(roles=base_roles(**role_verbs))


class Reach(Enum):
    """How far a granted verb reaches: every object, the caller's own (and readable) ones, or the
    objects of the caller's node."""

    ALL = "all"
    OWN = "own"
    NODE = "node"


class Scope(Protocol):
    """The objects a request may touch when its verb does not reach every object of the kind."""

    @property
    def user(self) -> str:
        """The caller's user name, for Forbidden messages."""
        ...

    def may_read(self, obj: Obj) -> bool: ...

    def may_write(self, obj: Obj) -> bool:
        """Whether the caller may change or delete ``obj`` (checked before and after an update)."""
        ...

    def may_create(self, obj: Obj) -> bool: ...

    def stamp(self, obj: Obj) -> None:
        """Mark a new object as created in this scope; raise an ApiError to refuse it."""
        ...


@dataclass(frozen=True)
class OwnerScope:
    """What a ``user``-role request may touch: objects owned by ``account`` (and readable ones), and,
    on a delegable kind, those of the accounts in ``acts_for`` (login → account) as if its own."""

    account: UnixAccount
    policy: AccessPolicy
    acts_for: Mapping[str, UnixAccount] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.account.login

    def may_create(self, obj: Obj) -> bool:
        return True  # the new object becomes the caller's, or a delegator's (``stamp``)

    def owns(self, obj: Obj) -> bool:
        uid = owner_uid(obj)
        return uid == self.account.uid or any(uid == a.uid for a in self.acts_for.values())

    def may_read(self, obj: Obj) -> bool:
        if self.owns(obj):
            return "get" in self.policy.user_verbs or self.policy.user_reads is not None
        return self.policy.user_reads is not None and self.policy.user_reads(obj, self.account)

    def may_write(self, obj: Obj) -> bool:
        return self.owns(obj)

    def stamp(self, obj: Obj) -> None:
        """Mark a new object as the account's; a different owner in the request is refused, unless it
        is one the caller acts for (named by login; the server sets the uid)."""
        claimed_uid, claimed_login = owner_uid(obj), owner_login(obj)
        delegator = self.acts_for.get(claimed_login or "")
        if delegator is not None and claimed_uid in (None, delegator.uid):
            set_owner(obj, delegator)
            return
        raw_uid = ((obj.get("metadata") or {}).get("labels") or {}).get(OWNER_UID_LABEL)
        if (raw_uid is not None and claimed_uid != self.account.uid) or claimed_login not in (
            None,
            self.account.login,
        ):
            raise owner_forbidden()
        set_owner(obj, self.account)


@dataclass(frozen=True)
class NodeScope:
    """What a ``node-agent`` request may write: the objects the kind assigns to ``node``."""

    node: str
    user: str
    policy: AccessPolicy

    def may_read(self, obj: Obj) -> bool:
        return self.may_write(obj)

    def may_write(self, obj: Obj) -> bool:
        return self.policy.node_writes is not None and self.policy.node_writes(obj, self.node)

    def may_create(self, obj: Obj) -> bool:
        return self.may_write(obj)

    def stamp(self, obj: Obj) -> None:
        """Node agents leave no mark (the object's name or fields say which node it is for), and may
        not set a user's owner marks, which would make the object that user's to read."""
        m = obj.get("metadata") or {}
        if OWNER_UID_LABEL in (m.get("labels") or {}) or OWNER_ANNOTATION in (m.get("annotations") or {}):
            raise owner_forbidden()


def set_owner(obj: Obj, account: UnixAccount) -> None:
    m = obj.setdefault("metadata", {})
    m["labels"] = {**(m.get("labels") or {}), OWNER_UID_LABEL: str(account.uid)}
    m["annotations"] = {**(m.get("annotations") or {}), OWNER_ANNOTATION: account.login}


def keep_owner(new: Obj, old: Obj, *, may_change: bool) -> None:
    """Owner marks survive writes that leave them out; only ``may_change`` callers may alter them."""
    for section, key in (("labels", OWNER_UID_LABEL), ("annotations", OWNER_ANNOTATION)):
        old_value = ((old.get("metadata") or {}).get(section) or {}).get(key)
        m = new.setdefault("metadata", {})
        values = m.get(section)
        new_value = values.get(key) if isinstance(values, dict) else None
        if new_value == old_value:
            continue
        if new_value is None and old_value is not None:
            m[section] = {**(values if isinstance(values, dict) else {}), key: old_value}
            continue
        if not may_change:
            raise owner_forbidden()


def decide(policy: AccessPolicy, roles: list[str], verb: str) -> Reach | None:
    """Whether any of ``roles`` grants ``verb`` on the kind, and over which objects."""
    if any(verb in policy.roles.get(role, ()) for role in roles):
        return Reach.ALL
    if "user" in roles and policy.user_may(verb):
        return Reach.OWN
    if NODE_AGENT in roles and policy.node_may(verb):
        return Reach.NODE
    return None


def owner_forbidden() -> errors.ApiError:
    return errors.ApiError(
        403,
        "Forbidden",
        f"metadata: Forbidden: the owner ({json.dumps(OWNER_UID_LABEL)} label and "
        f"{json.dumps(OWNER_ANNOTATION)} annotation) is set by the server from the credential that "
        "creates the object and cannot be set or changed by a user or a node agent",
    )
