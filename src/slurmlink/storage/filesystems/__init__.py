"""Burst-buffer file systems behind one driver interface (see :mod:`.interface`).

One module per driver: :mod:`.xfs` (an XFS file system per compute node on a storage node's loop
device), :mod:`.gluster` (one GlusterFS volume over the allocated storage nodes, FUSE-mounted on every
compute node; :mod:`.glusterd` runs glusterd per storage node), :mod:`.dirfs` (``dir``/``raw``: a
directory with capacity enforced by an XFS project quota or by accounting). Drivers act on nodes only
through :class:`~.runner.NodeRunner`\\ s, found by node name.

``driver(type, runners, options)`` builds the driver of a type; :data:`DRIVERS` lists them;
``options_from_profile(type, section)`` reads a StorageProfile's section into its options.
"""

from __future__ import annotations

from typing import Any

from slurmlink.storage.filesystems.dirfs import DirDriver, DirOptions, RawDriver
from slurmlink.storage.filesystems.errors import (
    CapacityError,
    CommandError,
    MissingToolError,
    NotSupportedError,
    StateError,
    StorageError,
    TransientError,
)
from slurmlink.storage.filesystems.gluster import GlusterDriver, GlusterOptions
from slurmlink.storage.filesystems.glusterd import Glusterd
from slurmlink.storage.filesystems.interface import (
    CREATING,
    READY,
    Allocation,
    FileSystem,
    FileSystemDriver,
    Mount,
    StorageNode,
    Usage,
)
from slurmlink.storage.filesystems.loop import XfsOptions
from slurmlink.storage.filesystems.profiles import options_from_profile
from slurmlink.storage.filesystems.runner import (
    NodeRunner,
    RunnerLookup,
    local_runners,
    static_runners,
)
from slurmlink.storage.filesystems.xfs import XfsDriver

#: Every file-system type, by the name directives use (``#DW jobdw type=...``).
DRIVERS: dict[str, type[FileSystemDriver]] = {
    XfsDriver.type: XfsDriver,
    GlusterDriver.type: GlusterDriver,
    DirDriver.type: DirDriver,
    RawDriver.type: RawDriver,
}


def driver(type_name: str, runners: RunnerLookup = local_runners, options: Any = None) -> FileSystemDriver:
    """The driver of ``type_name`` (StateError naming the known types if there is none)."""
    try:
        cls = DRIVERS[type_name]
    except KeyError:
        raise StateError(
            f"no file-system driver for type {type_name!r}; known: {', '.join(sorted(DRIVERS))}"
        ) from None
    return cls(runners, options)


__all__ = [
    "CREATING",
    "DRIVERS",
    "READY",
    "Allocation",
    "CapacityError",
    "CommandError",
    "DirDriver",
    "DirOptions",
    "FileSystem",
    "FileSystemDriver",
    "GlusterDriver",
    "GlusterOptions",
    "Glusterd",
    "MissingToolError",
    "Mount",
    "NodeRunner",
    "NotSupportedError",
    "RawDriver",
    "RunnerLookup",
    "StateError",
    "StorageError",
    "StorageNode",
    "TransientError",
    "Usage",
    "XfsDriver",
    "XfsOptions",
    "driver",
    "local_runners",
    "options_from_profile",
    "static_runners",
]
