"""Change events, the unit that watches deliver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change. ``object`` carries ``metadata.resourceVersion == revision``.

    For DELETED the object is its last state, stamped with the deleting revision, as the
    Kubernetes API server does.
    """

    revision: int
    type: EventType
    resource: str
    namespace: str
    name: str
    object: dict[str, Any]
