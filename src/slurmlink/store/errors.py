"""Store-level failures; the API layer maps each to a Kubernetes Status."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store failure."""


class NotFoundError(StoreError):
    """The object does not exist."""


class AlreadyExistsError(StoreError):
    """An object with that key exists already."""


class ConflictError(StoreError):
    """Compare-and-swap failed: the object changed since the caller read it."""


class SerializationError(ConflictError):
    """PostgreSQL aborted the transaction (serialization failure or deadlock, SQLSTATE 40001/40P01).

    Nothing of it committed; running the whole transaction again may succeed, which is what
    ``SqlStore.run_transaction`` does.
    """


class ExpiredError(StoreError):
    """A watch asked for history that compaction has removed (HTTP 410 Gone)."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"too old resource version: {requested} ({compacted})")
        self.requested = requested
        self.compacted = compacted


class WouldBlockError(StoreError):
    """A call on the event loop would wait for a lock (``SqlStore.call_brief`` runs it in a thread)."""


class UnavailableError(StoreError):
    """The database cannot be reached."""


class SchemaVersionError(StoreError, RuntimeError):
    """The database was migrated by a newer slurmlink than this one; refuse to touch it."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"store schema version {found} is newer than this slurmlink supports ({supported}); "
            "upgrade slurmlink"
        )
        self.found = found
        self.supported = supported
