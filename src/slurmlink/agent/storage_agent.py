"""The storage node agent: registers the node's DWS ``Storage``, keeps its status, heartbeats.

An API client with its node's ``node-agent`` credentials (user ``system:node:<node>``), which may
write only the Storage named after the node and the node's heartbeat Lease. It

* makes the device ready as the node's pool (:mod:`slurmlink.agent.device`) and measures it;
* registers ``Storage default/<node>``: created if missing with ``spec.state: Enabled`` and
  ``spec.mode: Live``; later only its metadata (label ``dataworkflowservices.github.io/storage=
  slurmlink``, the node's address and pool directory as annotations) and ``/status`` are written, so
  an admin's ``spec.state: Disabled`` (a drain) is never undone. The status: capacity (bytes),
  devices, and ``status.status`` — ``Ready``, ``Disabled`` while drained, ``Failed`` (with the reason
  in ``message``) while the device is unusable;
* renews the Lease ``slurmlink-node-lease/<node>`` every ``heartbeat_interval`` (10 s, as the
  kubelet's node lease): the storage heartbeat controller marks the Storage ``Offline`` when renewals
  stop and ``Ready`` again when they resume. The agent leaves that ``Offline`` alone once running
  (it is the controller's call), but its first write after a start says what it finds;
* watches its Storage (a drain, a status someone else wrote) and re-checks the device every
  ``device_interval``, repairing what it can (a detached loop device, an unmounted pool) — every
  step idempotent, so a restart after ``kill -9`` at any point converges on the same objects.

While the API is unreachable it retries with back-off (0.5 s doubling to 10 s) and logs it once per
outage; credentials the API refuses (401/403) stop it with the server's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from slurmlink.agent.allocations import AllocationManager, PoolInfo
from slurmlink.agent.device import DeviceConfig, DeviceError, DeviceState, prepare
from slurmlink.agent.movements import MovementManager
from slurmlink.client.base import Client, get_or_none
from slurmlink.client.http import UnreachableError
from slurmlink.client.informer import SharedInformer
from slurmlink.resources import errors
from slurmlink.resources.coordination import LEASE, NODE_LEASE_NAMESPACE
from slurmlink.resources.dws.storage import (
    ADDRESS_ANNOTATION,
    DRAIN_REASON_ANNOTATION,
    POOL_DIR_ANNOTATION,
    STORAGE,
    STORAGE_NAMESPACE,
    STORAGE_TYPE_LABEL,
)
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import now_micro
from slurmlink.resources.storage.capacity import AGENT_STORAGE_TYPE

log = logging.getLogger("slurmlink.agent")

DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_LEASE_DURATION = 40
#: Back-off while the API is unreachable: first delay and cap.
RETRY_DELAYS = (0.5, 10.0)
#: What NNF writes in a disabled Storage's message.
DISABLED_MESSAGE = "Storage node manually disabled"
OFFLINE = "Offline"


class AgentError(RuntimeError):
    """The agent cannot go on (refused credentials, unusable device at start); the message says why."""


@dataclass(frozen=True)
class AgentSettings:
    node: str
    #: The node's address as other nodes reach it (annotation ``slurmlink.io/address``).
    address: str
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    lease_duration: int = DEFAULT_LEASE_DURATION
    #: Seconds between checks of the device (re-measure, repair).
    device_interval: float = DEFAULT_HEARTBEAT_INTERVAL


def default_address(server_url: str) -> str:
    """The address this host uses towards the API server (no packet is sent): on a cluster node, its
    address on the cluster network. Falls back to what the host name resolves to."""
    parts = urlsplit(server_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    with contextlib.suppress(OSError):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return host


def _refused(exc: errors.ApiError) -> bool:
    return exc.code in (401, 403)


class NodeAgent:
    """What every node agent does: heartbeat the node's Lease, retry the API with back-off."""

    def __init__(self, client: Client, settings: AgentSettings, *, server: str = "") -> None:
        self.client = client
        self.settings = settings
        self.server = server
        self._lease: Obj | None = None
        self._unreachable_since: float | None = None
        self._next_retry = RETRY_DELAYS[0]

    @property
    def node(self) -> str:
        return self.settings.node

    async def heartbeat(self) -> None:
        """Renew (or create) the node's Lease."""
        for _attempt in range(3):
            now = now_micro()
            lease = self._lease
            if lease is None:
                try:
                    lease = await self.client.get(LEASE, NODE_LEASE_NAMESPACE, self.node)
                except errors.ApiError as exc:
                    if exc.code != 404:
                        raise
                    body = {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self.node, "namespace": NODE_LEASE_NAMESPACE},
                        "spec": {
                            "holderIdentity": self.node,
                            "leaseDurationSeconds": self.settings.lease_duration,
                            "acquireTime": now,
                            "renewTime": now,
                        },
                    }
                    try:
                        self._lease = await self.client.create(LEASE, body)
                        return
                    except errors.ApiError as exc2:
                        if exc2.code != 409:
                            raise
                        continue
            spec = dict(lease.get("spec") or {})
            spec.update(
                holderIdentity=self.node,
                leaseDurationSeconds=self.settings.lease_duration,
                renewTime=now,
            )
            try:
                self._lease = await self.client.update(LEASE, {**lease, "spec": spec})
                return
            except errors.ApiError as exc:
                if exc.code not in (404, 409):
                    raise
                self._lease = None  # changed or deleted by someone else: read it again
        raise errors.ApiError(409, "Conflict", f"could not renew Lease {NODE_LEASE_NAMESPACE}/{self.node}")

    # ---- reachability --------------------------------------------------------------------------

    def _failed(self, exc: errors.ApiError, doing: str) -> float:
        """Log a failed API call (once per outage when unreachable); the delay before retrying."""
        if _refused(exc):
            raise AgentError(
                f"the API refused node {self.node}'s agent while {doing}: {exc.message} (check the "
                f"kubeconfig: it must be a node-agent credential for node {self.node})"
            )
        delay = self._next_retry
        self._next_retry = min(delay * 2, RETRY_DELAYS[1])
        if isinstance(exc, UnreachableError):
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                log.warning("%s; retrying with back-off (every %g s at most)", exc.message, RETRY_DELAYS[1])
            else:
                log.debug("%s; retrying in %g s", exc.message, delay)
        else:
            log.warning("node %s: %s failed: %s; retrying in %g s", self.node, doing, exc.message, delay)
        return delay

    def _succeeded(self) -> None:
        if self._unreachable_since is not None:
            down = time.monotonic() - self._unreachable_since
            log.info("the slurmlink API at %s is reachable again (after %.0f s)", self.server, down)
        self._unreachable_since = None
        self._next_retry = RETRY_DELAYS[0]

    @staticmethod
    async def _sleep(stop: asyncio.Event, delay: float) -> None:
        await _wait_any((stop,), delay)


