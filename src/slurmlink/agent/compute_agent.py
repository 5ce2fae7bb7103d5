"""The compute node agent (``slurmlink agent --compute``): performs its node's DWS ``ClientMount``\\ s.

Same credentials as a storage agent (role ``node-agent`` for its node), which may write the
ClientMounts whose ``spec.node`` is the node (or in the namespace named after it) and read every
``StorageAllocation``. It heartbeats the node's Lease like a storage agent, so the node shows up, and:

* watches the ClientMounts with ``spec.node`` = its node, and every StorageAllocation (a mount waits
  for its allocation to be ``Ready``, and is retried when it changes);
* ``desiredState: mounted``: for each ``mounts[i]`` (a ``reference`` device naming a
  ``StorageAllocation``), once the allocation is Ready, ``driver(type).mount(FileSystem.from_json(
  status.fileSystem), Mount(node, mountPath))``; ``unmounted``: ``unmount`` of each;
* reports ``status: {allReady, mounts: [{state, ready}], error}`` — ``state`` is the desired state,
  ``ready`` whether it is reached; ``error`` (DWS ``ResourceError``) carries what is waited for
  (``Minor``) or the driver's message (``Major``), and a failed mount or unmount is retried with
  back-off (1 s doubling to 30 s);
* on deletion (``deletionTimestamp``) unmounts everything, then removes its finalizer
  ``slurmlink.io/compute-node``.

Drivers run with :func:`~slurmlink.storage.filesystems.local_runners`: everything happens in the
agent's own namespaces (the compute node's); the storage agent publishes in each record what a compute
node needs to find the storage (see :mod:`slurmlink.agent.allocations`).

The records of what it mounted are kept in ``STATE_DIR/mounts/<ClientMount uid>.json`` until the
ClientMount is gone, so an unmount works even when the allocation was deleted first. Every step is
idempotent: ``kill -9`` and a restart re-mount what should be mounted and finish what was begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from slurmlink.agent.objects import put_status, remove_finalizer, trigger
from slurmlink.agent.storage_agent import AgentError, AgentSettings, NodeAgent, _wait_any
from slurmlink.agent.workqueue import WorkQueue
from slurmlink.burstbuffer.names import COMPUTE_NODE_FINALIZER
from slurmlink.client.base import Client
from slurmlink.client.informer import SharedInformer
from slurmlink.resources import errors
from slurmlink.resources.dws.clientmount import CLIENT_MOUNT
from slurmlink.resources.kind import Obj
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION
from slurmlink.storage.filesystems import (
    FileSystem,
    Mount,
    RunnerLookup,
    StorageError,
    driver,
    local_runners,
)
from slurmlink.storage.filesystems import mounts as nodemounts

log = logging.getLogger("slurmlink.agent")

WORKERS = 4
RETRY = (1.0, 30.0)

Key = tuple[str, str]


def object_key(obj: Obj) -> Key:
    m = obj.get("metadata") or {}
    return (str(m.get("namespace") or ""), str(m.get("name") or ""))


def allocation_ref(mount: dict[str, Any]) -> tuple[str, str] | str:
    """``(namespace, name)`` of the StorageAllocation a mount's device names, or what is wrong."""
    device = mount.get("device") or {}
    ref = ((device.get("deviceReference") or {}).get("objectReference")) or {}
    if device.get("type") != "reference" or ref.get("kind") != STORAGE_ALLOCATION.kind or not ref.get("name"):
        return (
            f"mount {mount.get('mountPath')}: the device must be a reference to a StorageAllocation "
            f"(got {json.dumps(device, sort_keys=True)})"
        )
    return (str(ref.get("namespace") or ""), str(ref["name"]))


