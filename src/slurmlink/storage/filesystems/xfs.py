"""``xfs``: one XFS file system per compute node, on a loop device of the storage node.

NNF's Rabbits attach their NVMe to the computes over PCIe and a compute mounts a local block device;
here the storage node's loop device is visible to the compute node in the same way (one kernel), and
the compute node mounts it. Layout on the storage node::

    <pool_dir>/<name>/record.json   what was created (restore and discover read it)
    <pool_dir>/<name>/xfs.img       the backing file: the capacity, preallocated

Create attaches ``xfs.img`` with ``losetup`` and formats it with ``mkfs.xfs`` (its UUID is recorded, and
checked before every mount, so a re-attached or replaced device is never mistaken for another); mount
runs ``mount -t xfs -o nodev,nosuid`` on the compute node and gives the root to the job's uid/gid.
Capacity is the kernel's: the device is exactly the (MiB-rounded) size asked for, and writes past what
XFS can hold in it fail with ENOSPC. XFS keeps part of that for its log and metadata (about 15 % of a
64 MiB file system, 10 % of 1 GiB, mostly its 64 MiB log, less and less above), so a job stores somewhat
less than it asked for, as on a device of that size.
"""

from __future__ import annotations

from collections.abc import Sequence

from slurmlink.storage.filesystems import loop, mounts
from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import StateError
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

IMAGE_FILE = "xfs.img"


