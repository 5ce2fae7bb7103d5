"""The storage agents' share of a ``gluster`` buffer: each makes its brick, the first one the volume.

Placement makes one ``StorageAllocation`` per brick (``spec.index`` its position, ``spec.servers`` every
brick's node in order, ``spec.fileSystem`` the volume's name, ``spec.capacity`` the brick's share). A
storage agent acts only on its own node, so the work is split among the agents of ``spec.servers``:

1. Every agent of the set makes its brick on its node (:meth:`GlusterDriver.make_brick`: an XFS of
   its share on a loop device, mounted, the brick directory), makes sure its node's glusterd runs
   (started lazily, the first time the node has gluster work; :class:`Glusterd`) and reports
   ``{state: Pending, message: "brick ready, waiting for the volume ...", brick: {node, address, path,
   poolDir, ...}}``.
2. The agent of the first server (``spec.index == 0``) waits until every allocation of the set has
   published its brick, then probes the others into its glusterd's trusted pool by address, creates
   and starts the volume through its own glusterd (:meth:`GlusterDriver.create_volume`) and reports
   ``Ready`` with the volume's record (the servers' addresses, the volume name, the bricks): what
   compute nodes FUSE-mount. A node already in another pool cannot be probed: its agent probes the
   first server into its pool instead (:meth:`GlusterDriver.join_lead`), once it sees that server's
   address in its published brick.
3. The other agents, seeing the first one ``Ready``, report ``Ready`` with the same record, so "every
   allocation of the set Ready" means the volume can be mounted.

Deleted: the first server's agent stops and deletes the volume (which stops the bricks everywhere),
removes what its glusterd keeps of it and its brick; the others wait until their own glusterd no
longer knows the volume (``Deleting``, "waiting for ... to delete the volume"), then remove theirs.
Each then removes its finalizer. Every step is idempotent, so ``kill -9`` of any agent and a restart
converge; at start a Ready brick is re-attached (loop device, mount) before glusterd is started, which
restarts the bricks of started volumes, and the first server starts any brick process missing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slurmlink.agent.objects import put_status
from slurmlink.client.base import Client
from slurmlink.client.informer import SharedInformer
from slurmlink.resources.kind import Obj
from slurmlink.resources.storage.storageallocation import STORAGE_ALLOCATION
from slurmlink.storage.filesystems import Allocation, RunnerLookup, StorageNode
from slurmlink.storage.filesystems.gluster import GlusterDriver
from slurmlink.storage.filesystems.glusterd import Glusterd

log = logging.getLogger("slurmlink.agent")

#: How often a brick waiting for the volume (or for its deletion) looks again, besides the events of
#: the other allocations of its set, which wake it at once.
WAIT = 5.0
WAITING_FOR_VOLUME = "brick ready, waiting for the volume"
#: Published brick fields that are not the driver's (the lead needs them to name the servers).
_PUBLISHED_ONLY = ("poolDir", "size")


def _spec(obj: Obj) -> dict[str, Any]:
    return obj.get("spec") or {}


def _status(obj: Obj) -> dict[str, Any]:
    return obj.get("status") or {}


def servers_of(obj: Obj) -> list[str]:
    spec = _spec(obj)
    return [str(s) for s in spec.get("servers") or [spec.get("node")]]


class GlusterAllocations:
    """The gluster part of one node's :class:`~slurmlink.agent.allocations.AllocationManager`."""

    def __init__(
        self,
        client: Client,
        node: str,
        informer: SharedInformer,
        runners: RunnerLookup,
        root_mode: int,
    ) -> None:
        self.client = client
        self.node = node
        self.informer = informer
        self.runners = runners
        self.root_mode = root_mode
        self.driver = GlusterDriver(runners)
        self._glusterd_lock = asyncio.Lock()
        self._glusterd_started = False

    # ---- the set --------------------------------------------------------------------------------

    def members(self, obj: Obj) -> list[Obj]:
        """Every allocation of ``obj``'s set (same namespace and volume), ``obj`` included."""
        namespace = (obj.get("metadata") or {}).get("namespace")
        volume = _spec(obj).get("fileSystem")
        return [
            other
            for other in self.informer.list()
            if _spec(other).get("fsType") == "gluster"
            and _spec(other).get("fileSystem") == volume
            and (other.get("metadata") or {}).get("namespace") == namespace
        ]

    def partners(self, obj: Obj) -> list[Obj]:
        """This node's allocations in ``obj``'s set: what a change of ``obj`` (another node's) concerns."""
        if _spec(obj).get("fsType") != "gluster":
            return []
        return [other for other in self.members(obj) if _spec(other).get("node") == self.node]

    def _at(self, members: list[Obj], index: int, node: str) -> Obj | None:
        for other in members:
            spec = _spec(other)
            if spec.get("index") == index and spec.get("node") == node:
                return other
        return None

    # ---- glusterd -------------------------------------------------------------------------------

    async def ensure_glusterd(self, server: StorageNode) -> None:
        """Start the node's glusterd unless it runs (once per agent; later only a health check)."""
        async with self._glusterd_lock:
            glusterd = Glusterd(server, self.runners(server.name))
            if self._glusterd_started and await asyncio.to_thread(glusterd.healthy):
                return
            log.info("node %s: starting glusterd (state in %s)", self.node, glusterd.layout.root)
            await asyncio.to_thread(glusterd.start)
            self._glusterd_started = True

    # ---- create ---------------------------------------------------------------------------------

    def _allocation(self, obj: Obj, capacity: int) -> Allocation:
        spec = _spec(obj)
        return Allocation(
            str(spec.get("fileSystem")),
            capacity,
            int(spec["userID"]),
            int(spec["groupID"]),
            mode=self.root_mode,
        )

    async def make_brick(self, obj: Obj, server: StorageNode) -> dict[str, Any]:
        """This node's brick (made or re-attached) and glusterd running; the brick as published."""
        spec = _spec(obj)
        allocation = self._allocation(obj, int(spec["capacity"]))
        part = await asyncio.to_thread(
            self.driver.make_brick, allocation, server, int(spec.get("index") or 0)
        )
        await self.ensure_glusterd(server)
        return {**part.details["bricks"][0], "poolDir": server.pool_dir, "size": part.details["brickSize"]}

    async def create(self, obj: Obj, server: StorageNode) -> float | None:
        """Make this node's part of the set and report it; a delay to look again, or None when Ready.
        Raises the driver's StorageError."""
        spec = _spec(obj)
        index = int(spec.get("index") or 0)
        servers = servers_of(obj)
        name = str(spec.get("fileSystem"))
        brick = await self.make_brick(obj, server)
        members = self.members(obj)
        if index != 0:
            lead = self._at(members, 0, servers[0])
            lead_status = _status(lead) if lead is not None else {}
            if lead_status.get("state") == "Ready" and lead_status.get("fileSystem"):
                await asyncio.to_thread(self.driver.record_sockets, server, name)
                await self._put(
                    obj, {"state": "Ready", "fileSystem": lead_status["fileSystem"], "brick": brick}
                )
                log.info("node %s: brick %d of gluster volume %s Ready", self.node, index, name)
                return None
            lead_address = (lead_status.get("brick") or {}).get("address")
            if lead_address:
                await asyncio.to_thread(self.driver.join_lead, server, str(lead_address))
            message = f"{WAITING_FOR_VOLUME} (made by the agent of {servers[0]})"
            await self._put(obj, {"state": "Pending", "message": message, "brick": brick})
            return WAIT
        # The first server: the volume once every brick is published.
        bricks: list[dict[str, Any]] = []
        missing: list[str] = []
        total = 0
        for position, node in enumerate(servers):
            other = obj if position == 0 else self._at(members, position, node)
            published = (
                brick if position == 0 else (_status(other).get("brick") if other is not None else None)
            )
            deleting = other is not None and (other.get("metadata") or {}).get("deletionTimestamp")
            if other is None or not published or deleting:
                missing.append(node)
                continue
            bricks.append(published)
            total += int(_spec(other)["capacity"])
        if missing:
            message = f"{WAITING_FOR_VOLUME} (bricks not ready yet on {', '.join(missing)})"
            await self._put(obj, {"state": "Pending", "message": message, "brick": brick})
            return WAIT
        nodes = [StorageNode(str(b["node"]), str(b["poolDir"]), str(b["address"])) for b in bricks]
        fs = self.driver.volume_record(
            self._allocation(obj, total),
            nodes,
            [{k: v for k, v in b.items() if k not in _PUBLISHED_ONLY} for b in bricks],
            brick.get("size"),
        )
        log.info("node %s: making gluster volume %s over %s", self.node, name, ", ".join(servers))
        ready = await asyncio.to_thread(self.driver.create_volume, fs)
        await asyncio.to_thread(self.driver.record_sockets, server, name)
        await self._put(obj, {"state": "Ready", "fileSystem": ready.to_json(), "brick": brick})
        log.info("node %s: gluster volume %s Ready", self.node, name)
        return None

    async def restore(self, obj: Obj, server: StorageNode) -> None:
        """After a start: the brick re-attached and mounted, glusterd running (it restarts the bricks
        of started volumes), and on the first server every brick process started."""
        await self.make_brick(obj, server)
        if int(_spec(obj).get("index") or 0) == 0:
            await asyncio.to_thread(self.driver.start_volume, server, str(_spec(obj).get("fileSystem")))

    # ---- delete ---------------------------------------------------------------------------------

    async def delete(self, obj: Obj, server: StorageNode) -> str | None:
        """Remove this node's part; None when done, else why it waits (the volume still exists).
        Raises the driver's StorageError."""
        spec = _spec(obj)
        name = str(spec.get("fileSystem"))
        record = await asyncio.to_thread(self.driver.read_record, server, name)
        if record is not None:
            await self.ensure_glusterd(server)
            if int(spec.get("index") or 0) == 0:
                await asyncio.to_thread(self.driver.delete_volume, server, name)
            elif await asyncio.to_thread(self.driver.volume_exists, server, name):
                return (
                    f"waiting for the agent of {servers_of(obj)[0]} to delete gluster volume {name} "
                    "before removing this brick"
                )
        await asyncio.to_thread(self.driver.remove_brick, server, name)
        return None

    async def _put(self, obj: Obj, status: dict[str, Any]) -> None:
        await put_status(self.client, STORAGE_ALLOCATION, obj, status, self.informer)
