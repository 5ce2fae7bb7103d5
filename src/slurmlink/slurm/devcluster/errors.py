"""The dev cluster's error, and the wait that raises it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from slurmlink import supervise

LogFn = Callable[[str], None]
_T = TypeVar("_T")


class DevClusterError(RuntimeError):
    """The dev cluster could not be set up, started or stopped; the message says what to do."""


def stderr_log(message: str) -> None:
    print(f"[dev-cluster] {message}", file=sys.stderr, flush=True)


def wait_until(
    probe: Callable[[], _T | None], timeout: float, what: str, check: Callable[[], None] | None = None
) -> _T:
    """:func:`slurmlink.supervise.wait_until`, failing with :class:`DevClusterError`."""
    try:
        return supervise.wait_until(probe, timeout, what, check)
    except supervise.SupervisionError as exc:
        raise DevClusterError(str(exc)) from None
