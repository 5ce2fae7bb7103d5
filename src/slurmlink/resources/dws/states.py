"""The seven Workflow states and their order."""

from __future__ import annotations

from typing import Literal

STATES: tuple[str, ...] = ("Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown")
State = Literal["Proposal", "Setup", "DataIn", "PreRun", "PostRun", "DataOut", "Teardown"]

WORKFLOW_STATUSES = ("Completed", "DriverWait", "TransientCondition", "Error")
DRIVER_STATUSES = ("Pending", "Queued", "Running", "Completed", "TransientCondition", "Error", "DriverWait")


def index(state: str) -> int:
    """Position in the state order; -1 for the empty (not yet adopted) state."""
    return STATES.index(state) if state in STATES else -1


def next_state(state: str) -> str:
    """Upstream ``next()``: the empty state's next is Proposal; Teardown is last."""
    i = index(state)
    return STATES[min(i + 1, len(STATES) - 1)]


def is_after(a: str, b: str) -> bool:
    """``a`` comes strictly later than ``b``."""
    return index(a) > index(b)
