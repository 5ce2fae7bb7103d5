"""The bank's Prometheus metrics: each account's balance, and the ledger's operations by outcome.

Balances are read from the ledger when ``/metrics`` is scraped (``refresher``: one read of every
account's allocations), not kept up to date by each operation, so they are right whichever replica
or CLI changed the books. Operations are counted where they happen, in ``Ledger``: a hold refused
for want of funds, a retry answered from the stored result and a conflicting reuse of a key are
told apart, which is what an operator watching the bank needs to see.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from slurmlink.api.metrics import REGISTRY
from slurmlink.bank.errors import (
    AlreadyExists,
    BankError,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    InvariantViolation,
    NotFound,
)

if TYPE_CHECKING:
    from slurmlink.bank.ledger import Ledger

OPERATIONS = Counter(
    "slurmlink_bank_operations_total",
    "Ledger operations (grant, hold, settle, release, refund, transfer, adjust, expire) by outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)
AVAILABLE = Gauge(
    "slurmlink_bank_available_units",
    "Service units an account can still hold or spend (drawable allocations, less holds and charges)",
    ["account", "cluster"],
    registry=REGISTRY,
)
HELD = Gauge(
    "slurmlink_bank_held_units",
    "Service units held for an account's running jobs",
    ["account", "cluster"],
    registry=REGISTRY,
)
SPENT = Gauge(
    "slurmlink_bank_spent_units",
    "Service units charged to an account's current allocations",
    ["account", "cluster"],
    registry=REGISTRY,
)
_GAUGES = (AVAILABLE, HELD, SPENT)

#: Outcome label per refusal, most specific class first.
_REFUSALS: tuple[tuple[type[BankError], str], ...] = (
    (InsufficientFunds, "insufficient_funds"),
    (IdempotencyConflict, "conflict"),
    (AlreadyExists, "conflict"),
    (NotFound, "not_found"),
    (InvariantViolation, "invariant_violation"),
    (InvalidRequest, "invalid"),
)


@dataclass
class Outcome:
    """What the counted operation did, when it did not raise: set by the operation."""

    replayed: bool = False
    #: Nothing was due (an allocation not yet at its end): not counted.
    skipped: bool = False


def outcome_label(exc: BaseException) -> str:
    for cls, label in _REFUSALS:
        if isinstance(exc, cls):
            return label
    return "refused" if isinstance(exc, BankError) else "error"


@contextlib.contextmanager
def operation(kind: str) -> Iterator[Outcome]:
    """Count one ledger operation of ``kind``: ok, replayed, or why it was refused."""
    outcome = Outcome()
    try:
        yield outcome
    except Exception as exc:
        OPERATIONS.labels(kind, outcome_label(exc)).inc()
        raise
    if not outcome.skipped:
        OPERATIONS.labels(kind, "replayed" if outcome.replayed else "ok").inc()


def refresher(ledger: Ledger) -> Callable[[], Awaitable[None]]:
    """A scrape hook that sets the balance gauges from the ledger (accounts gone are dropped)."""
    shown: set[tuple[str, str]] = set()

    async def refresh() -> None:
        balances = await ledger.store.call(ledger.balances)
        current: set[tuple[str, str]] = set()
        for balance in balances:
            labels = (balance.account, balance.cluster)
            AVAILABLE.labels(*labels).set(float(balance.available))
            HELD.labels(*labels).set(float(balance.held))
            SPENT.labels(*labels).set(float(balance.spent))
            current.add(labels)
        for gone in shown - current:
            for gauge in _GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        shown.clear()
        shown.update(current)

    return refresh
