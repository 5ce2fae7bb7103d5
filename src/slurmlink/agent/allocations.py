"""The storage agent's burst-buffer work: make, restore and destroy its node's ``StorageAllocation``\\ s.

Placement creates a ``StorageAllocation`` (``slurmlink.io/v1``) per file system and storage node, with
the finalizer ``slurmlink.io/storage-node``; the agent of ``spec.node`` acts on it through the
file-system drivers (:mod:`slurmlink.storage.filesystems`), each call in a thread, at most
``workers`` (4) at a time:

* not deleted and not ``Ready``: ``driver(spec.fsType).create(Allocation(spec.fileSystem,
  spec.capacity, spec.userID, spec.groupID, 0o700), [StorageNode(node, pool_dir, address)])``, then
  ``status: {state: Ready, fileSystem: <the driver's record>}``. A failure (``StorageError``) is
  reported as ``state: Failed`` with the driver's message and retried with back-off (1 s doubling to
  30 s); a later success clears it. What the agent clears by itself on the next try
  (``TransientError``: a glusterd that does not answer yet) is reported as ``state: Pending`` with the
  message instead, so the job's setup waits rather than fails. ``gluster`` allocations are one brick
  each of a volume made together with the other storage nodes' agents (:mod:`slurmlink.agent.gluster`).
* deleted (``deletionTimestamp``) while it still holds the finalizer: ``state: Deleting``, the file
  system is destroyed (the record on the node's disk, else ``status.fileSystem``), then the finalizer
  is removed and the API deletes the object. An ``xfs`` still mounted on a compute node fails with
  "still in use": that message is reported and the delete retried every few seconds.
* at start, before anything else, every ``Ready`` allocation of the node is *restored*
  (``driver.restore``: loop devices re-attached after a reboot; nothing is formatted).

Records are what compute nodes mount from, so the agent adds what they need to find the storage:
``details.device`` for ``xfs`` (the loop device carrying it, checked there by its XFS UUID) and, for
``dir``/``raw``, ``details.poolDevice``/``details.poolUuid`` (the block device of the node's pool, which
a compute node mounts at the same pool directory when it does not see it; see
:mod:`slurmlink.storage.filesystems.dirfs`).

Every driver call is idempotent, so ``kill -9`` at any point and a restart converge: a create cut
short is rolled back and done again, a delete is done again, a finalizer is removed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from slurmlink.agent.gluster import GlusterAllocations
from slurmlink.agent.objects import put_status, remove_finalizer, trigger
from slurmlink.agent.workqueue import WorkQueue
from slurmlink.client.base import Client
from slurmlink.client.informer import SharedInformer
from slurmlink.resources import errors
from slurmlink.resources.kind import Obj
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION, STORAGE_NODE_FINALIZER
from slurmlink.storage.filesystems import (
    Allocation,
    FileSystem,
    RunnerLookup,
    StorageError,
    StorageNode,
    TransientError,
    driver,
    local_runners,
)
from slurmlink.storage.filesystems import loop as loopdev

log = logging.getLogger("slurmlink.agent")

WORKERS = 4
#: Back-off of a failed create (first delay, cap) and of a failed delete ("still in use").
CREATE_RETRY = (1.0, 30.0)
DELETE_RETRY = (1.0, 5.0)
#: While the node's pool is not usable.
POOL_RETRY = 5.0
#: The mode of a new file system's root (the job's directory).
ROOT_MODE = 0o700

Key = tuple[str, str]


@dataclass(frozen=True)
class PoolInfo:
    """The node's pool as the allocations need it."""

    pool_dir: str
    #: The node's address (network file systems).
    address: str | None = None
    #: The block (or loop) device carrying the pool, and its file system's UUID: compute nodes mount it
    #: to see ``dir``/``raw`` buffers. None for a directory pool.
    device: str | None = None
    device_uuid: str | None = None


def allocation_key(obj: Obj) -> Key:
    m = obj.get("metadata") or {}
    return (str(m.get("namespace") or ""), str(m.get("name") or ""))


