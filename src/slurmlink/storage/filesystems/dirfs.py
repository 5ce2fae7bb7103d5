"""``dir`` (and ``raw``): a directory on the storage node's pool, for sites without spare devices.

Layout on the storage node::

    <pool_dir>/<name>/record.json
    <pool_dir>/<name>/data/          the buffer, owned by the job's uid/gid with the allocation's mode

A compute node mounts it as a bind mount (``mount --bind``, then ``nodev,nosuid``), so the directory
must be visible at the same path on the compute node: true on one host (the dev cluster), or when the
pool is on a file system the compute nodes share.

What limits its size:

* when the pool's file system is XFS mounted with project quotas (``prjquota``/``pquota``), ``data``
  becomes an XFS project with a hard block limit of the capacity: writes past it fail with ENOSPC, as
  on a device of that size (``enforcement = "kernel"``);
* otherwise nothing stops a write: capacity is enforced by accounting. :meth:`DirDriver.usage` counts
  the blocks in use (``du``, as ``st_blocks``) and reports ``over_capacity``; the control plane counts
  the capacity as allocated from the pool whatever is written, and a node agent that samples usage can
  flag or stop a job that writes past its request (``enforcement = "accounting"``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from slurmlink.storage.filesystems import loop, mounts
from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import CommandError, StateError
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
from slurmlink.storage.filesystems.runner import NodeRunner, RunnerLookup, local_runners

#: XFS project ids of buffers: base + a hash of the name (probing past ids in use).
PROJECT_ID_BASE = 1_000_000
PROJECT_ID_SPAN = 1 << 30


@dataclass(frozen=True)
class DirOptions:
    """How directory buffers are made (a StorageProfile's ``dir``/``raw`` section)."""

    #: "auto": an XFS project quota when the pool's file system supports it, else accounting;
    #: "require": refuse to create without one; "off": accounting only.
    quota: str = "auto"
    #: Options of the bind mount on compute nodes.
    mount_options: tuple[str, ...] = ("nodev", "nosuid")

    def __post_init__(self) -> None:
        if self.quota not in ("auto", "require", "off"):
            raise StateError(f"dir quota must be 'auto', 'require' or 'off', not {self.quota!r}")


@dataclass(frozen=True)
class QuotaTarget:
    mount_point: str
    fstype: str
    options: str

    @property
    def project_quota(self) -> bool:
        options = self.options.split(",")
        return self.fstype == "xfs" and any(opt in ("prjquota", "pquota") for opt in options)


class DirDriver(FileSystemDriver):
    type = "dir"
    #: Per buffer: "kernel" where an XFS project quota holds it (see :meth:`usage`).
    enforcement = "accounting"

    def __init__(self, runners: RunnerLookup = local_runners, options: DirOptions | None = None) -> None:
        super().__init__(runners)
        self.options = options or DirOptions()

    # --- storage node ---------------------------------------------------------------------------------

    def create(self, allocation: Allocation, servers: Sequence[StorageNode]) -> FileSystem:
        server = self.only_server(servers)
        existing = self.begin_create(allocation, servers)
        if existing is not None:
            return existing
        runner = self.runner(server.name)
        directory = server.allocation_dir(allocation.name)
        data = f"{directory}/data"
        fs = FileSystem(self.type, allocation, (server,), CREATING, {"data": data, "quota": None})
        rollback = Rollback()
        with rollback.guard():
            rollback.add(
                f"remove {directory} on {server.name}", lambda: nodefs.remove_tree(runner, directory)
            )
            self.write_record(server, fs)
            nodefs.make_dirs(runner, data, mode=allocation.mode)
            nodefs.ensure_owner(runner, data, allocation.uid, allocation.gid, allocation.mode)
            target = self._quota_target(runner, data)
            if self.options.quota != "off" and target.project_quota:
                project = self._free_project_id(server, allocation.name)
                fs.details["quota"] = {"project": project, "mountPoint": target.mount_point}
                self.write_record(server, fs)
                rollback.add("clear the project quota", lambda: self._clear_quota(runner, fs))
                self._apply_quota(runner, fs)
            elif self.options.quota == "require":
                raise StateError(
                    f"on node {server.name}: {server.pool_dir} is on {target.fstype} at "
                    f"{target.mount_point} mounted without project quotas ({target.options}); mount an XFS "
                    "file system there with -o prjquota, or set quota to 'auto' to enforce by accounting"
                )
            return self.finish_create(fs)

    def _quota_target(self, runner: NodeRunner, path: str) -> QuotaTarget:
        out = runner.run(["findmnt", "--noheadings", "--target", path, "--output", "TARGET,FSTYPE,OPTIONS"])
        target, fstype, options = out.stdout.split()[:3]
        return QuotaTarget(target, fstype, options)

    def _free_project_id(self, server: StorageNode, name: str) -> int:
        used = {
            fs.details["quota"]["project"]
            for fs in self.all_records(server)
            if fs.type in ("dir", "raw") and fs.details.get("quota")
        }
        project = PROJECT_ID_BASE + zlib.crc32(name.encode()) % PROJECT_ID_SPAN
        while project in used:
            project += 1
        return project

    def _xfs_quota(self, runner: NodeRunner, fs: FileSystem, command: str) -> None:
        """One ``xfs_quota -x`` command (its own little language: our paths and numbers only)."""
        quota = fs.details["quota"]
        runner.run(["xfs_quota", "-x", "-c", command, quota["mountPoint"]])

    def _apply_quota(self, runner: NodeRunner, fs: FileSystem) -> None:
        project = fs.details["quota"]["project"]
        self._xfs_quota(runner, fs, f"project -s -p {fs.details['data']} {project}")
        self._xfs_quota(runner, fs, f"limit -p bhard={fs.allocation.capacity} {project}")

    def _clear_quota(self, runner: NodeRunner, fs: FileSystem) -> None:
        project = fs.details["quota"]["project"]
        self._xfs_quota(runner, fs, f"limit -p bsoft=0 bhard=0 {project}")
        if nodefs.exists(runner, fs.details["data"]):
            self._xfs_quota(runner, fs, f"project -C -p {fs.details['data']} {project}")

    def delete(self, fs: FileSystem) -> None:
        server = self.only_server(fs)
        runner = self.runner(server.name)
        directory = server.allocation_dir(fs.name)
        if not nodefs.exists(runner, directory):
            return
        if fs.details.get("quota"):
            self._clear_quota(runner, fs)
        nodefs.remove_tree(runner, directory)

    def restore(self, fs: FileSystem, mounts: Sequence[Mount] = ()) -> None:
        server = self.only_server(fs)
        runner = self.runner(server.name)
        if fs.state == CREATING:
            self.delete(fs)
            raise StateError(
                f"{self.type} buffer {fs.name} on {server.name} was being created when its agent stopped; "
                "what was made is removed, create it again"
            )
        if not nodefs.is_dir(runner, fs.details["data"]):
            raise StateError(
                f"on node {server.name}: {fs.details['data']} of {self.type} buffer {fs.name} is gone, and "
                "its data with it; delete the buffer"
            )
        if fs.details.get("quota"):
            self._apply_quota(runner, fs)
        for mount in mounts:
            self.mount(fs, mount)

    # --- compute node ---------------------------------------------------------------------------------

    def mount(self, fs: FileSystem, mount: Mount) -> None:
        require_ready(fs, "mount")
        runner = self.runner(mount.node)
        data = fs.details["data"]
        if not nodefs.is_dir(runner, data):
            self._attach_pool(runner, fs)
        if not nodefs.is_dir(runner, data):
            raise StateError(
                f"on node {mount.node}: {data} (storage node {fs.servers[0].name}) is not visible; a "
                f"{self.type} buffer is bind-mounted, so its pool must be reachable at the same path "
                "(the same host, or a shared file system)"
            )
        current = mounts.mounted_at(runner, mount.path)
        if current is None:
            mounts.prepare_mount_point(runner, mount.path)
            runner.run(["mount", "--bind", "--", data, mount.path])
            options = ",".join(["remount", "bind", *self.options.mount_options])
            try:
                runner.run(["mount", "-o", options, "--", mount.path])
            except Exception:
                mounts.unmount(runner, mount.path, what=f"{self.type} buffer {fs.name}")
                raise
        elif not self._is_ours(runner, fs, mount.path):
            raise StateError(
                f"on node {mount.node}: {mount.path} already has {current.source} ({current.fstype}) "
                f"mounted, not {self.type} buffer {fs.name}"
            )
        alloc = fs.allocation
        nodefs.ensure_owner(runner, mount.path, alloc.uid, alloc.gid, alloc.mode)

    def _attach_pool(self, runner: NodeRunner, fs: FileSystem) -> None:
        """Make the storage node's pool visible on this node: mount its device (published by the storage
        agent as ``details["poolDevice"]``, checked by ``details["poolUuid"]``) at the same pool
        directory, when nothing is mounted there. One kernel shares the superblock of a block device
        mounted twice, so both nodes see the same files (the dev cluster's nodes, one host)."""
        device = fs.details.get("poolDevice")
        pool_dir = fs.servers[0].pool_dir
        if not device or mounts.mounted_at(runner, pool_dir) is not None:
            return
        if not nodefs.exists(runner, device):
            raise StateError(
                f"on node {runner.name}: {device}, the pool device of storage node {fs.servers[0].name}, "
                f"is not visible, so neither is {self.type} buffer {fs.name}"
            )
        expected = fs.details.get("poolUuid")
        if expected:
            found = loop.fs_uuid(runner, device)
            if found != expected:
                raise StateError(
                    f"on node {runner.name}: {device} holds file system {found or 'none'}, not the pool "
                    f"{expected} of storage node {fs.servers[0].name}; refusing to mount it"
                )
        nodefs.make_dirs(runner, pool_dir)
        runner.run(["mount", "-o", "nodev,nosuid", "--", device, pool_dir], timeout=300)

    def _detach_pool(self, runner: NodeRunner, fs: FileSystem) -> None:
        """Unmount the pool :meth:`_attach_pool` mounted, once no buffer of it is mounted here.

        Only a pool mount with ``nodev`` (as :meth:`_attach_pool` makes it; a storage agent mounts its
        pool without) is taken for one, so a storage node's own pool is never unmounted.
        """
        device = fs.details.get("poolDevice")
        pool_dir = fs.servers[0].pool_dir
        if not device:
            return
        current = mounts.mounted_at(runner, pool_dir)
        if current is None or current.source != device or "nodev" not in current.options.split(","):
            return
        if any(target != pool_dir for target in mounts.mount_sources(runner, device)):
            return  # other buffers of the pool are still mounted here
        try:
            mounts.unmount(runner, pool_dir, what=f"the pool of storage node {fs.servers[0].name}")
        except StateError:
            return  # busy: in use by something else on this node; it stays

    def _is_ours(self, runner: NodeRunner, fs: FileSystem, path: str) -> bool:
        """``path`` is the buffer's directory (same device and inode)."""

        def identity(p: str) -> str:
            return runner.run(["stat", "-c", "%d:%i", "--", p]).stdout.strip()

        return identity(path) == identity(fs.details["data"])

    def unmount(self, fs: FileSystem, mount: Mount) -> None:
        runner = self.runner(mount.node)
        if mounts.mounted_at(runner, mount.path) is not None:
            if nodefs.is_dir(runner, fs.details["data"]) and not self._is_ours(runner, fs, mount.path):
                raise StateError(
                    f"on node {mount.node}: {mount.path} has another file system mounted, not "
                    f"{self.type} buffer {fs.name}; leaving it"
                )
            mounts.unmount(runner, mount.path, what=f"{self.type} buffer {fs.name}")
        nodefs.remove_empty_dir(runner, mount.path)
        self._detach_pool(runner, fs)

    def usage(self, fs: FileSystem, mount: Mount | None = None) -> Usage:
        if mount is not None:
            runner, path = self.runner(mount.node), mount.path
        else:
            runner, path = self.runner(fs.servers[0].name), fs.details["data"]
        try:
            out = runner.run(["du", "--summarize", "--one-file-system", "--block-size=1", "--", path])
        except CommandError as exc:
            raise StateError(f"cannot measure {self.type} buffer {fs.name}: {exc}") from None
        used = int(out.stdout.split()[0])
        capacity = fs.allocation.capacity
        enforcement = "kernel" if fs.details.get("quota") else "accounting"
        return Usage(capacity, capacity, used, max(0, capacity - used), enforcement)


class RawDriver(DirDriver):
    """``raw``: NNF's name for a buffer without a file system of its own; here, a directory buffer."""

    type = "raw"
