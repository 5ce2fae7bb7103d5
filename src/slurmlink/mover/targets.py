"""Which source goes where: a copy's mode turned into concrete (source, destination, kind) targets.

Pure: what exists is asked of a ``kind_of`` function, so the rules are tested without files. A
``tree`` target copies the *contents* of a source directory into a destination directory.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from slurmlink.mover.spec import MODES, MoveError

#: What is at a path, not following a final symbolic link: None when nothing is there.
Kind = Literal["file", "directory", "link", "special"]
KindOf = Callable[[str], Kind | None]


@dataclass(frozen=True)
class Target:
    source: str
    destination: str
    kind: Literal["file", "tree"]


def _absolute(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise MoveError(f"the {what} {path!r} is not an absolute path")
    if any(part == ".." for part in path.split("/")):
        raise MoveError(f"the {what} {path!r} contains '..'")
    return path


def _normal(path: str) -> str:
    return posixpath.normpath(path) if path != "/" else path


def file_target(source: str, destination: str, kind_of: KindOf, dest_kind_of: KindOf | None = None) -> Target:
    """One file (or symbolic link, copied as a link); into ``destination`` if that is a directory
    or ends with ``/``. ``dest_kind_of`` (default ``kind_of``) may see through a trusted link."""
    _absolute(source, "source")
    _absolute(destination, "destination")
    kind = kind_of(_normal(source))
    if kind is None:
        raise MoveError(f"{source}: No such file or directory")
    if kind == "directory":
        raise MoveError(f"{source}: is a directory; copy it with type=directory")
    if kind == "special":
        raise MoveError(f"{source}: is a device, fifo or socket; only files are copied")
    into = destination.endswith("/") or (dest_kind_of or kind_of)(_normal(destination)) == "directory"
    name = posixpath.basename(_normal(source))
    final = posixpath.join(_normal(destination), name) if into else _normal(destination)
    return Target(_normal(source), final, "file")


def resolve(
    mode: str, source: str, destination: str, kind_of: KindOf, dest_kind_of: KindOf | None = None
) -> list[Target]:
    """The targets of a copy in ``mode`` other than ``list`` (whose pairs each resolve as ``file``).

    ``dest_kind_of`` answers for destinations (default ``kind_of``): there a link the user may follow
    to a directory counts as the directory, as ``cp`` follows it.
    """
    dest_kind = dest_kind_of or kind_of
    if mode not in MODES:
        raise MoveError(f"unknown copy mode {mode!r} (one of {', '.join(MODES)})")
    _absolute(source, "source")
    _absolute(destination, "destination")
    if mode == "file":
        return [file_target(source, destination, kind_of, dest_kind)]
    kind = kind_of(_normal(source))
    if kind is None:
        raise MoveError(f"{source}: No such file or directory")
    if mode == "directory":
        if kind != "directory":
            raise MoveError(f"{source}: is not a directory; copy it with type=file")
        return [Target(_normal(source), _normal(destination), "tree")]
    if mode == "auto":
        if kind != "directory":
            return [file_target(source, destination, kind_of, dest_kind)]
        if dest_kind(_normal(destination)) == "directory":
            name = posixpath.basename(_normal(source))
            return [Target(_normal(source), posixpath.join(_normal(destination), name), "tree")]
        return [Target(_normal(source), _normal(destination), "tree")]
    raise MoveError("a list copy resolves each of its lines as a file")


def list_targets(
    pairs: list[tuple[str, str]], kind_of: KindOf, dest_kind_of: KindOf | None = None
) -> list[Target]:
    return [file_target(source, destination, kind_of, dest_kind_of) for source, destination in pairs]
