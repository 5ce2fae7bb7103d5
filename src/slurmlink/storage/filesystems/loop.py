"""XFS file systems on loop-attached backing files, on a storage node.

The storage node's device carries a file system mounted at its pool directory; an allocation's
capacity is one backing file there, preallocated with ``fallocate`` (so a full device fails the create
with ENOSPC instead of failing writes later), attached with ``losetup`` and formatted with
``mkfs.xfs``. The ``xfs`` driver hands the loop device to a compute node to mount; the ``gluster``
driver mounts one on each storage node as a brick. Used by those drivers; not a driver itself.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass

from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import CapacityError, CommandError, StateError
from slurmlink.storage.filesystems.runner import NodeRunner

MIB = 1 << 20
#: xfsprogs (5.19 and later) refuses new file systems below 300 MB unless it runs under fstests,
#: which it recognises by these variables. Buffers smaller than that (tests, small requests) use them.
XFS_SMALL_LIMIT = 300_000_000
_XFS_SMALL_ENV = ("TEST_DIR=/nonexistent", "TEST_DEV=/nonexistent", "QA_CHECK_FS=1")
#: mkfs.xfs cannot make a file system smaller than this (log and allocation groups).
XFS_MIN_SIZE = 16 * MIB
#: Seconds a detached loop device may take to go once its last user closes it.
DETACH_GRACE = 3.0


@dataclass(frozen=True)
class XfsOptions:
    """How XFS file systems are made and mounted (a StorageProfile's ``xfs`` section)."""

    #: Extra ``mkfs.xfs`` arguments, e.g. ``("-i", "maxpct=5")``.
    mkfs_options: tuple[str, ...] = ()
    #: ``mount -o`` options; nodev and nosuid keep device files and set-id programs of a user's
    #: buffer from being honoured.
    mount_options: tuple[str, ...] = ("nodev", "nosuid")
    #: Allocate the backing file's blocks at create time (``fallocate``); False makes it sparse, which
    #: lets a pool be overcommitted and then fail writes with I/O errors when the device fills.
    preallocate: bool = True
    #: Attach the loop device with direct I/O, bypassing the page cache of the backing file system.
    direct_io: bool = True


def round_size(size: int) -> int:
    """``size`` rounded up to whole MiB, at least the smallest XFS."""
    return max(XFS_MIN_SIZE, -(-size // MIB) * MIB)


def make_image(runner: NodeRunner, image: str, size: int, *, preallocate: bool) -> None:
    """Create the backing file of ``size`` bytes; CapacityError if the pool cannot hold it."""
    if preallocate:
        result = runner.run(["fallocate", "--length", str(size), "--", image], check=False)
        if result.returncode == 0:
            return
        nodefs.remove_file(runner, image)
        if "No space left" in result.stderr or "File too large" in result.stderr:
            raise CapacityError(
                f"on node {runner.name}: cannot allocate {size} bytes for {image}: {result.stderr.strip()}; "
                "free space in the pool or ask for less"
            )
        if "not supported" not in result.stderr:
            raise CommandError(runner.name, ["fallocate", image], result.returncode, result.stderr)
    # No fallocate on this file system (or sparse by choice): a sparse file of the size.
    runner.run(["truncate", "--size", str(size), "--", image])


def loop_devices(runner: NodeRunner, image: str) -> list[str]:
    """Loop devices attached to ``image`` on the node (by inode, as ``losetup -j`` compares)."""
    if not nodefs.exists(runner, image):
        return []
    out = runner.run(["losetup", "--associated", image, "--noheadings", "--output", "NAME"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def attach(runner: NodeRunner, image: str, *, direct_io: bool) -> str:
    """The loop device of ``image``, attaching it if it is not (``--nooverlap`` prints the device
    already attached to it instead, so no lookup comes first)."""
    argv = ["losetup", "--find", "--show", "--nooverlap"]
    if direct_io:
        argv.append("--direct-io=on")
    try:
        return runner.run([*argv, "--", image]).stdout.strip()
    except CommandError as exc:
        if "could not find any free loop device" in exc.output or "No such device" in exc.output:
            raise StateError(
                f"on node {runner.name}: no free loop device for {image}: load the loop module "
                "(`modprobe loop max_loop=64`) or give the node more /dev/loop* devices"
            ) from None
        raise


def detach(runner: NodeRunner, image: str) -> None:
    """Detach every loop device of ``image``. Raises if one is still in use (mounted somewhere):
    the kernel then detaches it by itself once it is unmounted, and the delete can be retried."""
    for device in loop_devices(runner, image):
        runner.run(["losetup", "--detach", device], check=False)
    # A device still open (just unmounted, its last reference going away) is marked to detach on its
    # last close; give that a moment before calling it busy.
    if nodefs.wait_for(lambda: not loop_devices(runner, image), DETACH_GRACE, interval=0.1):
        return
    still = loop_devices(runner, image)
    if still:
        raise StateError(
            f"on node {runner.name}: {', '.join(still)} (backing {image}) is still in use, probably "
            "mounted on a compute node: unmount it there, then delete again"
        )


def mkfs(
    runner: NodeRunner, device: str, size: int, fs_uuid: str, label: str, options: Sequence[str]
) -> None:
    """Format ``device`` as XFS with a known UUID (so a re-attached device can be recognised)."""
    argv = ["mkfs.xfs", "-q", "-f", "-m", f"uuid={fs_uuid}", "-L", label[:12], *options, device]
    if size < XFS_SMALL_LIMIT:
        argv = ["env", *_XFS_SMALL_ENV, *argv]
    runner.run(argv, timeout=600)


#: An XFS superblock starts with its magic; its UUID is the 16 bytes at offset 32.
_XFS_MAGIC = b"XFSB"
_XFS_UUID = slice(32, 48)


def _xfs_uuid_here(device: str) -> str | None:
    """The UUID of the XFS on ``device`` read from its superblock by this process; None when the
    device holds no XFS (:func:`fs_uuid` then asks ``blkid``), or cannot be read."""
    try:
        with open(device, "rb", buffering=0) as f:
            head = f.read(512)
    except OSError:
        return None
    if len(head) < _XFS_UUID.stop or head[:4] != _XFS_MAGIC:
        return None
    return str(uuidlib.UUID(bytes=head[_XFS_UUID]))


def fs_uuid(runner: NodeRunner, device: str) -> str | None:
    """The file-system UUID on ``device`` read from the device itself (no blkid cache)."""
    if runner.here:
        found = _xfs_uuid_here(device)
        if found is not None:
            return found
    result = runner.run(["blkid", "--probe", "--match-tag", "UUID", "--output", "value", device], check=False)
    return result.stdout.strip() or None


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def verified_device(runner: NodeRunner, image: str, expected_uuid: str) -> str | None:
    """The loop device of ``image`` if attached and carrying the file system ``expected_uuid``."""
    for device in loop_devices(runner, image):
        found = fs_uuid(runner, device)
        if found == expected_uuid:
            return device
        raise StateError(
            f"on node {runner.name}: {device} (backing {image}) holds file system {found or 'none'}, "
            f"not {expected_uuid}; the backing file was replaced or damaged"
        )
    return None