class StorageAgent(NodeAgent):
    """One storage node's agent; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        client: Client,
        device: DeviceConfig,
        settings: AgentSettings,
        *,
        server: str = "",
        prepare_device: Callable[[DeviceConfig, Callable[[str], None]], DeviceState] = prepare,
        allocations: bool = True,
    ) -> None:
        super().__init__(client, settings, server=server)
        self.device = device
        self._prepare_device = prepare_device
        self.state: DeviceState | None = None
        self.device_error: str | None = None
        self.storage = SharedInformer(client, STORAGE, STORAGE_NAMESPACE, retry_delay=RETRY_DELAYS[0])
        self._wake = asyncio.Event()
        #: The first status write after a start reports what the agent finds, even over "Offline".
        self._fresh = True
        #: Makes and destroys the node's StorageAllocations (None: not asked to, ``allocations=False``).
        self.allocations: AllocationManager | None = (
            AllocationManager(client, settings.node, self.pool_info, retry_delay=RETRY_DELAYS[0])
            if allocations
            else None
        )
        #: Runs the node's DataMovements (stage-in and stage-out) on those allocations' file systems.
        self.movements: MovementManager | None = (
            MovementManager(
                client,
                settings.node,
                self.allocations.informer,
                device.state_dir,
                retry_delay=RETRY_DELAYS[0],
            )
            if self.allocations is not None
            else None
        )

    # ---- the device ----------------------------------------------------------------------------

    async def check_device(self) -> None:
        try:
            state = await asyncio.to_thread(self._prepare_device, self.device, log.info)
        except DeviceError as exc:
            if self.device_error != str(exc):
                log.error("node %s: device unusable: %s", self.node, exc)
            self.device_error = str(exc)
            return
        if self.device_error is not None:
            log.info("node %s: device usable again", self.node)
        self.device_error = None
        if self.state is None or self.state.capacity != state.capacity:
            log.info("node %s: pool %s ready, capacity %d bytes", self.node, state.pool_dir, state.capacity)
        self.state = state

    def pool_info(self) -> PoolInfo | None:
        """The pool for the allocations; None while the device is unusable."""
        state = self.state
        if state is None or self.device_error is not None:
            return None
        return PoolInfo(str(state.pool_dir), self.settings.address, state.device, state.fs_uuid)

    # ---- desired objects -----------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        annotations = {ADDRESS_ANNOTATION: self.settings.address}
        pool = self.state.pool_dir if self.state is not None else self.device.pool_dir
        annotations[POOL_DIR_ANNOTATION] = str(pool)
        return {"labels": {STORAGE_TYPE_LABEL: AGENT_STORAGE_TYPE}, "annotations": annotations}

    def desired_status(self, current: Obj | None) -> dict[str, Any]:
        """The status to report, given the stored object."""
        spec = (current or {}).get("spec") or {}
        stored = (current or {}).get("status") or {}
        status: dict[str, Any] = dict(stored)
        state = self.state
        status["capacity"] = state.capacity if state is not None else int(stored.get("capacity") or 0)
        if state is not None:
            status["devices"] = state.devices
        status.pop("message", None)
        if self.device_error is not None:
            status["status"] = "Failed"
            status["message"] = self.device_error
            status["devices"] = [{**d, "status": "Failed"} for d in status.get("devices") or []]
        elif spec.get("state") == "Disabled":
            status["status"] = "Disabled"
            annotations = ((current or {}).get("metadata") or {}).get("annotations") or {}
            reason = annotations.get(DRAIN_REASON_ANNOTATION)
            status["message"] = f"{DISABLED_MESSAGE}: {reason}" if reason else DISABLED_MESSAGE
        else:
            status["status"] = "Ready"
        if not self._fresh and stored.get("status") == OFFLINE and self.device_error is None:
            # The heartbeat controller's mark: it lifts it when it sees the Lease renewed.
            status["status"] = OFFLINE
            if "message" in stored:
                status["message"] = stored["message"]
        return status

    def _metadata_differs(self, current: Obj) -> bool:
        m = current.get("metadata") or {}
        want = self.metadata()
        return any(
            (m.get(section) or {}).get(key) != value
            for section in ("labels", "annotations")
            for key, value in want[section].items()
        )

    # ---- API writes ----------------------------------------------------------------------------

    async def sync_storage(self, current: Obj | None) -> Obj:
        """Create the Storage if missing, fix its metadata, report the status; the stored object."""
        if current is None:
            body = {
                "apiVersion": STORAGE.api_version(STORAGE.storage_version),
                "kind": STORAGE.kind,
                "metadata": {"name": self.node, "namespace": STORAGE_NAMESPACE, **self.metadata()},
                "spec": {"state": "Enabled", "mode": "Live"},
            }
            try:
                current = await self.client.create(STORAGE, body)
                log.info("node %s: registered Storage %s/%s", self.node, STORAGE_NAMESPACE, self.node)
            except errors.ApiError as exc:
                if exc.code != 409:
                    raise
                current = await self.client.get(STORAGE, STORAGE_NAMESPACE, self.node)
        elif self._metadata_differs(current):
            current = await self.client.patch(
                STORAGE, STORAGE_NAMESPACE, self.node, {"metadata": self.metadata()}
            )
        for attempt in range(2):
            status = self.desired_status(current)
            if status == current.get("status"):
                break
            before = (current.get("status") or {}).get("status")
            try:
                current = await self.client.update_status(STORAGE, {**current, "status": status})
            except errors.ApiError as exc:
                if exc.code != 409 or attempt:
                    raise
                # Changed meanwhile (a drain, the heartbeat controller): decide again on the new one.
                current = await self.client.get(STORAGE, STORAGE_NAMESPACE, self.node)
                continue
            if before != status.get("status"):
                log.info("node %s: Storage status %s -> %s", self.node, before, status.get("status"))
            break
        self._fresh = False
        self.storage.put(current)
        return current

    # ---- main loop -----------------------------------------------------------------------------

    def _on_storage(self, _type: str, new: Obj | None, old: Obj | None) -> None:
        for obj in (new, old):
            if obj is not None and (obj.get("metadata") or {}).get("name") == self.node:
                self._wake.set()
                return

    async def run(self, stop: asyncio.Event) -> None:
        """Prepare the device, register, then heartbeat and keep the Storage until ``stop``."""
        await self.check_device()
        if self.state is None:
            raise AgentError(f"node {self.node}: {self.device_error}")
        # Register before anything else, retrying while the API is unreachable.
        while not stop.is_set():
            try:
                await self.heartbeat()  # first: the controller sees a live node before its status
                current = await self._get_storage()
                await self.sync_storage(current)
                self._succeeded()
                break
            except errors.ApiError as exc:
                await self._sleep(stop, self._failed(exc, "registering its Storage"))
        if stop.is_set():
            return
        self.storage.add_handler(self._on_storage)
        self.storage.start()
        loop_task = asyncio.create_task(self._loop(stop), name="storage-agent")
        # The heartbeat goes on while the allocations are restored (which may take a while).
        start_task = (
            asyncio.create_task(self.allocations.start(stop), name="allocations-start")
            if self.allocations is not None
            else None
        )
        if self.movements is not None:
            await self.movements.start()
        try:
            await loop_task
        finally:
            if self.movements is not None:
                await self.movements.stop()
            for task in (loop_task, start_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self.allocations is not None:
                await self.allocations.stop()
            await self.storage.stop()

    async def _get_storage(self) -> Obj | None:
        return await get_or_none(self.client, STORAGE, STORAGE_NAMESPACE, self.node)

    async def _loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        next_check = time.monotonic() + self.settings.device_interval
        retry_at: float | None = None
        while not stop.is_set():
            self._wake.clear()  # before reading the cache: a change from here on wakes the next round
            now = time.monotonic()
            if now >= next_check:
                await self.check_device()
                next_check = now + self.settings.device_interval
            try:
                if now >= next_beat or retry_at is not None:
                    await self.heartbeat()
                    next_beat = time.monotonic() + interval
                if self.storage.synced.is_set():
                    await self.sync_storage(self.storage.get(STORAGE_NAMESPACE, self.node))
                self._succeeded()
                retry_at = None
            except errors.ApiError as exc:
                delay = self._failed(exc, "renewing its heartbeat and status")
                retry_at = time.monotonic() + delay
            wake_at = min(next_beat, next_check, retry_at or next_beat)
            await _wait_any((self._wake, stop), max(0.0, wake_at - time.monotonic()))


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of ``events`` is set or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
