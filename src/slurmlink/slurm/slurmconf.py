"""Reading slurm.conf the way Slurm does, for the few values slurmlink needs from it.

Keys are case-insensitive; ``#`` starts a comment (``\\#`` is a literal one); a trailing backslash continues
a line; a line may hold several ``key=value`` pairs, and values may be double-quoted; ``Include FILE``
(relative to slurm.conf's directory, wildcards allowed) reads another file in place. ``NodeName=``,
``PartitionName=`` and the other record lines repeat: each is one entry, its other pairs its attributes.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Keys that start a record: the rest of the line describes that node, partition, ... (lower case).
RECORD_KEYS = frozenset({"nodename", "partitionname", "downnodes", "frontendname", "nodeset", "switchname"})
_MAX_INCLUDE_DEPTH = 10
# As Slurm's own parser (parse_config.c): spaces around "=", an optional operator ("+=", ...), quotes.
_PAIR = re.compile(r'([A-Za-z0-9_.]+)\s*[-*+/]?=\s*("(?:[^"\\]|\\.)*"|\S+)')


class SlurmConfError(ValueError):
    """An Include could not be read or nests too deeply."""


@dataclass(frozen=True)
class ConfEntry:
    """One ``key=value`` (or record line) of slurm.conf."""

    #: The key as written (``key.lower()`` is what Slurm compares).
    name: str
    value: str
    #: Line number (from 1) of the line it starts on, in ``source``.
    line: int
    source: Path | None = None
    #: For a record line (``NodeName=n1 CPUs=4``): its other pairs, keys in lower case.
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name.lower()


def _strip_comment(line: str) -> str:
    out = []
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and line[index + 1 : index + 2] == "#":
            out.append("#")
            index += 2
            continue
        if char == "#":
            break
        out.append(char)
        index += 1
    return "".join(out)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(first line number, text)`` with comments removed and continuation lines joined."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        line = _strip_comment(raw).rstrip()
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, " ".join(part.strip() for part in pending).strip()
        pending = []
    if pending:
        yield start, " ".join(part.strip() for part in pending).strip()


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def pairs(line: str) -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of one logical line (comment already removed), keys as written."""
    return [(m.group(1), _unquote(m.group(2))) for m in _PAIR.finditer(line)]


def line_keys(line: str) -> set[str]:
    """The lower-case keys one slurm.conf line sets (a record line counts as its first key only)."""
    found = pairs(_strip_comment(line))
    if not found:
        return set()
    if found[0][0].lower() in RECORD_KEYS:
        return {found[0][0].lower()}
    return {key.lower() for key, _ in found}


def parse(text: str, *, source: Path | None = None, _depth: int = 0) -> list[ConfEntry]:
    """The entries of slurm.conf ``text``, following ``Include`` lines (relative to ``source``'s dir)."""
    entries: list[ConfEntry] = []
    for number, line in _logical_lines(text):
        if not line:
            continue
        word, _, rest = line.partition(" ")
        if word.lower() == "include" and "=" not in word:
            entries += _include(rest.strip(), source, _depth)
            continue
        found = pairs(line)
        if not found:
            continue
        if found[0][0].lower() in RECORD_KEYS:
            attributes = {key.lower(): value for key, value in found[1:]}
            entries.append(ConfEntry(found[0][0], found[0][1], number, source, attributes))
        else:
            entries += [ConfEntry(key, value, number, source) for key, value in found]
    return entries


def _include(pattern: str, source: Path | None, depth: int) -> list[ConfEntry]:
    if depth >= _MAX_INCLUDE_DEPTH:
        raise SlurmConfError(f"Include {pattern} nests more than {_MAX_INCLUDE_DEPTH} deep")
    path = Path(_unquote(pattern))
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    matches = sorted(glob.glob(str(path))) if glob.has_magic(str(path)) else [str(path)]
    entries: list[ConfEntry] = []
    for name in matches:
        try:
            text = Path(name).read_text(errors="replace")
        except OSError as exc:
            raise SlurmConfError(f"cannot read {name} (Include in {source}): {exc.strerror}") from exc
        entries += parse(text, source=Path(name), _depth=depth + 1)
    return entries


def read(path: Path) -> list[ConfEntry]:
    """The entries of the slurm.conf at ``path`` and the files it includes. Raises OSError."""
    return parse(Path(path).read_text(errors="replace"), source=Path(path))


def values(entries: Iterable[ConfEntry], key: str) -> list[str]:
    """Every value of ``key`` (case-insensitive), in file order."""
    wanted = key.lower()
    return [entry.value for entry in entries if entry.key == wanted]


def value(entries: Iterable[ConfEntry], key: str, default: str | None = None) -> str | None:
    """The value Slurm uses for a single-valued ``key``: the last one set, else ``default``."""
    found = values(entries, key)
    return found[-1] if found else default


def read_value(path: Path, key: str, default: str | None = None) -> str | None:
    """``key``'s value in the slurm.conf at ``path``; ``default`` if unset or the file cannot be read."""
    try:
        return value(read(path), key, default)
    except (OSError, SlurmConfError):
        return default
