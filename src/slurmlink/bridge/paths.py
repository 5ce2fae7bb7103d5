"""The pure rules behind the bridge's file operations: which paths stay inside a job's directory,
which archive entries may be unpacked, and how output globs match.

Shared by the parent (:mod:`slurmlink.bridge.files`, which checks early so a mistake never starts a
process) and the child (:mod:`slurmlink.bridge.asuser`, which checks again on what it really sees). No
file is touched here.
"""

from __future__ import annotations

import fnmatch
import json
import stat
from dataclasses import dataclass

#: Below this many uncompressed bytes a zip entry's compression ratio is not judged: small files of
#: zeros or repeated text compress far better than 100:1 and are harmless.
RATIO_FLOOR = 1 << 20
#: The helper's exit status for a refusal, whose message is one JSON line on its stderr.
REFUSED = 3
LINK_REFUSED = "a link is refused (archives may hold files and directories only)"


class FilesError(Exception):
    """A file operation for a job was refused or failed; the message says what and why, for users."""


class FileMissing(FilesError):
    """What was to be read does not exist (a 404 to an API client)."""


@dataclass(frozen=True)
class UnpackLimits:
    """What an input archive may hold. ``max_ratio`` bounds a zip entry's (and the whole zip's)
    uncompressed size over its compressed size, refusing zip bombs before anything is inflated."""

    max_entries: int = 10_000
    max_bytes: int = 10 << 30
    max_ratio: float = 100.0

    def to_json(self) -> dict[str, float]:
        return {"max_entries": self.max_entries, "max_bytes": self.max_bytes, "max_ratio": self.max_ratio}

    @classmethod
    def from_json(cls, value: dict[str, float]) -> UnpackLimits:
        return cls(int(value["max_entries"]), int(value["max_bytes"]), float(value["max_ratio"]))


@dataclass(frozen=True)
class CollectedFile:
    """One output: its path relative to the job directory (POSIX), size and hex SHA-256."""

    path: str
    size: int
    sha256: str


def quoted(text: str) -> str:
    """``text`` in double quotes, control characters escaped (names come from users and archives)."""
    return json.dumps(text, ensure_ascii=False)


def relative_parts(path: str, what: str = "path", *, allow_empty: bool = False) -> list[str]:
    """The components of ``path``, a path inside a job's directory (``.`` and empty ones dropped).

    Absolute paths and ``..`` components are refused outright rather than normalised: a path that
    even looks like it leaves the directory is a mistake or an attack.
    """
    if not isinstance(path, str):
        raise FilesError(f"{what} {path!r}: must be text")
    if "\x00" in path:
        raise FilesError(f"{what} {quoted(path)}: must not contain a NUL character")
    if path.startswith("/"):
        raise FilesError(f"{what} {quoted(path)}: must be relative to the job directory, not absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FilesError(f"{what} {quoted(path)}: a path that leaves the job directory is refused")
    if not parts and not allow_empty:
        raise FilesError(f"{what} {quoted(path)}: must name something inside the job directory")
    return parts


def check_name(name: str, what: str = "name") -> str:
    """``name`` as one path component: not empty, no ``/``, not ``.`` or ``..``, no NUL, ≤ 255 bytes."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise FilesError(f"{what} {quoted(str(name))}: must be a single file name (no '/', not '.' or '..')")
    if len(name.encode(errors="surrogateescape")) > 255:
        raise FilesError(f"{what} {quoted(name)}: longer than 255 bytes")
    return name


# -- archive entries ----------------------------------------------------------------------------


def entry_error(name: str, why: str) -> FilesError:
    return FilesError(f"input archive entry {quoted(name)}: {why}")


def entry_parts(name: str) -> list[str]:
    """The components of an archive entry's name; empty for the archive's own ``./``.

    Raises FilesError naming the entry for an absolute path, a ``..`` component or a NUL.
    """
    if "\x00" in name:
        raise entry_error(name, "a name with a NUL character is refused")
    if name.startswith("/"):
        raise entry_error(name, "an absolute path is refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise entry_error(name, "a path that leaves the job directory is refused")
    return parts


def zip_entry_kind(name: str, external_attr: int) -> str:
    """``file`` or ``directory`` for a zip entry, from its Unix mode when the archiver recorded one.

    Links, devices, FIFOs and sockets raise FilesError naming the entry.
    """
    mode = (external_attr >> 16) & 0xFFFF
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise entry_error(name, LINK_REFUSED)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise entry_error(name, "a device, FIFO or socket is refused")
    return "directory" if kind == stat.S_IFDIR or name.endswith("/") else "file"


def check_ratio(what: str, size: int, compressed: int, limits: UnpackLimits) -> None:
    """Refuse ``what`` (an entry, or a whole zip) when it inflates more than ``limits.max_ratio``."""
    if size > RATIO_FLOOR and size > limits.max_ratio * max(compressed, 1):
        ratio = size / max(compressed, 1)
        raise FilesError(
            f"{what}: expands {ratio:.0f} times ({size} bytes from {compressed}), more than the"
            f" {limits.max_ratio:g} allowed; refused as a possible zip bomb"
        )


# -- globs --------------------------------------------------------------------------------------

State = tuple[int, int]


def _magic(component: str) -> bool:
    return any(c in component for c in "*?[")


class Globs:
    """Output globs with :func:`glob.glob` semantics (``recursive=True``), matched one name at a time
    while the caller walks the job directory itself, so that no link is ever followed.

    As in :func:`glob.glob`: ``*``, ``?`` and ``[...]`` stay within a name, ``**`` as a whole
    component matches any number of directories (none included), and a wildcard matches a name
    starting with ``.`` only when its pattern starts with ``.`` too. A state is (pattern, how many of
    its components are matched).
    """

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[list[str]] = []
        for pattern in patterns:
            parts = relative_parts(pattern, "output glob", allow_empty=True)
            collapsed: list[str] = []
            for part in parts:
                if not (part == "**" and collapsed and collapsed[-1] == "**"):
                    collapsed.append(part)
            self.patterns.append(collapsed)

    def start(self) -> frozenset[State]:
        """The states at the job directory itself."""
        return self._closure({(p, 0) for p in range(len(self.patterns))})

    def step(self, states: frozenset[State], name: str) -> frozenset[State]:
        """The states after descending to ``name``; empty when no pattern can match there or below."""
        out: set[State] = set()
        for p, i in states:
            parts = self.patterns[p]
            if i == len(parts):
                continue
            part = parts[i]
            if part == "**":
                if not name.startswith("."):
                    out.add((p, i))
            elif self._match(name, part):
                out.add((p, i + 1))
        return self._closure(out)

    def matched(self, states: frozenset[State]) -> bool:
        """Whether the path that led to ``states`` matches a pattern."""
        return any(i == len(self.patterns[p]) for p, i in states)

    def alive(self, states: frozenset[State]) -> bool:
        """Whether something below the path that led to ``states`` may still match."""
        return any(i < len(self.patterns[p]) for p, i in states)

    def _closure(self, states: set[State]) -> frozenset[State]:
        todo = list(states)
        while todo:
            p, i = todo.pop()
            parts = self.patterns[p]
            if i < len(parts) and parts[i] == "**" and (p, i + 1) not in states:
                states.add((p, i + 1))
                todo.append((p, i + 1))
        return frozenset(states)

    @staticmethod
    def _match(name: str, part: str) -> bool:
        if not _magic(part):
            return name == part
        if name.startswith(".") and not part.startswith("."):
            return False
        return fnmatch.fnmatchcase(name, part)