def failure_status(exc: Exception) -> dict[str, Any]:
    """The status of an allocation whose make or restore raised ``exc``: ``Failed`` ends the job's
    setup, ``Pending`` (a :class:`TransientError`, which the next try clears) keeps it waiting."""
    if isinstance(exc, TransientError):
        return {"state": "Pending", "message": f"{exc}; retrying"}
    return {"state": "Failed", "message": str(exc)}


def with_locator(fs: FileSystem, pool: PoolInfo, runners: RunnerLookup) -> dict[str, Any]:
    """The record to publish in ``status.fileSystem``: the driver's, plus how compute nodes find it."""
    data = fs.to_json()
    details = dict(data.get("details") or {})
    if fs.type == "xfs":
        server = fs.servers[0]
        devices = loopdev.loop_devices(runners(server.name), details["image"])
        if devices:
            details["device"] = devices[0]
    elif fs.type in ("dir", "raw") and pool.device is not None:
        details["poolDevice"] = pool.device
        if pool.device_uuid:
            details["poolUuid"] = pool.device_uuid
    data["details"] = details
    return data


class AllocationManager:
    """Carries out the StorageAllocations of ``node`` (see the module's documentation)."""

    def __init__(
        self,
        client: Client,
        node: str,
        pool: Callable[[], PoolInfo | None],
        *,
        runners: RunnerLookup = local_runners,
        workers: int = WORKERS,
        retry_delay: float = 0.5,
    ) -> None:
        self.client = client
        self.node = node
        self.pool = pool
        self.runners = runners
        self.informer = SharedInformer(client, STORAGE_ALLOCATION, None, retry_delay=retry_delay)
        self.queue = WorkQueue(self._reconcile_key, workers, name="StorageAllocation")
        self._workers = max(1, workers)
        self._failures: dict[Key, int] = {}
        self.gluster = GlusterAllocations(client, node, self.informer, runners, ROOT_MODE)

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self, stop: asyncio.Event) -> bool:
        """List the allocations, restore the Ready ones, then serve; False if ``stop`` came first."""
        self.informer.start()
        while not self.informer.synced.is_set():
            if stop.is_set():
                return False
            waiter = asyncio.ensure_future(self.informer.synced.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        await self.restore_all()
        self.informer.add_handler(self._on_event)  # replays the cache: every allocation is looked at
        self.queue.start()
        return True

    async def stop(self) -> None:
        await self.queue.stop()
        await self.informer.stop()

    def mine(self, obj: Obj | None) -> bool:
        return obj is not None and ((obj.get("spec") or {}).get("node")) == self.node

    def _on_event(self, event: str, new: Obj | None, old: Obj | None) -> None:
        obj = new or old
        if obj is not None and not self.mine(obj):
            # Another node's brick of a gluster set with one here: its state is what ours waits for.
            for partner in self.gluster.partners(obj):
                self.queue.add(allocation_key(partner))
            return
        assert obj is not None
        if event == "MODIFIED" and trigger(new) == trigger(old):
            return  # a status write (ours): nothing to do
        self.queue.add(allocation_key(obj))

    # ---- restore -----------------------------------------------------------------------------------

    async def restore_all(self) -> None:
        """Re-attach every Ready allocation of the node (after a reboot), at most ``workers`` at once."""
        ready = [
            obj
            for obj in self.informer.list()
            if self.mine(obj)
            and not (obj.get("metadata") or {}).get("deletionTimestamp")
            and (obj.get("status") or {}).get("state") == "Ready"
            and (obj.get("status") or {}).get("fileSystem")
        ]
        if not ready:
            return
        limit = asyncio.Semaphore(self._workers)

        async def one(obj: Obj) -> None:
            async with limit:
                await self.restore(obj)

        log.info("node %s: restoring %d allocation(s)", self.node, len(ready))
        await asyncio.gather(*(one(obj) for obj in ready))

    async def restore(self, obj: Obj) -> None:
        status = obj.get("status") or {}
        key = allocation_key(obj)
        pool = self.pool()
        if (obj.get("spec") or {}).get("fsType") == "gluster":
            await self._restore_gluster(obj, pool)
            return
        try:
            fs = FileSystem.from_json(status["fileSystem"])
            drv = driver(fs.type, self.runners)
            await asyncio.to_thread(drv.restore, fs)
            record = (
                await asyncio.to_thread(with_locator, fs, pool, self.runners)
                if pool is not None
                else status["fileSystem"]
            )
        except StorageError as exc:
            log.error("node %s: allocation %s/%s cannot be restored: %s", self.node, *key, exc)
            with contextlib.suppress(errors.ApiError):  # the reconcile reports it again
                await put_status(
                    self.client,
                    STORAGE_ALLOCATION,
                    obj,
                    failure_status(exc),
                    self.informer,
                )
            return
        except Exception as exc:  # a malformed record: say so, the reconcile retries
            log.error("node %s: allocation %s/%s: restoring failed: %s", self.node, *key, exc)
            return
        if record != status.get("fileSystem"):
            try:
                await put_status(
                    self.client,
                    STORAGE_ALLOCATION,
                    obj,
                    {"state": "Ready", "fileSystem": record},
                    self.informer,
                )
            except errors.ApiError as exc:
                log.warning(
                    "node %s: allocation %s/%s restored, but its record could not be written: %s",
                    self.node,
                    *key,
                    exc.message,
                )

    async def _restore_gluster(self, obj: Obj, pool: PoolInfo | None) -> None:
        key = allocation_key(obj)
        if pool is None:
            return  # the reconcile waits for the pool
        try:
            await self.gluster.restore(obj, self._server(pool))
        except StorageError as exc:
            log.error("node %s: allocation %s/%s cannot be restored: %s", self.node, *key, exc)
            with contextlib.suppress(errors.ApiError):  # the reconcile makes it again
                await put_status(
                    self.client,
                    STORAGE_ALLOCATION,
                    obj,
                    failure_status(exc),
                    self.informer,
                )

    def _server(self, pool: PoolInfo) -> StorageNode:
        return StorageNode(self.node, pool.pool_dir, pool.address)

    # ---- reconcile ---------------------------------------------------------------------------------

    def _backoff(self, key: Key, delays: tuple[float, float]) -> float:
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        return float(min(delays[0] * (2**count), delays[1]))

    async def _reconcile_key(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        obj = self.informer.get(*key)
        if obj is None or not self.mine(obj):
            self._failures.pop(key, None)
            return None
        return await self.reconcile(obj)

    async def reconcile(self, obj: Obj) -> float | None:
        meta = obj.get("metadata") or {}
        key = allocation_key(obj)
        if meta.get("deletionTimestamp"):
            if STORAGE_NODE_FINALIZER not in (meta.get("finalizers") or []):
                return None
            return await self._delete(obj)
        if (obj.get("status") or {}).get("state") == "Ready":
            self._failures.pop(key, None)
            return None
        return await self._create(obj)

    async def _create(self, obj: Obj) -> float | None:
        key = allocation_key(obj)
        spec = obj.get("spec") or {}
        fs_type = str(spec.get("fsType") or "")
        pool = self.pool()
        if pool is None:
            message = f"the pool of storage node {self.node} is not usable (see its Storage status)"
            await put_status(
                self.client, STORAGE_ALLOCATION, obj, {"state": "Pending", "message": message}, self.informer
            )
            return POOL_RETRY
        if fs_type == "gluster":
            return await self._create_gluster(obj, pool)
        try:
            allocation = Allocation(
                str(spec.get("fileSystem")),
                int(spec["capacity"]),
                int(spec["userID"]),
                int(spec["groupID"]),
                mode=ROOT_MODE,
            )
            drv = driver(fs_type, self.runners)
            server = StorageNode(self.node, pool.pool_dir, pool.address)
            log.info("node %s: creating %s file system %s (%s/%s)", self.node, fs_type, allocation.name, *key)
            fs = await asyncio.to_thread(drv.create, allocation, [server])
            record = await asyncio.to_thread(with_locator, fs, pool, self.runners)
        except StorageError as exc:
            return await self._create_failed(obj, exc)
        await put_status(
            self.client, STORAGE_ALLOCATION, obj, {"state": "Ready", "fileSystem": record}, self.informer
        )
        if self._failures.pop(key, None):
            log.info("node %s: allocation %s/%s is Ready after all", self.node, *key)
        else:
            log.info("node %s: allocation %s/%s Ready", self.node, *key)
        return None

    async def _create_failed(self, obj: Obj, exc: Exception) -> float:
        """Report a failed create and when to try again. What this agent clears by itself on the next
        try (:class:`TransientError`) is reported as ``Pending``: the job's setup waits for it."""
        key = allocation_key(obj)
        delay = self._backoff(key, CREATE_RETRY)
        log.warning("node %s: allocation %s/%s failed: %s; retrying in %g s", self.node, *key, exc, delay)
        await put_status(self.client, STORAGE_ALLOCATION, obj, failure_status(exc), self.informer)
        return delay

    async def _create_gluster(self, obj: Obj, pool: PoolInfo) -> float | None:
        key = allocation_key(obj)
        try:
            delay = await self.gluster.create(obj, self._server(pool))
        except (StorageError, KeyError, ValueError) as exc:
            return await self._create_failed(obj, exc)
        if delay is None:
            self._failures.pop(key, None)
        return delay

    async def _delete(self, obj: Obj) -> float | None:
        key = allocation_key(obj)
        spec = obj.get("spec") or {}
        status = dict(obj.get("status") or {})
        fs_type = str(spec.get("fsType") or "")
        pool = self.pool()
        if pool is None:
            return POOL_RETRY
        if status.get("state") != "Deleting":
            status = {**status, "state": "Deleting"}
            status.pop("message", None)
            updated = await put_status(self.client, STORAGE_ALLOCATION, obj, status, self.informer)
            if updated is None:
                return None
            obj = updated
        if fs_type == "gluster":
            try:
                waiting = await self.gluster.delete(obj, self._server(pool))
            except StorageError as exc:
                waiting = str(exc)
                delay = self._backoff(key, DELETE_RETRY)
            else:
                delay = DELETE_RETRY[1]
            if waiting is not None:
                if status.get("message") != waiting:
                    log.info("node %s: deleting allocation %s/%s: %s", self.node, *key, waiting)
                await put_status(
                    self.client,
                    STORAGE_ALLOCATION,
                    obj,
                    {**status, "state": "Deleting", "message": waiting},
                    self.informer,
                )
                return delay
        else:
            try:
                await asyncio.to_thread(self._destroy, spec, status, pool)
            except StorageError as exc:
                delay = self._backoff(key, DELETE_RETRY)
                if status.get("message") != str(exc):
                    log.warning(
                        "node %s: deleting allocation %s/%s: %s; retrying every %g s",
                        self.node,
                        *key,
                        exc,
                        DELETE_RETRY[1],
                    )
                await put_status(
                    self.client,
                    STORAGE_ALLOCATION,
                    obj,
                    {**status, "state": "Deleting", "message": str(exc)},
                    self.informer,
                )
                return delay
        await remove_finalizer(self.client, STORAGE_ALLOCATION, obj, STORAGE_NODE_FINALIZER, self.informer)
        self._failures.pop(key, None)
        log.info("node %s: allocation %s/%s destroyed", self.node, *key)
        return None

    def _destroy(self, spec: dict[str, Any], status: dict[str, Any], pool: PoolInfo) -> None:
        """Delete the allocation's file system: from the record on disk, else the published one."""
        name = str(spec.get("fileSystem") or "")
        fs: FileSystem | None = None
        server = StorageNode(self.node, pool.pool_dir, pool.address)
        try:
            Allocation(name, 1, 0, 0)  # a valid name, so a path below the pool
        except StorageError:
            return  # never created: its name was refused
        fs = driver("dir", self.runners).read_record(server, name)  # any driver reads records
        if fs is None and status.get("fileSystem"):
            fs = FileSystem.from_json(status["fileSystem"])
        if fs is None:
            return
        driver(fs.type, self.runners).delete(fs)
