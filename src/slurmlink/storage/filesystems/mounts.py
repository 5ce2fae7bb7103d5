"""Mount points on a node: what is mounted where, preparing a mount point, unmounting.

Everything runs through the node's runner, so the node's own mount namespace is the one consulted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import CommandError, StateError
from slurmlink.storage.filesystems.runner import NodeRunner


@dataclass(frozen=True)
class MountInfo:
    target: str
    source: str
    fstype: str
    options: str


#: This process's mount table (the kernel's own, so nothing is read from a mounted file system).
MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space, ...) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _merged(vfs: str, fs: str) -> str:
    """findmnt's OPTIONS: the mount's options, then the file system's not already among them."""
    seen = vfs.split(",")
    return ",".join([*seen, *(o for o in fs.split(",") if o and o not in seen)])


def mount_table(path: str = MOUNTINFO) -> list[MountInfo]:
    """Every mount of this process's namespace, in mount order (a later one on the same point is on
    top). SOURCE as findmnt shows it: a bind mount of part of a file system adds ``[root]``."""
    found = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            head, _, tail = line.rstrip("\n").partition(" - ")
            fields, rest = head.split(" "), tail.split(" ")
            if len(fields) < 6 or len(rest) < 3:
                continue
            root, target, options = _unescape(fields[3]), _unescape(fields[4]), fields[5]
            fstype, source, fs_options = rest[0], _unescape(rest[1]), rest[2]
            if root != "/":
                source = f"{source}[{root}]"
            found.append(MountInfo(target, source, fstype, _merged(options, fs_options)))
    return found


def mounted_at(runner: NodeRunner, path: str) -> MountInfo | None:
    """What is mounted exactly at ``path`` on the node (the top mount if several), or None.

    Reads the mount table (the agent's own, or ``findmnt`` on another node) without touching the
    file system, so a dead FUSE mount does not hang it.
    """
    if runner.here:
        return next((m for m in reversed(mount_table()) if m.target == path), None)
    result = runner.run(
        ["findmnt", "--json", "--mountpoint", path, "--output", "TARGET,SOURCE,FSTYPE,OPTIONS"], check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        return None
    entries = json.loads(result.stdout).get("filesystems", [])
    if not entries:
        return None
    # Several mounts stacked on one point are listed as children; the last one is on top.
    entry = entries[-1]
    while entry.get("children"):
        entry = entry["children"][-1]
    return MountInfo(entry["target"], entry.get("source") or "", entry.get("fstype") or "", entry["options"])


def mount_sources(runner: NodeRunner, source: str) -> list[str]:
    """Mount points on the node whose source is ``source`` (a device, ``host:volume``)."""
    if runner.here:
        return [m.target for m in mount_table() if m.source.split("[", 1)[0] == source]
    result = runner.run(["findmnt", "--json", "--source", source, "--output", "TARGET"], check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return [entry["target"] for entry in json.loads(result.stdout).get("filesystems", [])]


def prepare_mount_point(runner: NodeRunner, path: str) -> None:
    """Create the mount point (and its parents) and refuse one reached through a symbolic link.

    The drivers mount as root: a link in the path (say, in a directory a user controls) would put the
    mount somewhere else.
    """
    nodefs.check_path(path, "mount point")
    nodefs.make_dirs(runner, path)
    real = nodefs.real_path(runner, path)
    if real != path:
        raise StateError(
            f"on node {runner.name}: mount point {path} resolves to {real} through a symbolic link; "
            "use a path without links, in directories only root can write"
        )


def unmount(runner: NodeRunner, path: str, *, what: str) -> bool:
    """Unmount whatever is mounted at ``path`` (all stacked mounts); True if something was.

    A busy mount raises with the way to find who holds it.
    """
    found = False
    while mounted_at(runner, path) is not None:
        found = True
        try:
            runner.run(["umount", "--", path], timeout=60)
        except CommandError as exc:
            if mounted_at(runner, path) is None:
                break  # gone meanwhile (a FUSE client that exited, a lazy umount): what was wanted
            if "busy" in exc.output:
                raise StateError(
                    f"on node {runner.name}: {what} at {path} is busy: processes still use it "
                    f"(see `fuser -vm {path}`); stop them and unmount again"
                ) from None
            raise
    return found