class MountRecords:
    """What a ClientMount had mounted, kept on the node: ``DIR/<uid>.json`` = {mountPath: record}."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, uid: str) -> Path:
        return self.directory / f"{uid}.json"

    def read(self, uid: str) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            value = json.loads(self._file(uid).read_text())
            if isinstance(value, dict):
                return value
        return {}

    def put(self, uid: str, path: str, record: dict[str, Any]) -> None:
        records = self.read(uid)
        if records.get(path) == record:
            return
        records[path] = record
        self.directory.mkdir(parents=True, exist_ok=True)
        file = self._file(uid)
        tmp = file.with_name(f".{file.name}.tmp")
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, file)

    def forget(self, uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(uid).unlink()


class ComputeAgent(NodeAgent):
    """One compute node's agent; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        client: Client,
        settings: AgentSettings,
        state_dir: Path,
        *,
        server: str = "",
        runners: RunnerLookup = local_runners,
        workers: int = WORKERS,
    ) -> None:
        super().__init__(client, settings, server=server)
        self.runners = runners
        self.records = MountRecords(state_dir / "mounts")
        self.clientmounts = SharedInformer(client, CLIENT_MOUNT, None, retry_delay=0.5)
        self.allocations = SharedInformer(client, STORAGE_ALLOCATION, None, retry_delay=0.5)
        self.queue = WorkQueue(self._reconcile_key, workers, name="ClientMount")
        self._failures: dict[Key, int] = {}

    # ---- events ------------------------------------------------------------------------------------

    def mine(self, obj: Obj | None) -> bool:
        return obj is not None and (obj.get("spec") or {}).get("node") == self.node

    def _on_clientmount(self, event: str, new: Obj | None, old: Obj | None) -> None:
        obj = new or old
        if not self.mine(obj):
            return
        assert obj is not None
        if event == "MODIFIED" and trigger(new) == trigger(old):
            return  # our own status write
        self.queue.add(object_key(obj))

    def _on_allocation(self, event: str, new: Obj | None, old: Obj | None) -> None:
        if event == "MODIFIED" and (new or {}).get("status") == (old or {}).get("status"):
            return
        ref = object_key(new or old or {})
        for cm in self.clientmounts.list():
            if not self.mine(cm):
                continue
            for mount in (cm.get("spec") or {}).get("mounts") or []:
                if allocation_ref(mount) == ref:
                    self.queue.add(object_key(cm))
                    break

    # ---- reconcile ---------------------------------------------------------------------------------

    async def _reconcile_key(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        obj = self.clientmounts.get(*key)
        if obj is None or not self.mine(obj):
            self._failures.pop(key, None)
            return None
        return await self.reconcile(obj)

    def _backoff(self, key: Key) -> float:
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        return float(min(RETRY[0] * (2**count), RETRY[1]))

    async def reconcile(self, cm: Obj) -> float | None:
        key = object_key(cm)
        meta = cm.get("metadata") or {}
        uid = str(meta.get("uid") or f"{key[0]}_{key[1]}")
        deleting = bool(meta.get("deletionTimestamp"))
        if deleting and COMPUTE_NODE_FINALIZER not in (meta.get("finalizers") or []):
            return None
        spec = cm.get("spec") or {}
        desired = "unmounted" if deleting else str(spec.get("desiredState") or "mounted")
        states: list[dict[str, Any]] = []
        problems: list[tuple[str, str]] = []  # (severity, message)
        failed = False
        for mount in spec.get("mounts") or []:
            path = str(mount.get("mountPath") or "")
            if desired == "mounted":
                ready, problem, severity = await self._mount(uid, mount)
            else:
                ready, problem, severity = await self._unmount(uid, mount)
            states.append({"state": desired, "ready": ready})
            if problem is not None:
                problems.append((severity, f"{path}: {problem}" if path else problem))
                failed = failed or severity == "Major"
        all_ready = all(s["ready"] for s in states)
        status: dict[str, Any] = {"allReady": all_ready, "mounts": states}
        if problems:
            severity = "Major" if any(s == "Major" for s, _ in problems) else "Minor"
            message = "; ".join(m for _, m in problems)
            status["error"] = {
                "type": "Internal",
                "severity": severity,
                "debugMessage": message,
                "userMessage": message,
            }
        if deleting and all_ready:
            # Nothing of it is mounted any more: let it go.
            await put_status(self.client, CLIENT_MOUNT, cm, status, self.clientmounts)
            latest = self.clientmounts.get(*key) or cm
            await remove_finalizer(
                self.client, CLIENT_MOUNT, latest, COMPUTE_NODE_FINALIZER, self.clientmounts
            )
            self.records.forget(uid)
            self._failures.pop(key, None)
            log.info("node %s: ClientMount %s/%s unmounted and released", self.node, *key)
            return None
        before = (cm.get("status") or {}).get("allReady")
        await put_status(self.client, CLIENT_MOUNT, cm, status, self.clientmounts)
        if all_ready:
            if before is not True:
                log.info("node %s: ClientMount %s/%s %s", self.node, *key, desired)
            self._failures.pop(key, None)
            if desired == "unmounted":
                self.records.forget(uid)
            return None
        if failed:
            delay = self._backoff(key)
            log.warning(
                "node %s: ClientMount %s/%s: %s; retrying in %g s",
                self.node,
                *key,
                status["error"]["debugMessage"],
                delay,
            )
            return delay
        return None  # waiting for an allocation: its change wakes us

    async def _mount(self, uid: str, mount: dict[str, Any]) -> tuple[bool, str | None, str]:
        """(ready, problem, severity) of mounting one ``mounts[i]``."""
        ref = allocation_ref(mount)
        if isinstance(ref, str):
            return False, ref, "Major"
        allocation = self.allocations.get(*ref)
        where = f"StorageAllocation {ref[0]}/{ref[1]}"
        if allocation is None:
            return False, f"waiting for {where} (it does not exist)", "Minor"
        status = allocation.get("status") or {}
        state = status.get("state") or "Pending"
        if (allocation.get("metadata") or {}).get("deletionTimestamp"):
            return False, f"{where} is being deleted", "Major"
        if state == "Failed":
            return False, f"{where} failed: {status.get('message') or 'no message'}", "Major"
        if state != "Ready" or not status.get("fileSystem"):
            detail = f": {status['message']}" if status.get("message") else ""
            return False, f"waiting for {where} ({state}{detail})", "Minor"
        path = str(mount.get("mountPath") or "")
        try:
            fs = FileSystem.from_json(status["fileSystem"])
            self.records.put(uid, path, status["fileSystem"])
            await asyncio.to_thread(driver(fs.type, self.runners).mount, fs, Mount(self.node, path))
        except (StorageError, KeyError, TypeError, ValueError) as exc:
            return False, str(exc), "Major"
        return True, None, ""

    async def _unmount(self, uid: str, mount: dict[str, Any]) -> tuple[bool, str | None, str]:
        path = str(mount.get("mountPath") or "")
        record = self.records.read(uid).get(path)
        ref = allocation_ref(mount)
        if record is None and not isinstance(ref, str):
            allocation = self.allocations.get(*ref) or {}
            record = (allocation.get("status") or {}).get("fileSystem")
        try:
            if record is None:
                # Never mounted by this agent as far as it knows: done, unless something is there.
                current = await asyncio.to_thread(nodemounts.mounted_at, self.runners(self.node), path)
                if current is None:
                    return True, None, ""
                return False, f"{current.source} is mounted there, and no record says what it is", "Major"
            fs = FileSystem.from_json(record)
            await asyncio.to_thread(driver(fs.type, self.runners).unmount, fs, Mount(self.node, path))
        except (StorageError, KeyError, TypeError, ValueError) as exc:
            return False, str(exc), "Major"
        return True, None, ""

    # ---- main loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat, and perform the node's ClientMounts, until ``stop``."""
        while not stop.is_set():
            try:
                await self.heartbeat()
                self._succeeded()
                break
            except errors.ApiError as exc:
                await self._sleep(stop, self._failed(exc, "renewing its heartbeat"))
        if stop.is_set():
            return
        log.info("node %s: compute agent running", self.node)
        self.allocations.start()
        self.clientmounts.start()
        try:
            await self._serve(stop)
        finally:
            await self.queue.stop()
            await self.clientmounts.stop()
            await self.allocations.stop()

    async def _serve(self, stop: asyncio.Event) -> None:
        interval = self.settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        serving = False
        while not stop.is_set():
            if not serving and self.allocations.synced.is_set() and self.clientmounts.synced.is_set():
                self.allocations.add_handler(self._on_allocation)
                self.clientmounts.add_handler(self._on_clientmount)
                self.queue.start()
                serving = True
            if time.monotonic() >= next_beat:
                try:
                    await self.heartbeat()
                    self._succeeded()
                    next_beat = time.monotonic() + interval
                except errors.ApiError as exc:
                    next_beat = time.monotonic() + self._failed(exc, "renewing its heartbeat")
            wait = max(0.0, next_beat - time.monotonic())
            await _wait_any((stop,), wait if serving else min(wait, 0.1))


__all__ = ["COMPUTE_NODE_FINALIZER", "AgentError", "ComputeAgent", "MountRecords"]
