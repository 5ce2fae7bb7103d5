"""The resume journal: JSON lines the parent appends as the worker reports files verified.

The first copy's choice of targets is recorded too: in ``auto`` mode "into the destination or as
it" depends on whether the destination exists, which the first run itself changes. Each record is
flushed on its own, so a killed agent loses at most the line it was writing; a torn last line is
ignored on reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from slurmlink.mover.spec import CopySpec


def spec_key(spec: CopySpec) -> list[str]:
    return [spec.source, spec.destination, spec.mode]


def load(path: Path, spec: CopySpec) -> tuple[list[list[str]] | None, list[dict[str, Any]]]:
    """The targets and verified records a journal holds for ``spec`` (none if it is missing)."""
    targets: list[list[str]] | None = None
    done: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if not isinstance(record, dict):
            continue
        if record.get("t") == "targets" and record.get("spec") == spec_key(spec):
            targets = record.get("targets")
        elif record.get("t") == "v":
            done.append(record)
    return targets, done


class Journal:
    """Appends records to the journal at ``path`` (made 0600, as the caller)."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file: TextIO = os.fdopen(fd, "a")
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            self._file.write("\n")  # after a torn line, start a fresh one

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def verified_count(path: Path) -> int:
    """How many files a journal records as verified, whatever copy it belongs to (tests, tools)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    count = 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        count += isinstance(record, dict) and record.get("t") == "v"
    return count
