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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from slurmlink.storage.filesystems import loop, mounts
from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import CommandError, NotSupportedError, StateError
from slurmlink.storage.filesystems.glusterd import Glusterd, parse_peers
from slurmlink.storage.filesystems.interface import (
    CREATING,
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
        glusterd = self.glusterd(server)
        if not glusterd.healthy():
            raise StateError(
                f"glusterd is not running on storage node {server.name} (state in "
                f"{glusterd.layout.root}): its agent starts it (Glusterd.start); then retry"
            )
        return glusterd

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
            self._join_pool(primary, servers[1:])
            volume = fs.details["volume"]
            argv = ["volume", "create", volume, "transport", "tcp"]
            argv += [f"{brick['address']}:{brick['path']}" for brick in bricks]
            if self.options.brick_backend == "dir":
                argv.append("force")  # bricks on the root file system, as gluster calls a plain directory
            primary.cli(argv)
            rollback.add(f"delete volume {volume}", lambda: primary.cli(["volume", "delete", volume]))
            settings = [
                ("storage.owner-uid", str(allocation.uid)),
                ("storage.owner-gid", str(allocation.gid)),
                *self.options.volume_options,
            ]
            for key, value in settings:
                primary.cli(["volume", "set", volume, key, value])
            primary.cli(["volume", "start", volume])
            rollback.add(f"stop volume {volume}", lambda: primary.cli(["volume", "stop", volume, "force"]))
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

    def _join_pool(self, primary: Glusterd, others: Sequence[StorageNode]) -> None:
        """Bring ``others`` into ``primary``'s trusted pool and wait until they are connected members."""
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
        bricks = fs.details["bricks"]
        present = [
            server
            for server in fs.servers
            if nodefs.exists(self.runner(server.name), server.allocation_dir(fs.name))
        ]
        primary = self._running_glusterd(fs.servers[0])
        sockets: dict[str, list[str]] = {
            name: list(paths) for name, paths in (fs.details.get("sockets") or {}).items()
        }
        info = self.volume_info(primary, volume)
        if info is not None:
            for server in fs.servers:
                glusterd = self.glusterd(server)
                sockets.setdefault(server.name, []).extend(glusterd.brick_sockets(volume))
            if info.findtext("statusStr") == "Started":
                primary.cli(["volume", "stop", volume, "force"])
            primary.cli(["volume", "delete", volume])
        for server in fs.servers:
            glusterd = self.glusterd(server)
            paths = [brick["path"] for brick in bricks if brick["node"] == server.name]
            glusterd.forget_volume(volume, paths, sorted(set(sockets.get(server.name, []))))
        for server in present:
            for brick in bricks:
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
        volume = fs.details["volume"]
        for brick in fs.details["bricks"]:
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
        primary = self._running_glusterd(fs.servers[0])
        info = self.volume_info(primary, volume)
        if info is None:
            raise StateError(
                f"glusterd on {fs.servers[0].name} has no volume {volume} (its state in "
                f"{primary.layout.work_dir} was lost); delete the buffer"
            )
        if info.findtext("statusStr") != "Started" or not self._bricks_online(primary, volume):
            # "force" starts the brick processes that are missing of a started volume.
            primary.cli(["volume", "start", volume, "force"])
        for mount in mounts:
            self.mount(fs, mount)

    def _bricks_online(self, glusterd: Glusterd, volume: str) -> bool:
        try:
            root = glusterd.cli_xml(["volume", "status", volume])
        except CommandError:
            return False
        nodes = [node for node in root.iter("node") if (node.findtext("path") or "").startswith("/")]
        return bool(nodes) and all(node.findtext("status") == "1" for node in nodes)

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

        def ready() -> bool:
            info = mounts.mounted_at(runner, mount.path)
            return (
                info is not None
                and self._is_ours(fs, info)
                and self._responsive(runner, mount.path)
                and not self._disconnected(runner, fs, mount.path)
            )

        if not nodefs.wait_for(ready, self.options.mount_timeout, interval=0.2):
            runner.run(["umount", "-l", "--", mount.path], check=False)
            where = log_file or f"/var/log/glusterfs/{mount.path.strip('/').replace('/', '-')}.log"
            raise StateError(
                f"on node {mount.node}: gluster volume {volume} did not mount at {mount.path} within "
                f"{self.options.mount_timeout:g} s; see the client log {where} there, and check that the "
                f"node reaches the storage nodes ({', '.join(str(s.address) for s in fs.servers)})"
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
