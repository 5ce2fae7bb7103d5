"""The driver interface every burst-buffer file system implements, and the records they share.

A driver is built with a :data:`~slurmlink.storage.filesystems.runner.RunnerLookup` (node name ->
runner) and its options, and speaks in names and plain data, so the control plane can store what it
gets back and the node agents can call it from any process:

* :meth:`FileSystemDriver.create` ``(allocation, servers) -> FileSystem`` makes the file system on the
  storage nodes (``servers``). It is idempotent: called again for an allocation that exists it returns
  the existing one (re-attached), and a create that was interrupted (an agent killed mid-way) is rolled
  back and done again. A create that fails rolls back what it did and leaves nothing.
* :meth:`FileSystemDriver.mount` / :meth:`FileSystemDriver.unmount` ``(fs, Mount(node, path))`` on a
  compute node: idempotent, the file system's root owned by the allocation's uid/gid with its mode.
* :meth:`FileSystemDriver.delete` ``(fs)`` removes everything on the storage nodes (idempotent).
* :meth:`FileSystemDriver.restore` ``(fs, mounts)`` after an agent or node restart re-attaches what
  the kernel lost (loop devices, brick mounts, bricks) and re-mounts the given mounts; no format.
* :meth:`FileSystemDriver.discover` ``(server)`` lists the file systems recorded on a storage node
  (its on-disk records), which is what ``restore`` needs after the Python objects are gone.
* :meth:`FileSystemDriver.usage` ``(fs, mount=None) -> Usage``: capacity, size, used, available.

On each storage node an allocation lives in one directory, ``<pool_dir>/<allocation name>/``, with its
record ``record.json`` next to the driver's files; deleting it is removing that directory.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from slurmlink.storage.filesystems import runner as nodefs
from slurmlink.storage.filesystems.errors import StateError, StorageError
from slurmlink.storage.filesystems.runner import NodeRunner, RunnerLookup, local_runners

#: Allocation names: also gluster volume names and directory names, so a conservative alphabet.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
RECORD_FILE = "record.json"
RECORD_VERSION = 1

#: Record states.
CREATING = "creating"
READY = "ready"


@dataclass(frozen=True)
class Allocation:
    """What the control plane asks for: a named file system of ``capacity`` bytes for one user."""

    name: str
    capacity: int
    uid: int
    gid: int
    #: Mode of the file system's root (the job's ``$DW_JOB_...`` directory).
    mode: int = 0o700

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise StateError(
                f"allocation name {self.name!r} must be 1-63 characters of a-z, 0-9, '-', '_', "
                "starting with a letter or digit"
            )
        if self.capacity <= 0:
            raise StateError(f"allocation {self.name}: capacity must be positive, not {self.capacity}")
        if self.uid < 0 or self.gid < 0:
            raise StateError(f"allocation {self.name}: uid and gid must be non-negative")
        if not 0 <= self.mode <= 0o7777:
            raise StateError(f"allocation {self.name}: mode {self.mode:o} is not a permission mode")


@dataclass(frozen=True)
class StorageNode:
    """A storage node as a driver sees it; its runner comes from the driver's lookup, by ``name``."""

    name: str
    #: Directory on the node (on its storage device) that holds one directory per allocation.
    pool_dir: str
    #: The node's address as other nodes reach it (network file systems: gluster).
    address: str | None = None
    #: The node's own state (daemons such as glusterd); default ``<pool_dir>/.node``.
    state_dir: str | None = None

    def __post_init__(self) -> None:
        nodefs.check_path(self.pool_dir, f"pool directory of storage node {self.name}")
        if self.state_dir is not None:
            nodefs.check_path(self.state_dir, f"state directory of storage node {self.name}")

    @property
    def node_state_dir(self) -> str:
        return self.state_dir or f"{self.pool_dir}/.node"

    def allocation_dir(self, name: str) -> str:
        return f"{self.pool_dir}/{name}"


