"""Watch events as clients see them, independent of how the server stores them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    """One frame of a watch: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR, with the object in the
    watcher's version (a Status for ERROR)."""

    type: str
    object: Obj
