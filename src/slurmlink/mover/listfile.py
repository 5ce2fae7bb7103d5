"""DataWarp's ``type=list`` files: one ``SOURCE DESTINATION`` pair per line.

A relative SOURCE is relative to the list file's directory, a relative DESTINATION to the copy's
destination: users write lists before the job runs, when the buffer's path is not known, so the buffer's
side of a line is written relative to it. That side must be relative (``buffer_side``), so no line leads
out of the buffer; ``..`` is refused everywhere.
"""

from __future__ import annotations

import posixpath

from slurmlink.mover.spec import MoveError


def parse_list(
    text: str,
    name: str,
    *,
    destination: str | None = None,
    buffer_side: str | None = None,
) -> list[tuple[str, str]]:
    """The pairs of list file ``name`` as absolute paths; blank lines and ``#`` comments are skipped.

    Paths are split on white space (as DataWarp does), so they cannot contain blanks; a line that is
    not exactly two paths is an error naming the line, so a typo never copies half a list. Without
    ``destination`` both paths must be absolute.
    """
    bases = {"source": posixpath.dirname(name), "destination": destination}
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise MoveError(f"{name} line {number}: expected 'SOURCE DESTINATION', got {line!r}")
        resolved = []
        for side, path in zip(("source", "destination"), parts, strict=True):
            if ".." in path.split("/"):
                raise MoveError(f"{name} line {number}: {path!r} contains '..'")
            if path.startswith("/"):
                if side == buffer_side:
                    raise MoveError(f"{name} line {number}: {path!r} must be relative to the burst buffer")
                resolved.append(path)
                continue
            base = bases[side]
            if base is None or (side == "source" and destination is None):
                raise MoveError(f"{name} line {number}: {path!r} is not an absolute path")
            resolved.append(posixpath.join(base, path))
        pairs.append((resolved[0], resolved[1]))
    if not pairs:
        raise MoveError(f"{name}: the list names no files to copy")
    return pairs
