"""The mover's public values: what a copy is asked to do, how far it got, and how it fails."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODES = ("file", "directory", "list", "auto")


class MoveError(Exception):
    """A copy failed; the message is for the job's user: what failed, which path, why."""


class MoveCancelled(MoveError):
    """The copy was stopped on request before it finished."""


def how_it_ended(code: int) -> str:
    """A copying process's exit status (negative: the signal that killed it) in words."""
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


@dataclass(frozen=True)
class CopySpec:
    """One copy, run with the job's ``uid``/``gid``/``groups`` (never root).

    ``mode``: ``file`` one file (into ``destination`` if that is a directory or ends in ``/``);
    ``directory`` the contents of ``source`` into ``destination``; ``list`` ``source`` is a file of
    ``SOURCE DESTINATION`` lines, each copied as ``file``; ``auto`` like ``cp -a source destination``.
    """

    source: str
    destination: str
    mode: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    workers: int = 8
    verify: bool = True
    #: The end inside a burst buffer ("source" or "destination"), if any: in ``list`` mode that end of
    #: every line must be relative to it, so no line leads out of the buffer.
    buffer_side: str | None = None
    #: Write small files under their own names instead of a temporary name renamed once complete:
    #: for a destination nobody reads until the copy has ended (a job's new buffer before the job
    #: starts). A file cut short (error, cancel) is removed; one left by a killed run is replaced
    #: when the copy is resumed. A rename per file is a sixth of the work of copying small files.
    in_place: bool = False

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
    """Counts so far.

    Files skipped on resume count in ``bytes_total`` and ``bytes_done`` too, so a finished copy has
    ``bytes_done == bytes_total``; ``files_done`` counts the files this run copied.
    """

    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    directories: int = 0
    links: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    checksums_verified: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    #: Devices, fifos and sockets found in the source and not copied.
    specials_skipped: int = 0

    def to_status(self) -> dict[str, Any]:
        """The counts under the camelCase names of an API object's ``status``."""
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
            "specialsSkipped": self.specials_skipped,
        }
