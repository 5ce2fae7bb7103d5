"""The storage agent's data movement: runs its node's ``DataMovement``\\ s, as the job's user.

A DataMovement (``slurmlink.io/v1``) names the node whose agent runs it (``spec.node``: the storage
node holding the buffer's file system) and one end inside a buffer (``allocation`` + a path relative
to its file system's root). The agent:

1. waits until that ``StorageAllocation`` is Ready, then mounts its file system at
   ``<staging dir>/<allocation>`` on this node (once per allocation, however many copies use it; the
   file-system drivers' own ``mount``), and reports ``state: Running``;
2. runs the copy in a thread through :func:`slurmlink.mover.run_copy`, which starts a worker process
   with the job's uid and gid (never root) and verifies checksums; progress goes to ``status`` about
   once a second;
3. reports ``Finished`` with ``Success``, ``Failed`` (the mover's message) or ``Cancelled``
   (``spec.cancel``), after unmounting the file system if no other copy still uses it: a compute node
   mounts an ``xfs`` buffer only once nothing else has it mounted.

Each copy keeps a journal of the files it has verified, under ``<state dir>/movements/``. If the agent
dies mid-copy (kill -9), the next one finds the DataMovement still Running, counts a restart and runs
the copy again with the same journal: files already verified are not copied again. A finished copy's
journal is removed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmlink.agent.objects import put_status, trigger
from slurmlink.agent.workqueue import WorkQueue
from slurmlink.client.base import Client
from slurmlink.client.informer import SharedInformer
from slurmlink.identity import supplementary_groups
from slurmlink.mover import CopySpec, MoveCancelled, MoveError, MoveProgress, run_copy
from slurmlink.resources import errors
from slurmlink.resources.kind import Obj
from slurmlink.resources.meta import now_micro
from slurmlink.resources.storage.datamovement import DATA_MOVEMENT, finished
from slurmlink.storage.filesystems import FileSystem, Mount, RunnerLookup, StorageError, driver, local_runners

log = logging.getLogger("slurmlink.agent")

#: Copies one agent runs at once (each has its own worker threads).
WORKERS = 2
#: Seconds between progress writes.
PROGRESS_INTERVAL = 0.5
#: While the allocation is not Ready yet.
WAIT_RETRY = 2.0

Key = tuple[str, str]


def movement_key(obj: Obj) -> Key:
    m = obj.get("metadata") or {}
    return (str(m.get("namespace") or ""), str(m.get("name") or ""))


class StagingMounts:
    """This node's mounts of buffers' file systems for copying, shared by the copies that need them."""

    def __init__(self, root: Path, runners: RunnerLookup, node: str) -> None:
        self.root = root
        self.runners = runners
        self.node = node
        self._users: dict[str, int] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def path(self, allocation: str) -> Path:
        return self.root / allocation

    async def acquire(self, allocation: str, record: dict[str, Any]) -> Path:
        async with self._lock:
            path = self.path(allocation)
            if self._users.get(allocation, 0) == 0:
                await asyncio.to_thread(self._prepare_root)
                fs = FileSystem.from_json(record)
                await asyncio.to_thread(driver(fs.type, self.runners).mount, fs, Mount(self.node, str(path)))
                self._records[allocation] = record
            self._users[allocation] = self._users.get(allocation, 0) + 1
            return path

    async def release(self, allocation: str) -> None:
        async with self._lock:
            count = self._users.get(allocation, 0) - 1
            if count > 0:
                self._users[allocation] = count
                return
            self._users.pop(allocation, None)
            record = self._records.pop(allocation, None)
            if record is None:
                return
            fs = FileSystem.from_json(record)
            path = str(self.path(allocation))
            try:
                await asyncio.to_thread(driver(fs.type, self.runners).unmount, fs, Mount(self.node, path))
            except StorageError as exc:
                log.error("node %s: cannot unmount %s after copying: %s", self.node, path, exc)

    def _prepare_root(self) -> None:
        """The copy runs as the job's user, who must be able to walk down to the mount (not list it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.root.parent, self.root):
            mode = directory.stat().st_mode & 0o7777
            if mode & 0o011 != 0o011:
                os.chmod(directory, mode | 0o011)


