"""Background asyncio tasks whose result someone else awaits (or nobody, when it is not needed)."""

from __future__ import annotations

import asyncio
from typing import Any


def retrieve_exception(task: asyncio.Task[Any]) -> None:
    """A done-callback marking a background task's exception as seen, so asyncio does not log "Task
    exception was never retrieved" for a task whose awaiter, if any, handles the failure itself."""
    if not task.cancelled():
        task.exception()
