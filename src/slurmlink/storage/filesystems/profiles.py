"""Driver options from a ``StorageProfile`` section (``slurmlink.io/v1``, one section per type).

``xfs``: ``mkfsOptions`` (arguments of ``mkfs.xfs``), ``mountOptions``; ``gluster``: ``volumeOptions``
(``gluster volume set``), ``mountOptions`` (flags of the client mount point); ``dir``/``raw``:
``mountOptions`` (flags of the bind mount). A section left out, or a field left out, keeps the
driver's defaults (``nodev,nosuid`` mounts); an empty ``mountOptions`` list means no extra flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from slurmlink.storage.filesystems.dirfs import DirOptions
from slurmlink.storage.filesystems.errors import StateError
from slurmlink.storage.filesystems.gluster import GlusterOptions
from slurmlink.storage.filesystems.loop import XfsOptions


def options_from_profile(type_name: str, section: Mapping[str, Any] | None) -> Any:
    """The options of driver ``type_name`` for a profile's section of that type (None: defaults)."""
    section = section or {}
    mount = section.get("mountOptions")
    if type_name == "xfs":
        xfs = XfsOptions()
        if section.get("mkfsOptions") is not None:
            xfs = replace(xfs, mkfs_options=tuple(section["mkfsOptions"]))
        return xfs if mount is None else replace(xfs, mount_options=tuple(mount))
    if type_name == "gluster":
        gluster = GlusterOptions()
        if section.get("volumeOptions") is not None:
            gluster = replace(gluster, volume_options=tuple(sorted(section["volumeOptions"].items())))
        return gluster if mount is None else replace(gluster, mount_options=tuple(mount))
    if type_name in ("dir", "raw"):
        return DirOptions() if mount is None else DirOptions(mount_options=tuple(mount))
    raise StateError(f"no file-system driver for type {type_name!r}")
