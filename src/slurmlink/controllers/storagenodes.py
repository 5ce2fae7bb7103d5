"""The storage heartbeat controller: a storage node whose agent stopped is marked ``Offline``.

Each node agent renews a ``coordination.k8s.io/v1`` Lease named after its node in
``slurmlink-node-lease`` (Kubernetes' node-lease pattern: the kubelet renews ``kube-node-lease/<node>``
and the node lifecycle controller watches it). This controller watches those Leases and the
``Storage`` objects the agents register (label ``dataworkflowservices.github.io/storage=slurmlink``):

* a Storage whose Lease this process has not seen renewed for ``timeout`` seconds (default 40, as
  kube-controller-manager's ``--node-monitor-grace-period``) gets ``status.status: Offline`` with a
  message saying since when, so placement leaves it out and the pools' free capacity drops;
* an ``Offline`` Storage whose Lease is renewed again gets ``Ready`` back (``Disabled`` if the admin
  drained it meanwhile); its agent then keeps the status as usual.

Freshness is judged on this process's monotonic clock: a renewal counts when this process observes
``spec.renewTime`` change, never by comparing the agent's wall clock with ours (as the leader election
and Kubernetes' node lifecycle controller do). So after this process starts (or takes the lead) every
node gets a full ``timeout`` of grace before it can be marked Offline, and a node already Offline
comes back only on a renewal observed here, not on first sight of an old Lease. Before marking a node
Offline the Lease is read live, so a renewal whose watch event is still in flight is not missed.

``Offline`` is the DWS ``ResourceStatus`` for "not reachable" (NNF marks Storage of a Rabbit that
stopped answering that way); ``Failed`` is left to the agent for a device it cannot use, and
``Disabled`` to an admin's drain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from slurmlink.client.base import Client
from slurmlink.client.informer import object_key, resource_version
from slurmlink.controllers.runtime import Key, Reconciler, Result, Watch, watches
from slurmlink.resources import errors
from slurmlink.resources.coordination import LEASE, NODE_LEASE_NAMESPACE
from slurmlink.resources.dws.storage import STORAGE, STORAGE_NAMESPACE, STORAGE_TYPE_LABEL
from slurmlink.resources.kind import Obj
from slurmlink.resources.storage.capacity import AGENT_STORAGE_TYPE

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TIMEOUT = 40.0
OFFLINE = "Offline"
#: Requeue slightly after the moment a node would go stale, so the check finds it stale.
_MARGIN = 0.05


@dataclass
class _Observed:
    """What this process last saw of one node's Lease, on its own monotonic clock."""

    revision: int
    renew_time: str | None
    #: When the Lease was first seen or last seen renewed: the start of the node's grace.
    seen_at: float
    #: When a renewal (a change of ``renewTime``) was last observed; None if only seen so far.
    renewed_at: float | None = None


def _renew_time(lease: Obj) -> str | None:
    value = (lease.get("spec") or {}).get("renewTime")
    return str(value) if value else None


class StorageHeartbeatReconciler(Reconciler):
    name = "storage-heartbeat"
    kind = STORAGE
    namespace = STORAGE_NAMESPACE
    label_selector = f"{STORAGE_TYPE_LABEL}={AGENT_STORAGE_TYPE}"

    def __init__(self, timeout: float = DEFAULT_HEARTBEAT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"the heartbeat timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._leases: dict[str, _Observed] = {}
        #: When a Storage without any Lease was first seen.
        self._first_seen: dict[str, float] = {}

    def secondary(self) -> Sequence[Watch]:
        return (watches(LEASE, self._lease_event, namespace=NODE_LEASE_NAMESPACE),)

    # ---- observations ------------------------------------------------------------------------

    def _lease_event(self, lease: Obj) -> Iterable[Key]:
        """Record a Lease as seen (the runner calls this on every event, newest object first)."""
        self.observe(lease)
        return [(STORAGE_NAMESPACE, object_key(lease)[1])]

    def observe(self, lease: Obj, now: float | None = None) -> None:
        name = object_key(lease)[1]
        now = time.monotonic() if now is None else now
        revision, renew = resource_version(lease), _renew_time(lease)
        seen = self._leases.get(name)
        if seen is None:
            self._leases[name] = _Observed(revision, renew, seen_at=now)
        elif revision > seen.revision:
            if renew != seen.renew_time:
                seen.seen_at = seen.renewed_at = now
            seen.revision, seen.renew_time = revision, renew

    def _lease(self, name: str) -> Obj | None:
        return self.informers.informer(LEASE, NODE_LEASE_NAMESPACE).get(NODE_LEASE_NAMESPACE, name)

    def silent_for(self, name: str, now: float) -> float:
        """Seconds since this node's heartbeat was last seen (or its grace began)."""
        seen = self._leases.get(name) if self._lease(name) is not None else None
        since = seen.seen_at if seen is not None else self._first_seen.setdefault(name, now)
        return now - since

    def renewed_recently(self, name: str, now: float) -> bool:
        seen = self._leases.get(name)
        return seen is not None and seen.renewed_at is not None and now - seen.renewed_at <= self.timeout

    # ---- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, client: Client, obj: Obj) -> Result | None:
        name = object_key(obj)[1]
        status = obj.get("status") or {}
        now = time.monotonic()
        silent = self.silent_for(name, now)
        if silent > self.timeout:
            if status.get("status") == OFFLINE:
                return None  # a renewal (a Lease event) brings it back
            if await self._renewed_meanwhile(client, name):
                return Result(requeue_after=0)
            await self._set(client, obj, OFFLINE, self._offline_message(name, silent))
            log.warning("storage %s: no heartbeat for %.0f s; marked Offline", name, silent)
            return None
        if status.get("status") == OFFLINE and self.renewed_recently(name, now):
            back = "Disabled" if (obj.get("spec") or {}).get("state") == "Disabled" else "Ready"
            await self._set(client, obj, back, None)
            log.info("storage %s: heartbeat resumed; %s again", name, back)
        return Result(requeue_after=self.timeout - silent + _MARGIN)

    async def _renewed_meanwhile(self, client: Client, name: str) -> bool:
        """Read the Lease live: a renewal whose event has not arrived yet is observed now."""
        try:
            lease = await client.get(LEASE, NODE_LEASE_NAMESPACE, name)
        except errors.ApiError as exc:
            if exc.code == 404:
                return False
            raise
        seen = self._leases.get(name)
        if seen is None or (
            resource_version(lease) > seen.revision and _renew_time(lease) != seen.renew_time
        ):
            self._leases.pop(name, None)
            self.observe(lease)  # a Lease new to this process, or renewed: either is a sign of life
            self._leases[name].renewed_at = time.monotonic()
            self.informers.informer(LEASE, NODE_LEASE_NAMESPACE).put(lease)
            return True
        return False

    def _offline_message(self, name: str, silent: float) -> str:
        lease = self._lease(name)
        if lease is None:
            return (
                f"no heartbeat from the node agent: no Lease {NODE_LEASE_NAMESPACE}/{name} for {silent:.0f} s"
            )
        renewed = _renew_time(lease)
        last = f" (last renewal {renewed})" if renewed else ""
        return (
            f"no heartbeat from the node agent for {silent:.0f} s: Lease {NODE_LEASE_NAMESPACE}/{name} "
            f"not renewed{last}"
        )

    @staticmethod
    async def _set(client: Client, obj: Obj, value: str, message: str | None) -> None:
        status = dict(obj.get("status") or {})
        status["status"] = value
        if message is None:
            status.pop("message", None)
        else:
            status["message"] = message
        await client.update_status(STORAGE, {**obj, "status": status})