class XfsDriver(FileSystemDriver):
    type = "xfs"
    enforcement = "kernel"

    def __init__(self, runners: RunnerLookup = local_runners, options: XfsOptions | None = None) -> None:
        super().__init__(runners)
        self.options = options or XfsOptions()

    # --- storage node ---------------------------------------------------------------------------------

    def create(self, allocation: Allocation, servers: Sequence[StorageNode]) -> FileSystem:
        server = self.only_server(servers)
        existing = self.begin_create(allocation, servers)
        if existing is not None:
            return existing
        runner = self.runner(server.name)
        check_tools(runner)
        directory = server.allocation_dir(allocation.name)
        size = loop.round_size(allocation.capacity)
        fs = FileSystem(
            self.type,
            allocation,
            (server,),
            CREATING,
            {"image": f"{directory}/{IMAGE_FILE}", "uuid": loop.new_uuid(), "size": size},
        )
        image = fs.details["image"]
        rollback = Rollback()
        with rollback.guard():
            rollback.add(
                f"remove {directory} on {server.name}", lambda: nodefs.remove_tree(runner, directory)
            )
            self.write_record(server, fs)
            loop.make_image(runner, image, size, preallocate=self.options.preallocate)
            rollback.add(f"detach the loop device of {image}", lambda: loop.detach(runner, image))
            device = loop.attach(runner, image, direct_io=self.options.direct_io)
            loop.mkfs(runner, device, size, fs.details["uuid"], allocation.name, self.options.mkfs_options)
            return self.finish_create(fs)

    def delete(self, fs: FileSystem) -> None:
        server = self.only_server(fs)
        runner = self.runner(server.name)
        directory = server.allocation_dir(fs.name)
        if not nodefs.exists(runner, directory):
            return
        loop.detach(runner, fs.details["image"])
        nodefs.remove_tree(runner, directory)

    def restore(self, fs: FileSystem, mounts: Sequence[Mount] = ()) -> None:
        server = self.only_server(fs)
        runner = self.runner(server.name)
        if fs.state == CREATING:
            self.delete(fs)
            raise StateError(
                f"xfs file system {fs.name} on {server.name} was being created when its agent stopped; "
                "what was made is removed, create it again"
            )
        image = fs.details["image"]
        if not nodefs.exists(runner, image):
            raise StateError(
                f"on node {server.name}: the backing file {image} of xfs file system {fs.name} is gone, "
                "and its data with it; delete the buffer"
            )
        device = loop.attach(runner, image, direct_io=self.options.direct_io)
        found = loop.fs_uuid(runner, device)
        if found != fs.details["uuid"]:
            raise StateError(
                f"on node {server.name}: {image} holds file system {found or 'none'}, not "
                f"{fs.details['uuid']} of {fs.name}; refusing to mount it"
            )
        for mount in mounts:
            self.mount(fs, mount)

    # --- compute node ---------------------------------------------------------------------------------

    def device(self, fs: FileSystem, node: str | None = None) -> str:
        """The loop device carrying ``fs`` (attached, with the recorded UUID).

        A device published with the record (``details["device"]``, which the storage agent adds) is
        used when it carries the recorded XFS UUID as seen from ``node`` (the compute node, which may
        not reach the storage node's namespace at all); otherwise the storage node is asked.
        """
        recorded = fs.details.get("device")
        if recorded and node is not None:
            runner = self.runner(node)
            if nodefs.exists(runner, recorded) and loop.fs_uuid(runner, recorded) == fs.details["uuid"]:
                return str(recorded)
        server = self.only_server(fs)
        device = loop.verified_device(self.runner(server.name), fs.details["image"], fs.details["uuid"])
        if device is None:
            raise StateError(
                f"xfs file system {fs.name} is not attached on storage node {server.name} "
                "(its loop device is gone, e.g. after a reboot): restore it there first"
            )
        return device

    def mount(self, fs: FileSystem, mount: Mount) -> None:
        require_ready(fs, "mount")
        runner = self.runner(mount.node)
        current = mounts.mounted_at(runner, mount.path)
        device = self.device(fs, mount.node) if current is None else current.source
        if current is not None:
            if not self._is_ours(runner, fs, current):
                raise StateError(
                    f"on node {mount.node}: {mount.path} already has {current.source} ({current.fstype}) "
                    f"mounted, not xfs file system {fs.name}"
                )
        else:
            if not nodefs.exists(runner, device):
                raise StateError(
                    f"on node {mount.node}: {device} of storage node {fs.servers[0].name} is not visible; "
                    "this node must see the storage node's loop devices to mount an xfs buffer"
                )
            mounts.prepare_mount_point(runner, mount.path)
            options = ",".join(self.options.mount_options) or "defaults"
            runner.run(["mount", "-t", "xfs", "-o", options, "--", device, mount.path], timeout=300)
        try:
            alloc = fs.allocation
            nodefs.ensure_owner(runner, mount.path, alloc.uid, alloc.gid, alloc.mode)
        except Exception:
            if current is None:
                mounts.unmount(runner, mount.path, what=f"xfs file system {fs.name}")
            raise

    def unmount(self, fs: FileSystem, mount: Mount) -> None:
        runner = self.runner(mount.node)
        current = mounts.mounted_at(runner, mount.path)
        if current is not None:
            if not self._is_ours(runner, fs, current):
                raise StateError(
                    f"on node {mount.node}: {mount.path} has {current.source} ({current.fstype}) mounted, "
                    f"not xfs file system {fs.name}; leaving it"
                )
            mounts.unmount(runner, mount.path, what=f"xfs file system {fs.name}")
        nodefs.remove_empty_dir(runner, mount.path)

    def _is_ours(self, runner: NodeRunner, fs: FileSystem, current: mounts.MountInfo) -> bool:
        return current.fstype == "xfs" and loop.fs_uuid(runner, current.source) == fs.details["uuid"]

    def usage(self, fs: FileSystem, mount: Mount | None = None) -> Usage:
        if mount is None:
            return Usage(fs.allocation.capacity, fs.details["size"], None, None, self.enforcement)
        size, used, available = self.statfs(self.runner(mount.node), mount.path)
        return Usage(fs.allocation.capacity, size, used, available, self.enforcement)


#: Nodes whose XFS tools were found by this process (their own runners only: installed tools stay).
_TOOLS_FOUND: set[tuple[str, tuple[tuple[str, str], ...]]] = set()


def check_tools(runner: NodeRunner) -> None:
    """Fail early, before anything is made, when the node lacks XFS tools (MissingToolError)."""
    key = (runner.name, tuple(sorted(runner.env.items())))
    if runner.here and key in _TOOLS_FOUND:
        return
    runner.run(["mkfs.xfs", "-V"])
    runner.run(["losetup", "--version"])
    if runner.here:
        _TOOLS_FOUND.add(key)
