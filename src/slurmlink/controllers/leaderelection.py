"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's ``leaderelection`` semantics.

A candidate takes the Lease when it is absent, released (no holder) or expired. Expiry is judged
on the candidate's own monotonic clock: a record that has not changed for ``leaseDurationSeconds``
since this process last saw it change is expired, so clocks of different hosts never need to
agree. The leader renews every ``retry_period``; a renewal round that cannot succeed within
``renew_deadline`` (shorter than the lease) loses leadership, and so does seeing another holder in
the record, so the old leader stops acting before anyone else may start. On clean shutdown the
leader releases the Lease (clears ``holderIdentity``) so a successor need not wait out the lease.

The Lease is also watched through the shared informer, so a change is observed when it happens
rather than at the next poll, and a candidate retries the moment the observed lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slurmlink import jsonutil
from slurmlink.client.base import Client
from slurmlink.client.informer import InformerFactory
from slurmlink.resources import errors
from slurmlink.resources.coordination import LEASE
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import now_micro

log = logging.getLogger(__name__)

#: The Lease ``serve`` and ``slurmlink controller`` campaign for, in the system namespace.
LEASE_NAME = "slurmlink-controllers"
LEASE_NAMESPACE = "dws-system"
#: Shorter than kube-controller-manager's 15/10/2 s, so that a standby takes over within 15 s of the
#: leader's death (the lease less the time since the last renewal, plus the watch and one write).
LEASE_DURATION = 12.0
RENEW_DEADLINE = 8.0
RETRY_PERIOD = 2.0


def default_identity() -> str:
    """``hostname_pid_uuid``: unique per process, and says where the leader runs."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4()}"


@dataclass(frozen=True)
class LeaderElectionConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")


class LeaderElector:
    """Campaigns for the Lease; ``run`` calls ``on_started`` on winning and ``on_stopped`` on losing."""

    def __init__(
        self, client: Client, config: LeaderElectionConfig, informers: InformerFactory | None = None
    ) -> None:
        self.client = client
        self.config = config
        self._observed: dict[str, Any] | None = None
        self._observed_time = 0.0
        self._changed = asyncio.Event()
        self._leading = False
        self._informer = informers.informer(LEASE, config.namespace) if informers is not None else None

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def observed_holder(self) -> str:
        return str((self._observed or {}).get("holderIdentity") or "")

    # ---- the loop ------------------------------------------------------------------------------

    async def run(
        self,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
    ) -> None:
        """Campaign, lead, and campaign again after losing, until cancelled (then release)."""
        if self._informer is not None:
            self._informer.add_handler(self._on_event)
            self._informer.start()
        try:
            while True:
                await self._acquire()
                self._leading = True
                log.info("%s: became leader (lease %s/%s)", self.config.identity, *self._lease_key)
                try:
                    await on_started()
                    await self._renew()
                finally:
                    self._leading = False
                    await on_stopped()
                log.warning("%s: lost the lease %s/%s", self.config.identity, *self._lease_key)
        finally:
            if self._informer is not None:
                self._informer.remove_handler(self._on_event)
            await asyncio.shield(self._release())

    @property
    def _lease_key(self) -> tuple[str, str]:
        return (self.config.namespace, self.config.name)

    async def _acquire(self) -> None:
        while True:
            if await self._try_acquire_or_renew():
                return
            wait = self.config.retry_period
            if self._held_by_other() and self._informer is not None:
                # The watch reports renewals as they happen: sleep until the lease would expire.
                wait = max(self._until_expiry(), 0.05)
            await self._pause(wait)

    async def _renew(self) -> None:
        """Renew every retry period; return when a round fails for ``renew_deadline`` or another holds."""
        cfg = self.config
        while True:
            await self._pause(cfg.retry_period, stop_on_other_holder=True)
            if self._held_by_other():
                return
            deadline = time.monotonic() + cfg.renew_deadline
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self._try_acquire_or_renew()
                except TimeoutError:
                    return
                if renewed:
                    break
                if self._held_by_other():
                    return
                await self._pause(min(cfg.retry_period, max(0.0, deadline - time.monotonic())))

    async def _pause(self, seconds: float, *, stop_on_other_holder: bool = False) -> None:
        """Sleep ``seconds``, or less when the observed Lease changes in a way that matters."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            if stop_on_other_holder and self._held_by_other():
                return
            if not self._leading and self._until_expiry() <= 0:
                return

    # ---- the record ----------------------------------------------------------------------------

    def _on_event(self, _type: str, new: Obj | None, old: Obj | None) -> None:
        obj = new or old
        if obj is None or (obj["metadata"].get("namespace"), obj["metadata"]["name"]) != self._lease_key:
            return
        if new is None:
            self._observed, self._observed_time = None, time.monotonic()
        else:
            self._observe(new)
        self._changed.set()

    def _observe(self, lease: Obj) -> None:
        spec = dict(lease.get("spec") or {})
        if spec != self._observed:
            self._observed = spec
            self._observed_time = time.monotonic()

    def _held_by_other(self) -> bool:
        holder = self.observed_holder
        return bool(holder) and holder != self.config.identity

    def _until_expiry(self) -> float:
        """Seconds until the observed record expires by our clock (<= 0: free to take)."""
        if not self._held_by_other():
            return 0.0
        duration = (self._observed or {}).get("leaseDurationSeconds") or self.config.lease_duration
        return self._observed_time + float(duration) - time.monotonic()

    async def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = now_micro()
        try:
            lease = await self.client.get(LEASE, cfg.namespace, cfg.name)
        except errors.ApiError as exc:
            if exc.code != 404:
                log.warning("%s: cannot read lease %s/%s: %s", cfg.identity, *self._lease_key, exc.message)
                return False
            return await self._create(now)
        self._observe(lease)
        if self._held_by_other() and self._until_expiry() > 0:
            return False
        spec = dict(lease.get("spec") or {})
        record = {
            **spec,
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": int(cfg.lease_duration),
            "renewTime": now,
        }
        if spec.get("holderIdentity") != cfg.identity or not spec.get("acquireTime"):
            record["acquireTime"] = now
            record["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if spec.get("holderIdentity") != cfg.identity else 0
            )
        updated = jsonutil.clone(lease)
        updated["spec"] = record
        try:
            written = await self.client.update(LEASE, updated)
        except errors.ApiError as exc:
            if exc.code != 409:
                log.warning("%s: cannot update lease: %s", cfg.identity, exc.message)
            return False
        self._observe(written)
        return True

    async def _create(self, now: str) -> bool:
        cfg = self.config
        lease = {
            "apiVersion": LEASE.api_version("v1"),
            "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": int(cfg.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            created = await self.client.create(LEASE, lease)
        except errors.ApiError as exc:
            if exc.code != 409:
                log.warning("%s: cannot create lease: %s", cfg.identity, exc.message)
            return False
        self._observe(created)
        return True

    async def _release(self) -> None:
        """Clear the holder if it is still us, so a successor takes over at once."""
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.renew_deadline):
                lease = await self.client.get(LEASE, cfg.namespace, cfg.name)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != cfg.identity:
                    return
                now = now_micro()
                lease = jsonutil.clone(lease)
                lease["spec"] = {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": int(spec.get("leaseTransitions") or 0),
                }
                await self.client.update(LEASE, lease)
                log.info("%s: released lease %s/%s", cfg.identity, *self._lease_key)
        except (errors.ApiError, TimeoutError) as exc:
            log.warning("%s: could not release lease: %s", cfg.identity, exc)