@dataclass(frozen=True)
class Mount:
    """A file system's mount on a compute node, at ``path`` as seen on that node."""

    node: str
    path: str

    def __post_init__(self) -> None:
        nodefs.check_path(self.path, f"mount point on node {self.node}")


@dataclass(frozen=True)
class FileSystem:
    """A created (or being created) file system: JSON-serialisable, kept on every server."""

    type: str
    allocation: Allocation
    servers: tuple[StorageNode, ...]
    state: str = CREATING
    #: Driver-specific facts (backing file, file-system UUID, volume, bricks, quota project).
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.allocation.name

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "type": self.type,
            "state": self.state,
            "allocation": asdict(self.allocation),
            "servers": [asdict(server) for server in self.servers],
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileSystem:
        if data.get("version") != RECORD_VERSION:
            raise StateError(f"file-system record version {data.get('version')!r} is not supported")
        return cls(
            type=data["type"],
            allocation=Allocation(**data["allocation"]),
            servers=tuple(StorageNode(**server) for server in data["servers"]),
            state=data["state"],
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class Usage:
    """How full a file system is. ``used``/``size``/``available`` are None where not measurable."""

    capacity: int
    size: int | None
    used: int | None
    available: int | None
    #: "kernel" when writes past the capacity fail (ENOSPC), "accounting" when they are only counted.
    enforcement: str

    @property
    def over_capacity(self) -> bool:
        return self.used is not None and self.used > self.capacity


class Rollback:
    """Undo steps of a create, run in reverse order if it fails (best effort, first error kept)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    @contextlib.contextmanager
    def guard(self) -> Iterator[Rollback]:
        try:
            yield self
        except BaseException as exc:
            failures = []
            for what, step in reversed(self._steps):
                try:
                    step()
                except Exception as undo_exc:
                    failures.append(f"{what}: {undo_exc}")
            if failures:
                exc.add_note("rolling back also failed, left behind: " + "; ".join(failures))
            raise
        finally:
            self._steps.clear()


class FileSystemDriver(ABC):
    """One file-system type. Subclasses set :attr:`type` and implement the operations."""

    type: ClassVar[str]
    #: What limits a buffer's size: "kernel" (writes past it fail with ENOSPC), "accounting" (use is
    #: measured and reported, not stopped) or "none".
    enforcement: str = "kernel"

    def __init__(self, runners: RunnerLookup = local_runners, options: Any = None) -> None:
        """``options``: the driver's own options dataclass (None: its defaults)."""
        self.runners = runners

    # --- the interface -------------------------------------------------------------------------------

    @abstractmethod
    def create(self, allocation: Allocation, servers: Sequence[StorageNode]) -> FileSystem:
        """Make the file system on ``servers``; idempotent; rolls back on failure."""

    @abstractmethod
    def delete(self, fs: FileSystem) -> None:
        """Remove the file system and everything it used on its servers; idempotent."""

    @abstractmethod
    def mount(self, fs: FileSystem, mount: Mount) -> None:
        """Mount it on a compute node, root owned by the allocation's user; idempotent."""

    @abstractmethod
    def unmount(self, fs: FileSystem, mount: Mount) -> None:
        """Unmount it from a compute node and remove the (empty) mount point; idempotent."""

    @abstractmethod
    def restore(self, fs: FileSystem, mounts: Sequence[Mount] = ()) -> None:
        """Re-attach it on its servers after a restart and re-mount ``mounts``; never formats."""

    @abstractmethod
    def usage(self, fs: FileSystem, mount: Mount | None = None) -> Usage:
        """Capacity and use, measured through ``mount`` when given (else on the servers)."""

    def discover(self, server: StorageNode) -> list[FileSystem]:
        """The file systems of this type recorded on ``server`` (from its on-disk records)."""
        return [fs for fs in self.all_records(server) if fs.type == self.type]

    def all_records(self, server: StorageNode) -> list[FileSystem]:
        """Every file-system record in ``server``'s pool directory, whatever its type."""
        runner = self.runner(server.name)
        found = []
        for entry in sorted(nodefs.list_dir(runner, server.pool_dir)):
            if entry.startswith("."):
                continue
            data = nodefs.read_json(runner, f"{server.allocation_dir(entry)}/{RECORD_FILE}")
            if data is not None:
                found.append(FileSystem.from_json(data))
        return found

    # --- helpers for the drivers ----------------------------------------------------------------------

    def runner(self, node: str) -> NodeRunner:
        return self.runners(node)

    def read_record(self, server: StorageNode, name: str) -> FileSystem | None:
        data = nodefs.read_json(self.runner(server.name), f"{server.allocation_dir(name)}/{RECORD_FILE}")
        return None if data is None else FileSystem.from_json(data)

    def write_record(self, server: StorageNode, fs: FileSystem) -> None:
        runner = self.runner(server.name)
        directory = server.allocation_dir(fs.name)
        nodefs.make_dirs(runner, directory, mode=0o700)
        nodefs.write_json(runner, f"{directory}/{RECORD_FILE}", fs.to_json())

    def existing(self, allocation: Allocation, servers: Sequence[StorageNode]) -> FileSystem | None:
        """The recorded file system for ``allocation`` on ``servers``, if a create was done or begun.

        A record for the same name but another request (size, owner, type, servers) is an error: names
        are unique and never reused while their file system exists.
        """
        for server in servers:
            fs = self.read_record(server, allocation.name)
            if fs is None:
                continue
            if (
                fs.type != self.type
                or fs.allocation != allocation
                or [s.name for s in fs.servers] != [s.name for s in servers]
            ):
                raise StateError(
                    f"on node {server.name}: {server.allocation_dir(allocation.name)} holds another "
                    f"file system ({fs.type}, {fs.allocation}, servers "
                    f"{', '.join(s.name for s in fs.servers)}); delete it or use another name"
                )
            return fs
        return None

    def begin_create(self, allocation: Allocation, servers: Sequence[StorageNode]) -> FileSystem | None:
        """Start a create: the ready file system if it exists (restored), else None after clearing
        what an interrupted create left and recording the new one as being created."""
        if not servers:
            raise StateError(f"{self.type} file system {allocation.name}: no storage node given")
        if len({s.name for s in servers}) != len(servers):
            raise StateError(f"{self.type} file system {allocation.name}: a storage node is listed twice")
        previous = self.existing(allocation, servers)
        if previous is not None:
            if previous.state == READY:
                self.restore(previous)
                return previous
            self.delete(previous)
        return None

    def finish_create(self, fs: FileSystem) -> FileSystem:
        ready = replace(fs, state=READY)
        for server in fs.servers:
            self.write_record(server, ready)
        return ready

    def only_server(self, fs_or_servers: FileSystem | Sequence[StorageNode]) -> StorageNode:
        servers = fs_or_servers.servers if isinstance(fs_or_servers, FileSystem) else fs_or_servers
        if len(servers) != 1:
            raise StateError(
                f"a {self.type} file system lives on exactly one storage node, not {len(servers)}"
            )
        return servers[0]

    def statfs(self, runner: NodeRunner, path: str, timeout: float = 30) -> tuple[int, int, int]:
        """``(size, used, available)`` in bytes of the file system holding ``path`` on the node."""
        out = runner.run(["stat", "-f", "-c", "%S %b %f %a", "--", path], timeout=timeout).stdout.split()
        block, blocks, free, avail = (int(v) for v in out)
        return blocks * block, (blocks - free) * block, avail * block


def require_ready(fs: FileSystem, action: str) -> None:
    if fs.state != READY:
        raise StorageError(f"{fs.type} file system {fs.name} is not ready ({fs.state}); cannot {action} it")
