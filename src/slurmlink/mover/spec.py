"""What a copy is asked to do, how far it got, and how it fails: the mover's public values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Mode = Literal["auto", "file", "directory", "list"]
MODES: tuple[str, ...] = ("auto", "file", "directory", "list")


class MoveError(Exception):
    """A copy failed; the message is for the job's user (what, which path, why)."""


class MoveCancelled(MoveError):
    """The copy was stopped on request before it finished."""


@dataclass(frozen=True)
class CopySpec:
    """One copy, run with the job's ``uid``/``gid``/``groups``.

    ``mode``: ``auto`` behaves like ``cp -a source destination``; ``file`` copies one file (into
    ``destination`` if that is a directory or ends in ``/``); ``directory`` copies the *contents* of
    ``source`` into ``destination``; ``list`` reads ``source`` as lines of ``SOURCE DESTINATION`` (a
    relative SOURCE is relative to the list's directory, a relative DESTINATION to ``destination``).
    ``buffer_side`` names the end inside a burst buffer: in ``list`` mode that end of every line must
    be relative, so no line leaves the buffer.
    """

    source: str
    destination: str
    mode: str = "auto"
    uid: int = -1
    gid: int = -1
    groups: tuple[int, ...] = ()
    workers: int = 8
    verify: bool = True
    buffer_side: Literal["source", "destination"] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = list(self.groups)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CopySpec:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["groups"] = tuple(int(g) for g in values.get("groups") or ())
        return cls(**values)


@dataclass
class MoveProgress:
    """Counts so far. ``bytes_done`` includes the bytes of files skipped on resume, so a finished copy
    has ``bytes_done == bytes_total``; ``files_done`` counts files copied (and verified) by this run."""

    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    directories: int = 0
    links: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    checksums_verified: int = 0
    #: Devices, fifos and sockets found in the source and not copied.
    specials_skipped: int = 0
    seconds: float = 0.0
    rate: float = 0.0

    def to_status(self) -> dict[str, Any]:
        """The counts as a DataMovement's ``status`` fields."""
        return {
            "filesTotal": self.files_total,
            "filesDone": self.files_done,
            "filesSkipped": self.files_skipped,
            "directories": self.directories,
            "links": self.links,
            "bytesTotal": self.bytes_total,
            "bytesDone": self.bytes_done,
            "checksumsVerified": self.checksums_verified,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MoveProgress:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
