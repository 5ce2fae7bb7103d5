"""``gluster``: one GlusterFS distributed volume over the allocated storage nodes, FUSE-mounted on
every compute node of the job (slurmlink's shared type; DataWarp's ``striped``).

Each storage node runs its own glusterd (:mod:`~slurmlink.storage.filesystems.glusterd`, started by
its agent); the driver only talks to them. A file system of capacity C over N storage nodes is:

* on each storage node a brick: by default an XFS file system of C/N (MiB-rounded) on a loop device,
  mounted on the node at ``<pool_dir>/<name>/mnt`` with the brick at ``mnt/brick`` (so each brick has a
  real size); with ``brick_backend="dir"`` a plain directory ``<pool_dir>/<name>/brick`` on the pool's
  file system (no size limit);
* the nodes in one trusted pool (the first node probes the others by address, once);
* the volume ``<name>``: ``volume create <name> transport tcp addr1:brick1 addr2:brick2 ...``, then
  ``storage.owner-uid``/``storage.owner-gid`` (the job's ids own every brick's root), then started.

A compute node mounts it with the FUSE client, ``glusterfs --volfile-server=<each node> --volfile-id=
<name> PATH`` (every storage node is a volfile server, so one down node does not stop a mount).
Distribution places each file whole on one brick: a file larger than a brick's free space gets ENOSPC
even when the volume as a whole has room, and the volume is full when its bricks are.

Delete stops and deletes the volume, removes what glusterd keeps of it (run directory, brick logs and
sockets) and the bricks (unmounted, loop devices detached, files removed); peers stay in the pool.
Restore re-attaches and re-mounts bricks, starts the volume's missing brick processes
(``volume start force``) and re-mounts the given client mounts; glusterd itself is its agent's to start.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from slurmlink.storage.filesystems import loop, mounts
from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import (
    CommandError,
    NotSupportedError,
    StateError,
    TransientError,
)
from slurmlink.storage.filesystems.glusterd import Glusterd, parse_peers
from slurmlink.storage.filesystems.interface import (
    CREATING,
    READY,
    Allocation,
    FileSystem,
    FileSystemDriver,
    Mount,
    Rollback,
    StorageNode,
    Usage,
    require_ready,
)
from slurmlink.storage.filesystems.loop import XfsOptions
from slurmlink.storage.filesystems.runner import NodeRunner, RunnerLookup, local_runners

FUSE_TYPE = "fuse.glusterfs"


@dataclass(frozen=True)
class GlusterOptions:
    """How gluster file systems are made and mounted (a StorageProfile's ``gluster`` section)."""

    #: "xfs": each brick an XFS file system of its share of the capacity (enforced); "dir": a
    #: directory on the pool's file system (capacity not enforced; for pools without loop devices).
    brick_backend: str = "xfs"
    xfs: XfsOptions = field(default_factory=XfsOptions)
    #: Extra ``gluster volume set`` options, applied before the volume starts.
    volume_options: tuple[tuple[str, str], ...] = ()
    #: Flags of the client mount point (``mount -o remount,bind,...``: nodev, nosuid, noexec, ro);
    #: glusterfs itself mounts without nodev/nosuid.
    mount_options: tuple[str, ...] = ("nodev", "nosuid")
    #: Extra arguments of the FUSE client, e.g. ``("--log-level=WARNING",)``.
    client_options: tuple[str, ...] = ()
    #: Directory on compute nodes for the FUSE clients' logs (default: glusterfs's, /var/log/glusterfs).
    client_log_dir: str | None = None
    #: Seconds to wait for a FUSE mount, and for probed peers to join the pool.
    mount_timeout: float = 60
    peer_timeout: float = 60
    #: Seconds a running glusterd is given to answer its CLI before an operation needing it fails.
    answer_timeout: float = 15

    def __post_init__(self) -> None:
        if self.brick_backend not in ("xfs", "dir"):
            raise StateError(f"gluster brick_backend must be 'xfs' or 'dir', not {self.brick_backend!r}")


class GlusterDriver(FileSystemDriver):
    type = "gluster"
    enforcement = "kernel"

    def __init__(self, runners: RunnerLookup = local_runners, options: GlusterOptions | None = None) -> None:
        super().__init__(runners)
        self.options = options or GlusterOptions()
        if self.options.brick_backend == "dir":
            self.enforcement = "none"

    def glusterd(self, server: StorageNode) -> Glusterd:
        return Glusterd(server, self.runner(server.name))

    def _running_glusterd(self, server: StorageNode) -> Glusterd:
        """``server``'s glusterd, which must run. One that runs but does not answer (busy with a peer's
        handshake, say) is given ``answer_timeout`` seconds."""
        glusterd = self.glusterd(server)
        problem = glusterd.unanswered()

        def settled() -> bool:  # it answers, or there is no glusterd to wait for
            nonlocal problem
            problem = glusterd.unanswered()
            return problem is None or glusterd.pid() is None

        if problem is not None and glusterd.pid() is not None:
            nodefs.wait_for(settled, self.options.answer_timeout, interval=0.3)
        if problem is None:
            return glusterd
        state = "does not answer" if glusterd.pid() is not None else "is not running"
        raise TransientError(
            f"glusterd {state} on storage node {server.name} (state in {glusterd.layout.root}; "
            f"the gluster CLI said: {problem}): its agent starts it (Glusterd.start); then retry"
        )

    # --- storage nodes --------------------------------------------------------------------------------

    def create(self, allocation: Allocation, servers: Sequence[StorageNode]) -> FileSystem:
        existing = self.begin_create(allocation, servers)
        if existing is not None:
            return existing
        for server in servers:
            if not server.address:
                raise StateError(f"storage node {server.name} has no address; gluster needs one per node")
        glusterds = [self._running_glusterd(server) for server in servers]
        if self.options.brick_backend == "xfs":
            for server in servers:
                self.runner(server.name).run(["mkfs.xfs", "-V"])
        brick_size = loop.round_size(-(-allocation.capacity // len(servers)))
        bricks = [self._brick_plan(server, allocation.name) for server in servers]
        fs = FileSystem(
            self.type,
            allocation,
            tuple(servers),
            CREATING,
            {
                "volume": allocation.name,
                "backend": self.options.brick_backend,
                "brickSize": brick_size if self.options.brick_backend == "xfs" else None,
                "bricks": bricks,
            },
        )
        primary = glusterds[0]
        rollback = Rollback()
        with rollback.guard():
            for server, brick in zip(servers, bricks, strict=True):
                runner = self.runner(server.name)
                directory = server.allocation_dir(allocation.name)
                rollback.add(
                    f"remove {directory} on {server.name}", partial(nodefs.remove_tree, runner, directory)
                )
                self.write_record(server, fs)
                rollback.add(f"remove the brick on {server.name}", partial(self._remove_brick, server, brick))
                self._make_brick(server, brick, fs)
            volume = fs.details["volume"]
            rollback.add(f"delete volume {volume}", lambda: self.delete_volume(fs.servers[0], volume))
            self._create_volume(primary, fs, helpers=True)
            # The bricks' Unix sockets, named by a hash glusterd does not report, for delete to remove.
            sockets: dict[str, list[str]] = {}

            def all_sockets() -> bool:
                for server, glusterd in zip(servers, glusterds, strict=True):
                    sockets[server.name] = glusterd.brick_sockets(volume)
                return all(sockets.values())

            nodefs.wait_for(all_sockets, 10, interval=0.2)
            fs.details["sockets"] = sockets
            return self.finish_create(fs)

    def _brick_plan(self, server: StorageNode, name: str) -> dict[str, Any]:
        directory = server.allocation_dir(name)
        if self.options.brick_backend == "xfs":
            return {
                "node": server.name,
                "address": server.address,
                "path": f"{directory}/mnt/brick",
                "mountPoint": f"{directory}/mnt",
                "image": f"{directory}/brick.img",
                "uuid": loop.new_uuid(),
            }
        return {"node": server.name, "address": server.address, "path": f"{directory}/brick"}

    def _make_brick(self, server: StorageNode, brick: dict[str, Any], fs: FileSystem) -> None:
        runner = self.runner(server.name)
        if "image" in brick:
            xfs = self.options.xfs
            size = fs.details["brickSize"]
            loop.make_image(runner, brick["image"], size, preallocate=xfs.preallocate)
            device = loop.attach(runner, brick["image"], direct_io=xfs.direct_io)
            loop.mkfs(runner, device, size, brick["uuid"], fs.name, xfs.mkfs_options)
            self._mount_brick(runner, brick, device)
        alloc = fs.allocation
        nodefs.make_dirs(runner, brick["path"], mode=alloc.mode)
        nodefs.ensure_owner(runner, brick["path"], alloc.uid, alloc.gid, alloc.mode)

    def _mount_brick(self, runner: NodeRunner, brick: dict[str, Any], device: str) -> None:
        current = mounts.mounted_at(runner, brick["mountPoint"])
        if current is not None:
            if current.fstype == "xfs" and loop.fs_uuid(runner, current.source) == brick["uuid"]:
                return
            raise StateError(
                f"on node {runner.name}: {brick['mountPoint']} has {current.source} ({current.fstype}) "
                "mounted, not its brick"
            )
        nodefs.make_dirs(runner, brick["mountPoint"], mode=0o755)
        options = ",".join(self.options.xfs.mount_options) or "defaults"
        runner.run(["mount", "-t", "xfs", "-o", options, "--", device, brick["mountPoint"]], timeout=300)

    def _remove_brick(self, server: StorageNode, brick: dict[str, Any]) -> None:
        runner = self.runner(server.name)
        if "image" in brick:
            mounts.unmount(runner, brick["mountPoint"], what=f"brick {brick['path']}")
            loop.detach(runner, brick["image"])

    def _create_volume(self, primary: Glusterd, fs: FileSystem, *, helpers: bool) -> None:
        """Pool, volume, settings, start, through ``primary`` (the first server's glusterd); what is
        done already is skipped, so a create cut short is finished by calling it again."""
        volume = fs.details["volume"]
        bricks = fs.details["bricks"]
        self._join_pool(primary, fs.servers[1:], helpers=helpers)
        wanted = [f"{brick['address']}:{brick['path']}" for brick in bricks]
        info = self.volume_info(primary, volume)
        if info is None:
            argv = ["volume", "create", volume, "transport", "tcp", *wanted]
            if self.options.brick_backend == "dir":
                argv.append("force")  # bricks on the root file system, as gluster calls a plain directory
            primary.cli(argv)
            info = self.volume_info(primary, volume)
        else:
            have = [brick.findtext("name") or "" for brick in info.iter("brick")]
            if have != wanted:
                raise StateError(
                    f"gluster volume {volume} exists with other bricks ({', '.join(have)}) than "
                    f"{fs.name} asks for ({', '.join(wanted)}); delete it or use another name"
                )
        if info is None or info.findtext("statusStr") != "Started":
            settings = [
                ("storage.owner-uid", str(fs.allocation.uid)),
                ("storage.owner-gid", str(fs.allocation.gid)),
                *self.options.volume_options,
            ]
            for key, value in settings:
                primary.cli(["volume", "set", volume, key, value])
            primary.cli(["volume", "start", volume])
        elif not self._bricks_online(primary, volume, len(wanted)):
            primary.cli(["volume", "start", volume, "force"])

    # --- one storage node at a time (the storage agents) ----------------------------------------------
    #
    # A storage agent reaches only its own node. Each agent of a gluster allocation set makes its own
    # brick (``make_brick``); the agent of the first server, once every brick is ready, brings the
    # others into its glusterd's pool and makes the volume (``create_volume``); a node already in
    # another pool brings the first one in instead (``join_lead``). On deletion the first server
    # deletes the volume (``delete_volume``), then every node removes its brick (``remove_brick``).
    # A node's record (``<pool_dir>/<name>/record.json``) then describes its brick only: its one
    # server, ``allocation.capacity`` the brick's share, ``details.part`` its position in the set.

    def make_brick(self, allocation: Allocation, server: StorageNode, index: int) -> FileSystem:
        """``server``'s brick of volume ``allocation.name`` (``allocation.capacity``: this brick's size),
        recorded on the node. Idempotent: a ready brick is re-attached (after a reboot), one whose
        making was cut short is removed and made again."""
        if not server.address:
            raise StateError(f"storage node {server.name} has no address; gluster needs one per node")
        previous = self.existing(allocation, [server])
        if previous is not None:
            if previous.details.get("part") != index:
                raise StateError(
                    f"on node {server.name}: {server.allocation_dir(allocation.name)} holds brick "
                    f"{previous.details.get('part')} of {allocation.name}, not brick {index}"
                )
            if previous.state == READY:
                self._restore_bricks(server, previous)
                return previous
            self._remove_node_part(server, previous)
        if self.options.brick_backend == "xfs":
            self.runner(server.name).run(["mkfs.xfs", "-V"])
        brick = self._brick_plan(server, allocation.name)
        fs = FileSystem(
            self.type,
            allocation,
            (server,),
            CREATING,
            {
                "volume": allocation.name,
                "backend": self.options.brick_backend,
                "brickSize": loop.round_size(allocation.capacity)
                if self.options.brick_backend == "xfs"
                else None,
                "bricks": [brick],
                "part": index,
            },
        )
        runner = self.runner(server.name)
        directory = server.allocation_dir(allocation.name)
        rollback = Rollback()
        with rollback.guard():
            rollback.add(
                f"remove {directory} on {server.name}", partial(nodefs.remove_tree, runner, directory)
            )
            self.write_record(server, fs)
            rollback.add(f"remove the brick on {server.name}", partial(self._remove_brick, server, brick))
            self._make_brick(server, brick, fs)
            return self.finish_create(fs)

    def volume_record(
        self,
        allocation: Allocation,
        servers: Sequence[StorageNode],
        bricks: Sequence[dict[str, Any]],
        brick_size: int | None = None,
    ) -> FileSystem:
        """The record of the volume over ``bricks`` (one per server, in order; each as ``make_brick``
        recorded it), before it is made: what :meth:`create_volume` takes."""
        if len(servers) != len(bricks) or any(
            b["node"] != s.name for s, b in zip(servers, bricks, strict=False)
        ):
            raise StateError(f"gluster volume {allocation.name}: one brick per server, in their order")
        return FileSystem(
            self.type,
            allocation,
            tuple(servers),
            CREATING,
            {
                "volume": allocation.name,
                "backend": self.options.brick_backend,
                "brickSize": brick_size,
                "bricks": [dict(brick) for brick in bricks],
            },
        )

    def create_volume(self, fs: FileSystem) -> FileSystem:
        """On the first server (its glusterd running): the others probed into its pool, the volume
        made and started; the ready record. Idempotent. Every brick must be made already."""
        primary = self._running_glusterd(fs.servers[0])
        self._create_volume(primary, fs, helpers=False)
        return replace(fs, state=READY)

    def join_lead(self, server: StorageNode, lead_address: str) -> None:
        """On a node that is in a pool of its own: probe the first server into it (that one cannot join
        a pool by itself). A node without peers does nothing: the first server probes it."""
        glusterd = self._running_glusterd(server)
        peers = parse_peers(glusterd.cli_xml(["peer", "status"]))
        if not peers or lead_address in peers:
            return
        glusterd.cli(["peer", "probe", lead_address])

    def record_sockets(self, server: StorageNode, name: str, timeout: float = 10) -> None:
        """Write the Unix sockets of ``server``'s running bricks of ``name`` into its record (glusterd
        names them by a hash it does not report), for :meth:`remove_brick`."""
        fs = self.read_record(server, name)
        if fs is None:
            return
        glusterd = self.glusterd(server)
        found: list[str] = []

        def running() -> bool:
            found[:] = glusterd.brick_sockets(fs.details["volume"])
            return bool(found)

        nodefs.wait_for(running, timeout, interval=0.2)
        known = set((fs.details.get("sockets") or {}).get(server.name) or [])
        if found and not set(found) <= known:
            sockets = {server.name: sorted(known | set(found))}
            self.write_record(server, replace(fs, details={**fs.details, "sockets": sockets}))

    def volume_exists(self, server: StorageNode, volume: str) -> bool:
        """Whether ``server``'s glusterd (which must run) still knows ``volume``."""
        return self.volume_info(self._running_glusterd(server), volume) is not None

    def remove_brick(self, server: StorageNode, name: str) -> None:
        """Remove ``server``'s brick of ``name`` and what its glusterd kept of the volume. Refused while
        the volume exists (the first server deletes it). Idempotent."""
        fs = self.read_record(server, name)
        runner = self.runner(server.name)
        if fs is None:
            nodefs.remove_tree(runner, server.allocation_dir(name))  # a make cut short before its record
            return
        volume = fs.details["volume"]
        glusterd = self.glusterd(server)
        if glusterd.healthy() and self.volume_info(glusterd, volume) is not None:
            raise StateError(
                f"on node {server.name}: gluster volume {volume} still exists; the agent of its first "
                "storage node deletes it before the bricks are removed"
            )
        sockets = list((fs.details.get("sockets") or {}).get(server.name) or [])
        if glusterd.healthy():
            sockets += glusterd.brick_sockets(volume)
        self._forget(server, fs, sockets)
        self._remove_node_part(server, fs)

    def _join_pool(self, primary: Glusterd, others: Sequence[StorageNode], *, helpers: bool) -> None:
        """Bring ``others`` into ``primary``'s trusted pool and wait until they are connected members.

        A node already in another pool cannot be probed into the primary's; that pool's members can
        bring the primary in instead: with ``helpers`` the driver asks that node's glusterd (it reaches
        every node), without (a storage agent, which reaches only its own node) it raises a
        :class:`StateError` saying so, and that node's agent probes the primary (see
        :meth:`join_lead`).
        """
        if not others:
            return
        peers = parse_peers(primary.cli_xml(["pool", "list"]))
        for server in others:
            assert server.address is not None and primary.node.address is not None
            if server.address in peers:
                continue
            probe = primary.cli(["peer", "probe", server.address], check=False)
            if probe.returncode == 0:
                continue
            if "part of another cluster" not in probe.stdout + probe.stderr:
                primary.cli(["peer", "probe", server.address])  # raises with glusterd's reason
            if not helpers:
                raise StateError(
                    f"storage node {server.name} ({server.address}) is in another gluster pool; waiting "
                    f"for its agent to bring {primary.node.name} into it"
                )
            # ``server`` is already in a pool and the primary is not (yet): join the primary to it.
            other = self.glusterd(server)
            answer = other.cli(["peer", "probe", primary.node.address], check=False)
            if answer.returncode != 0:
                raise StateError(
                    f"storage nodes {primary.node.name} and {server.name} are in different gluster pools "
                    f"({(answer.stdout + answer.stderr).strip()}); a volume needs its nodes in one pool: "
                    "detach one of them from its pool (`gluster peer detach`) once it has no volumes"
                )
            peers = parse_peers(primary.cli_xml(["pool", "list"]))

        def joined() -> bool:
            peers = parse_peers(primary.cli_xml(["pool", "list"]))
            return all(
                peers.get(s.address or "", (False, ""))[:2] == (True, "Peer in Cluster") for s in others
            )

        if not nodefs.wait_for(joined, self.options.peer_timeout, interval=0.3):
            peers = parse_peers(primary.cli_xml(["pool", "list"]))
            states = ", ".join(f"{s.address}: {peers.get(s.address or '', 'unknown')}" for s in others)
            raise StateError(
                f"storage nodes did not join {primary.node.name}'s gluster pool within "
                f"{self.options.peer_timeout:g} s ({states}); check that their glusterd run and that "
                f"{primary.node.name} reaches them on TCP port 24007"
            )

    def delete(self, fs: FileSystem) -> None:
        volume = fs.details["volume"]
        present = [
            server
            for server in fs.servers
            if nodefs.exists(self.runner(server.name), server.allocation_dir(fs.name))
        ]
        sockets: dict[str, list[str]] = {
            name: list(paths) for name, paths in (fs.details.get("sockets") or {}).items()
        }
        primary = self._running_glusterd(fs.servers[0])
        if self.volume_info(primary, volume) is not None:
            for server in fs.servers:
                sockets.setdefault(server.name, []).extend(self.glusterd(server).brick_sockets(volume))
            self.delete_volume(fs.servers[0], volume)
        for server in fs.servers:
            self._forget(server, fs, sockets.get(server.name, []))
        for server in present:
            self._remove_node_part(server, fs)

    def delete_volume(self, primary_node: StorageNode, volume: str) -> None:
        """Stop and delete ``volume`` through ``primary_node``'s glusterd (idempotent); it stops the
        volume's brick processes on every node. What glusterd leaves on each node is for
        :meth:`remove_brick` (or :meth:`delete`) to remove."""
        primary = self._running_glusterd(primary_node)
        info = self.volume_info(primary, volume)
        if info is None:
            return
        if info.findtext("statusStr") == "Started":
            primary.cli(["volume", "stop", volume, "force"])
        primary.cli(["volume", "delete", volume])

    def _forget(self, server: StorageNode, fs: FileSystem, sockets: Sequence[str]) -> None:
        """What ``server``'s glusterd keeps of the deleted volume: run directory, brick logs, sockets."""
        paths = [brick["path"] for brick in fs.details["bricks"] if brick["node"] == server.name]
        self.glusterd(server).forget_volume(fs.details["volume"], paths, sorted(set(sockets)))

    def _remove_node_part(self, server: StorageNode, fs: FileSystem) -> None:
        """``server``'s bricks of ``fs`` (unmounted, loop devices detached) and its directory."""
        for brick in fs.details["bricks"]:
            if brick["node"] == server.name:
                self._remove_brick(server, brick)
        nodefs.remove_tree(self.runner(server.name), server.allocation_dir(fs.name))

    def volume_info(self, glusterd: Glusterd, volume: str) -> ET.Element | None:
        """The ``<volume>`` element of ``volume info``, or None if glusterd has no such volume."""
        try:
            root = glusterd.cli_xml(["volume", "info", volume])
        except CommandError as exc:
            if "does not exist" in exc.output:
                return None
            raise
        return root.find("./volInfo/volumes/volume")

    def restore(self, fs: FileSystem, mounts: Sequence[Mount] = ()) -> None:
        if fs.state == CREATING:
            self.delete(fs)
            raise StateError(
                f"gluster file system {fs.name} was being created when its agent stopped; what was made "
                "is removed, create it again"
            )
        for server in fs.servers:
            self._restore_bricks(server, fs)
        self.start_volume(fs.servers[0], fs.details["volume"])
        for mount in mounts:
            self.mount(fs, mount)

    def _restore_bricks(self, server: StorageNode, fs: FileSystem) -> None:
        """Re-attach and re-mount ``server``'s bricks of ``fs`` (after a reboot); never formats."""
        for brick in fs.details["bricks"]:
            if brick["node"] != server.name:
                continue
            runner = self.runner(brick["node"])
            if "image" in brick:
                if not nodefs.exists(runner, brick["image"]):
                    raise StateError(
                        f"on node {brick['node']}: brick image {brick['image']} of {fs.name} is gone, "
                        "and that brick's files with it; delete the buffer"
                    )
                device = loop.attach(runner, brick["image"], direct_io=self.options.xfs.direct_io)
                if loop.fs_uuid(runner, device) != brick["uuid"]:
                    raise StateError(
                        f"on node {brick['node']}: {brick['image']} does not hold brick file system "
                        f"{brick['uuid']}; refusing to use it"
                    )
                self._mount_brick(runner, brick, device)

    def start_volume(self, primary_node: StorageNode, volume: str) -> None:
        """Make sure ``volume`` is started with every brick process running (``volume start force``
        starts those missing), through ``primary_node``'s glusterd."""
        primary = self._running_glusterd(primary_node)
        info = self.volume_info(primary, volume)
        if info is None:
            raise StateError(
                f"glusterd on {primary_node.name} has no volume {volume} (its state in "
                f"{primary.layout.work_dir} was lost); delete the buffer"
            )
        bricks = len(list(info.iter("brick")))
        if info.findtext("statusStr") == "Started" and self._bricks_online(primary, volume, bricks):
            return
        # "force" starts the brick processes that are missing of a started volume.
        primary.cli(["volume", "start", volume, "force"])
        if not nodefs.wait_for(
            lambda: self._bricks_online(primary, volume, bricks), self.options.peer_timeout, interval=0.5
        ):
            raise StateError(
                f"gluster volume {volume}: not all of its {bricks} brick processes are online "
                f"{self.options.peer_timeout:g} s after starting them; see `gluster volume status {volume}` "
                f"and the brick logs on its storage nodes"
            )

    def _bricks_online(self, glusterd: Glusterd, volume: str, bricks: int) -> bool:
        """Whether ``glusterd`` reports all ``bricks`` brick processes of ``volume`` online (a peer it
        has not reconnected to yet after a restart leaves its bricks out of the report)."""
        try:
            root = glusterd.cli_xml(["volume", "status", volume])
        except CommandError:
            return False
        nodes = [node for node in root.iter("node") if (node.findtext("path") or "").startswith("/")]
        return len(nodes) == bricks and all(node.findtext("status") == "1" for node in nodes)

    # --- compute nodes --------------------------------------------------------------------------------

    def mount(self, fs: FileSystem, mount: Mount) -> None:
        require_ready(fs, "mount")
        runner = self.runner(mount.node)
        volume = fs.details["volume"]
        current = mounts.mounted_at(runner, mount.path)
        if current is not None:
            if not self._is_ours(fs, current):
                raise StateError(
                    f"on node {mount.node}: {mount.path} already has {current.source} ({current.fstype}) "
                    f"mounted, not gluster volume {volume}"
                )
            if self._responsive(runner, mount.path):
                # Alive; after bricks restarted, its reconnection to them takes a few seconds.
                self._wait_connected(runner, fs, mount)
                self._own(runner, fs, mount)
                return
            # The client died (or lost the volume): drop the dead mount and mount again.
            runner.run(["umount", "-l", "--", mount.path], check=False)
        if runner.run(["test", "-c", "/dev/fuse"], check=False).returncode != 0:
            raise NotSupportedError(
                f"on node {mount.node}: no /dev/fuse, so gluster volumes cannot be mounted there; load the "
                "fuse module (`modprobe fuse`) or give the node's container the /dev/fuse device"
            )
        runner.run(["glusterfs", "--version"])
        mounts.prepare_mount_point(runner, mount.path)
        argv = ["glusterfs", "--process-name=fuse", f"--volfile-id={volume}"]
        argv += [f"--volfile-server={server.address}" for server in fs.servers]
        log_file = None
        if self.options.client_log_dir:
            nodefs.make_dirs(runner, self.options.client_log_dir, mode=0o755)
            log_file = f"{self.options.client_log_dir}/{volume}{mount.path.replace('/', '-')}.log"
            argv.append(f"--log-file={log_file}")
        runner.run([*argv, *self.options.client_options, mount.path], timeout=self.options.mount_timeout)

        def not_ready() -> str:
            """What is still missing ("" once the mount is ready)."""
            info = mounts.mounted_at(runner, mount.path)
            if info is None or not self._is_ours(fs, info):
                return "the volume is not mounted there"
            if not self._responsive(runner, mount.path):
                return "the mount does not answer"
            missing = self._disconnected(runner, fs, mount.path)
            return f"the client is not connected to bricks {', '.join(missing)}" if missing else ""

        if not nodefs.wait_for(lambda: not not_ready(), self.options.mount_timeout, interval=0.2):
            reason = not_ready()
            where = log_file or f"/var/log/glusterfs/{mount.path.strip('/').replace('/', '-')}.log"
            errors = _log_errors(runner, where)  # before the unmount adds its own lines
            runner.run(["umount", "-l", "--", mount.path], check=False)
            raise StateError(
                f"on node {mount.node}: gluster volume {volume} did not mount at {mount.path} within "
                f"{self.options.mount_timeout:g} s ({reason or 'ready only at the last moment'}); see "
                f"the client log {where} there, and check that the node reaches the storage nodes "
                f"({', '.join(str(s.address) for s in fs.servers)}){errors}"
            )
        try:
            if self.options.mount_options:
                flags = ",".join(["remount", "bind", *self.options.mount_options])
                runner.run(["mount", "-o", flags, "--", mount.path])
            self._own(runner, fs, mount)
        except Exception:
            mounts.unmount(runner, mount.path, what=f"gluster volume {volume}")
            raise

    def _disconnected(self, runner: NodeRunner, fs: FileSystem, path: str) -> list[str]:
        """Bricks the client at ``path`` is not connected to (its ``.meta`` view of each client xlator)."""
        volume = fs.details["volume"]
        missing = []
        for index, brick in enumerate(fs.details["bricks"]):
            state = f"{path}/.meta/graphs/active/{volume}-client-{index}/private"
            result = runner.run(["cat", "--", state], check=False, timeout=20)
            if result.returncode == 0 and "connected = 1" not in result.stdout:
                missing.append(f"{brick['address']}:{brick['path']}")
        return missing

    def _wait_connected(self, runner: NodeRunner, fs: FileSystem, mount: Mount) -> None:
        if nodefs.wait_for(
            lambda: not self._disconnected(runner, fs, mount.path), self.options.mount_timeout, interval=0.3
        ):
            return
        missing = self._disconnected(runner, fs, mount.path)
        raise StateError(
            f"on node {mount.node}: gluster volume {fs.details['volume']} is mounted at {mount.path} but "
            f"not connected to bricks {', '.join(missing)} after {self.options.mount_timeout:g} s; check "
            "that their brick processes run (restore the file system) and that the node reaches them"
        )

    def _own(self, runner: NodeRunner, fs: FileSystem, mount: Mount) -> None:
        alloc = fs.allocation
        nodefs.ensure_owner(runner, mount.path, alloc.uid, alloc.gid, alloc.mode)

    def _is_ours(self, fs: FileSystem, info: mounts.MountInfo) -> bool:
        return info.fstype == FUSE_TYPE and info.source.rsplit(":", 1)[-1] == fs.details["volume"]

    def _responsive(self, runner: NodeRunner, path: str) -> bool:
        """The mount answers (a dead FUSE client gives "Transport endpoint is not connected")."""
        try:
            return nodefs.stat(runner, path, timeout=20).inode == 1
        except (CommandError, IndexError, ValueError):
            return False

    def unmount(self, fs: FileSystem, mount: Mount) -> None:
        runner = self.runner(mount.node)
        current = mounts.mounted_at(runner, mount.path)
        if current is not None:
            if not self._is_ours(fs, current):
                raise StateError(
                    f"on node {mount.node}: {mount.path} has {current.source} ({current.fstype}) mounted, "
                    f"not gluster volume {fs.details['volume']}; leaving it"
                )
            if not self._responsive(runner, mount.path):
                runner.run(["umount", "-l", "--", mount.path], check=False)
            mounts.unmount(runner, mount.path, what=f"gluster volume {fs.details['volume']}")
        nodefs.remove_empty_dir(runner, mount.path)

    def usage(self, fs: FileSystem, mount: Mount | None = None) -> Usage:
        capacity = fs.allocation.capacity
        if mount is not None:
            size, used, available = self.statfs(self.runner(mount.node), mount.path)
            return Usage(capacity, size, used, available, self.enforcement)
        if fs.details["backend"] != "xfs":
            return Usage(capacity, None, None, None, self.enforcement)
        totals = [0, 0, 0]
        for brick in fs.details["bricks"]:
            for index, value in enumerate(self.statfs(self.runner(brick["node"]), brick["mountPoint"])):
                totals[index] += value
        return Usage(capacity, totals[0], totals[1], totals[2], self.enforcement)


def _log_errors(runner: NodeRunner, log_file: str, lines: int = 5) -> str:
    """The last distinct error and warning entries of a gluster log, to quote (a client repeats the
    same complaint every few seconds: each is quoted once, at its last time)."""
    result = runner.run(["tail", "-n", "500", "--", log_file], check=False, timeout=10)
    if result.returncode != 0:
        return ""
    latest: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if " E [" in line or " W [" in line:
            message = line.split("] ", 1)[-1]  # without the leading timestamp
            latest.pop(message, None)
            latest[message] = line
    found = list(latest.values())[-lines:]
    return "; its last errors:\n" + "\n".join(found) if found else ""
