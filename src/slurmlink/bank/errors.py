"""What the bank refuses, with what the caller needs to put it right.

Each error carries the HTTP status the API answers with, so the REST layer, the CLI and the Slurm
hooks report the same words.
"""

from __future__ import annotations

from decimal import Decimal


class BankError(Exception):
    """Base class: ``code`` is the HTTP status, ``reason`` the Kubernetes-style reason."""

    code = 400
    reason = "BadRequest"


class InvalidRequest(BankError):
    """Malformed input: a bad amount, an unknown field value, a window that ends before it starts."""


class NotFound(BankError):
    code = 404
    reason = "NotFound"


class AlreadyExists(BankError):
    code = 409
    reason = "AlreadyExists"


class IdempotencyConflict(BankError):
    """The same idempotency key came with a different request: the first one stands."""

    code = 409
    reason = "Conflict"


class InsufficientFunds(BankError):
    """An account cannot cover an amount; the numbers are kept for the messages that quote them."""

    code = 402
    reason = "InsufficientFunds"

    def __init__(
        self,
        message: str,
        *,
        account: str,
        requested: Decimal,
        available: Decimal,
        held: Decimal,
    ) -> None:
        super().__init__(message)
        self.account = account
        self.requested = requested
        self.available = available
        self.held = held


class InvariantViolation(BankError):
    """A check the ledger makes on every transaction failed: nothing was written. A bug, reported."""

    code = 500
    reason = "InternalError"