class MovementManager:
    """Runs the DataMovements of ``node`` (see the module's documentation)."""

    def __init__(
        self,
        client: Client,
        node: str,
        allocations: SharedInformer,
        state_dir: Path,
        *,
        runners: RunnerLookup = local_runners,
        workers: int = WORKERS,
        retry_delay: float = 0.5,
    ) -> None:
        self.client = client
        self.node = node
        self.allocations = allocations
        self.journals = state_dir / "movements"
        self.mounts = StagingMounts(state_dir / "staging", runners, node)
        self.informer = SharedInformer(client, DATA_MOVEMENT, None, retry_delay=retry_delay)
        self.queue = WorkQueue(self._reconcile_key, workers, name="DataMovement")
        self._cancels: dict[Key, threading.Event] = {}
        self._running: set[Key] = set()
        self._stopping = False

    async def start(self) -> None:
        self.journals.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.informer.add_handler(self._on_event)
        self.informer.start()
        self.allocations.add_handler(self._on_allocation)
        self.queue.start()

    async def stop(self) -> None:
        self._stopping = True
        for cancel in self._cancels.values():
            cancel.set()  # the copies stop; they resume when the agent comes back
        await self.queue.stop()
        await self.informer.stop()

    def mine(self, obj: Obj | None) -> bool:
        return obj is not None and (obj.get("spec") or {}).get("node") == self.node

    def _on_event(self, event: str, new: Obj | None, old: Obj | None) -> None:
        obj = new or old
        if not self.mine(obj):
            return
        assert obj is not None
        key = movement_key(obj)
        gone = new is None or bool((new.get("metadata") or {}).get("deletionTimestamp"))
        cancelled = new is not None and bool((new.get("spec") or {}).get("cancel"))
        if key in self._cancels and (gone or cancelled):
            self._cancels[key].set()  # at once: the worker may be busy with this very copy
        if event == "MODIFIED" and trigger(new) == trigger(old):
            return
        self.queue.add(key)

    def _on_allocation(self, event: str, new: Obj | None, old: Obj | None) -> None:
        obj = new or old
        if obj is None or (obj.get("spec") or {}).get("node") != self.node:
            return
        ns, name = movement_key(obj)
        for movement in self.informer.list(ns):
            if self.mine(movement) and not finished(movement) and _allocation_name(movement) == name:
                self.queue.add(movement_key(movement))

    async def _reconcile_key(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        obj = self.informer.get(*key)
        if obj is None or not self.mine(obj) or finished(obj) or key in self._running:
            if obj is None or (obj is not None and finished(obj)):
                self._forget_journal(key)
            return None
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return None
        return await self._run(obj)

    # ---- one copy ----------------------------------------------------------------------------------

    async def _run(self, obj: Obj) -> float | None:
        key = movement_key(obj)
        spec = obj.get("spec") or {}
        status = dict(obj.get("status") or {})
        if spec.get("cancel"):
            await self._finish(obj, "Cancelled", "cancelled before it started", status)
            return None
        if not self.allocations.synced.is_set():
            return WAIT_RETRY
        name = _allocation_name(obj)
        allocation = self.allocations.get(key[0], name) if name else None
        ready = allocation is not None and (allocation.get("status") or {}).get("state") == "Ready"
        record = (allocation or {}).get("status", {}).get("fileSystem") if ready else None
        if not record:
            message = f"waiting for StorageAllocation {name} to be Ready"
            if status.get("state") != "Running" and status.get("message") != message:
                await self._put(obj, {**status, "state": "Pending", "message": message})
            return WAIT_RETRY
        self._running.add(key)
        cancel = self._cancels.setdefault(key, threading.Event())
        ending: _Ending | None
        try:
            try:
                root = await self.mounts.acquire(str(name), record)
            except (StorageError, KeyError, TypeError, ValueError) as exc:
                ending = _Ending(obj, "Failed", f"cannot mount the buffer on {self.node}: {exc}", status)
            else:
                try:
                    ending = await self._copy(obj, root, cancel, status)
                finally:  # before Finished is reported: the next state may mount it elsewhere
                    await self.mounts.release(str(name))
        finally:
            self._running.discard(key)
            self._cancels.pop(key, None)
        if ending is not None:
            await self._finish(ending.obj, ending.outcome, ending.message, ending.status)
        return None

    async def _copy(
        self, obj: Obj, root: Path, cancel: threading.Event, status: dict[str, Any]
    ) -> _Ending | None:
        """Run the copy; how it ended, or None when the agent is stopping (the next one resumes it)."""
        key = movement_key(obj)
        spec = obj["spec"]
        restarted = status.get("state") == "Running"
        status = {
            **status,
            "state": "Running",
            "message": None,
            "startTime": status.get("startTime") or now_micro(),
            "restarts": int(status.get("restarts") or 0) + (1 if restarted else 0),
        }
        status = {k: v for k, v in status.items() if v is not None}
        obj = await self._put(obj, status) or obj
        loop = asyncio.get_running_loop()
        latest: list[Obj] = [obj]

        reports: list[concurrent.futures.Future[None]] = []

        def report(progress: MoveProgress) -> None:
            reports[:] = [r for r in reports if not r.done()]
            reports.append(asyncio.run_coroutine_threadsafe(self._progress(latest, progress), loop))

        journal = self.journals / f"{obj['metadata'].get('uid') or key[1]}.journal"
        try:
            copy = CopySpec(
                source=_resolve(spec["source"], root),
                destination=_resolve(spec["destination"], root),
                mode=str(spec.get("mode") or "auto"),
                uid=int(spec["userID"]),
                gid=int(spec["groupID"]),
                groups=supplementary_groups(int(spec["userID"]), int(spec["groupID"])),
                buffer_side="destination" if (spec["destination"] or {}).get("allocation") else "source",
                in_place=bool(spec.get("inPlace")),
            )
            log.info("node %s: copy %s/%s: %s -> %s", self.node, *key, copy.source, copy.destination)
            try:
                final = await asyncio.to_thread(
                    run_copy,
                    copy,
                    journal=journal,
                    progress=report,
                    cancel=cancel,
                    interval=PROGRESS_INTERVAL,
                )
            finally:  # the last reports land before the ending is written, never after it
                await asyncio.gather(*(asyncio.wrap_future(r) for r in reports), return_exceptions=True)
        except MoveCancelled:
            if self._stopping:
                return None
            return _Ending(latest[0], "Cancelled", "cancelled", dict(latest[0].get("status") or {}))
        except MoveError as exc:
            log.warning("node %s: copy %s/%s failed: %s", self.node, *key, exc)
            return _Ending(latest[0], "Failed", str(exc), dict(latest[0].get("status") or {}))
        log.info(
            "node %s: copy %s/%s done: %d files (%d skipped), %d bytes in %.1f s",
            self.node,
            *key,
            final.files_done,
            final.files_skipped,
            final.bytes_done,
            final.seconds,
        )
        return _Ending(latest[0], "Success", None, {**(latest[0].get("status") or {}), **final.to_status()})

    async def _progress(self, latest: list[Obj], progress: MoveProgress) -> None:
        obj = latest[0]
        status = {**(obj.get("status") or {}), **progress.to_status()}
        if finished(obj):
            return
        with contextlib.suppress(errors.ApiError):
            updated = await put_status(
                self.client, DATA_MOVEMENT, obj, status, self.informer, still_wanted=unfinished
            )
            if updated is not None:
                latest[0] = updated

    async def _finish(self, obj: Obj, outcome: str, message: str | None, status: dict[str, Any]) -> None:
        final = {**status, "state": "Finished", "status": outcome, "endTime": now_micro()}
        if message:
            final["message"] = message
        else:
            final.pop("message", None)
        await self._put(obj, final)
        self._forget_journal(movement_key(obj), obj)

    async def _put(self, obj: Obj, status: dict[str, Any]) -> Obj | None:
        return await put_status(self.client, DATA_MOVEMENT, obj, status, self.informer)

    def _forget_journal(self, key: Key, obj: Obj | None = None) -> None:
        uid = ((obj or self.informer.get(*key) or {}).get("metadata") or {}).get("uid") or key[1]
        with contextlib.suppress(FileNotFoundError):
            (self.journals / f"{uid}.journal").unlink()


@dataclass(frozen=True)
class _Ending:
    obj: Obj
    outcome: str
    message: str | None
    status: dict[str, Any]


def unfinished(obj: Obj) -> bool:
    """A progress report may still be written over this copy's status."""
    return not finished(obj)


def _allocation_name(obj: Obj) -> str | None:
    spec = obj.get("spec") or {}
    for end in ("source", "destination"):
        ref = (spec.get(end) or {}).get("allocation")
        if isinstance(ref, dict) and ref.get("name"):
            return str(ref["name"])
    return None


def _resolve(endpoint: dict[str, Any], root: Path) -> str:
    """The end's path on this node: inside the mounted buffer, or as given."""
    path = str(endpoint.get("path") or "")
    if not endpoint.get("allocation"):
        return path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:  # the API's users cannot write specs; still, never leave the buffer
        raise MoveError(f"{path}: '..' is not allowed in a path")
    resolved = str(root.joinpath(*parts)) if parts else str(root)
    return resolved + "/" if path.endswith("/") and parts else resolved
