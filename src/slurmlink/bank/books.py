"""One ledger transaction in the making: the locked accounts, their allocations' buckets, the entries.

``Books`` is what an operation sees inside its database transaction. It reads an account's
allocations with their bucket balances once, lets the operation move units between buckets
(``move`` adds a pair of entries that sum to zero), and ``post`` writes the transaction row, its
entries and the new bucket balances after checking the ledger's invariants again on the result:
entries sum to zero, no held or spent bucket below zero, no account below its overdraft limit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from slurmlink import jsonutil
from slurmlink.bank import money, schema
from slurmlink.bank.errors import IdempotencyConflict, InvariantViolation, NotFound

#: Allocation states: active (drawable inside its window), closing (ended, holds still open),
#: closed (swept).
ACTIVE, CLOSING, CLOSED = "active", "closing", "closed"
BUCKET_KINDS = ("available", "held", "spent")
_FAR_FUTURE = dt.datetime.max.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def digest(payload: dict[str, Any]) -> str:
    """What an idempotent request asked for, to tell a retry from a different request."""
    return hashlib.sha256(jsonutil.dumps(payload)).hexdigest()


@dataclass
class Allocation:
    id: int
    account_id: int
    kind: str
    amount: int
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    priority: int
    state: str
    reference: str
    rollover_percent: int = 0
    #: bucket kind -> (bucket id, balance as read, plus this transaction's moves)
    buckets: dict[str, list[int]] = field(default_factory=dict)

    def balance(self, kind: str) -> int:
        return self.buckets[kind][1]

    def bucket(self, kind: str) -> int:
        return self.buckets[kind][0]

    def drawable(self, now: dt.datetime) -> bool:
        """Units may be held or charged from it now."""
        return self.state == ACTIVE and self.starts_at <= now and (self.ends_at is None or now < self.ends_at)

    def draw_order(self) -> tuple[dt.datetime, int, int]:
        """Earliest-ending first, then by priority (lower first), then oldest."""
        return (self.ends_at or _FAR_FUTURE, self.priority, self.id)


@dataclass
class Account:
    id: int
    cluster: str
    name: str
    status: str
    overdraft: int
    allocations: list[Allocation] = field(default_factory=list)

    def drawable(self, now: dt.datetime) -> list[Allocation]:
        return sorted((a for a in self.allocations if a.drawable(now)), key=Allocation.draw_order)

    def available(self, now: dt.datetime) -> int:
        return sum(a.balance("available") for a in self.drawable(now))

    def held(self) -> int:
        return sum(a.balance("held") for a in self.allocations)

    def spent(self, now: dt.datetime) -> int:
        return sum(a.balance("spent") for a in self.allocations if a.drawable(now) or a.state == CLOSING)

    def allocation(self, allocation_id: int) -> Allocation:
        for a in self.allocations:
            if a.id == allocation_id:
                return a
        raise InvariantViolation(f"allocation {allocation_id} is not account {self.name}'s")


class Books:
    """The rows one ledger transaction reads and the entries it writes (see the module docstring)."""

    def __init__(self, conn: sa.Connection, now: dt.datetime | None = None) -> None:
        self.conn = conn
        self.now = now or utcnow()
        self.postgres = conn.dialect.name == "postgresql"
        self.accounts: dict[int, Account] = {}
        self._moves: list[tuple[int, int]] = []  # (bucket id, signed units)
        #: The idempotency key and request digest of the operation this transaction answers.
        self.key = ""
        self.request_digest = ""
        self._system: dict[int, int] = {}  # system bucket id -> units moved

    # ---- reading -----------------------------------------------------------------------------

    def lock(self, cluster: str, names: list[str]) -> list[Account]:
        """Lock the named accounts (in id order, so two transfers cannot deadlock) and load them."""
        a = schema.accounts
        query = (
            sa.select(a.c.id, a.c.cluster, a.c.name, a.c.status, a.c.overdraft)
            .where(a.c.cluster == cluster, a.c.name.in_(sorted(set(names))))
            .order_by(a.c.id)
        )
        if self.postgres:
            query = query.with_for_update()
        found = {
            row.name: Account(row.id, row.cluster, row.name, row.status, row.overdraft)
            for row in self.conn.execute(query)
        }
        for name in names:
            if name not in found:
                raise NotFound(
                    f"bank account {name!r} does not exist on cluster {cluster!r}; "
                    f"create it with: slurmlink bank account create {name}"
                )
        for account in found.values():
            self.accounts[account.id] = account
        self.load_allocations(list(found.values()))
        return [found[name] for name in names]

    def load_allocations(self, accounts: list[Account]) -> None:
        """Read the accounts' open allocations with their buckets' balances."""
        al, b = schema.allocations, schema.buckets
        by_id = {acct.id: acct for acct in accounts}
        rows = self.conn.execute(
            sa.select(
                al.c.id,
                al.c.account_id,
                al.c.kind,
                al.c.amount,
                al.c.starts_at,
                al.c.ends_at,
                al.c.priority,
                al.c.state,
                al.c.reference,
                al.c.rollover_percent,
                b.c.kind.label("bucket_kind"),
                b.c.id.label("bucket_id"),
                b.c.balance,
            )
            .join(b, b.c.allocation_id == al.c.id)
            .where(al.c.account_id.in_(list(by_id)), al.c.state != CLOSED)
            .order_by(al.c.id)
        )
        allocations: dict[int, Allocation] = {}
        for row in rows:
            alloc = allocations.get(row.id)
            if alloc is None:
                starts = aware(row.starts_at)
                assert starts is not None
                alloc = Allocation(
                    row.id,
                    row.account_id,
                    row.kind,
                    row.amount,
                    starts,
                    aware(row.ends_at),
                    row.priority,
                    row.state,
                    row.reference,
                    row.rollover_percent,
                )
                allocations[row.id] = alloc
                by_id[row.account_id].allocations.append(alloc)
            alloc.buckets[row.bucket_kind] = [row.bucket_id, row.balance]

    def replay(self, key: str, request_digest: str) -> dict[str, Any] | None:
        """The stored result of an earlier transaction with ``key``, or None if there was none."""
        t = schema.transactions
        row = self.conn.execute(sa.select(t.c.digest, t.c.result).where(t.c.key == key)).first()
        if row is None:
            return None
        if row.digest != request_digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used before for a different request; the first one "
                "stands (use a new key for a new request)"
            )
        result: dict[str, Any] = jsonutil.loads(row.result)
        return result

    # ---- writing -----------------------------------------------------------------------------

    def move(
        self, source: Allocation | int, target: Allocation | int, kinds: tuple[str, str], units: int
    ) -> None:
        """Move ``units`` from ``source``'s ``kinds[0]`` bucket to ``target``'s ``kinds[1]`` bucket.

        An int instead of an allocation names a system bucket (``schema.EXTERNAL_BUCKET``, ...).
        """
        if units == 0:
            return
        for where, kind, sign in ((source, kinds[0], -1), (target, kinds[1], 1)):
            if isinstance(where, Allocation):
                slot = where.buckets[kind]
                slot[1] += sign * units
                self._moves.append((slot[0], sign * units))
            else:
                self._system[where] = self._system.get(where, 0) + sign * units
                self._moves.append((where, sign * units))

    def add_allocation(
        self,
        account: Account,
        *,
        kind: str,
        amount: int,
        starts_at: dt.datetime,
        ends_at: dt.datetime | None,
        priority: int,
        reference: str,
        rollover_percent: int = 0,
    ) -> Allocation:
        al, b = schema.allocations, schema.buckets
        allocation_id = self.conn.execute(
            al.insert()
            .values(
                account_id=account.id,
                kind=kind,
                amount=amount,
                starts_at=starts_at,
                ends_at=ends_at,
                priority=priority,
                state=ACTIVE,
                reference=reference,
                rollover_percent=rollover_percent,
                created_at=self.now,
            )
            .returning(al.c.id)
        ).scalar_one()
        alloc = Allocation(
            allocation_id,
            account.id,
            kind,
            amount,
            starts_at,
            ends_at,
            priority,
            ACTIVE,
            reference,
            rollover_percent,
        )
        for bucket_kind in BUCKET_KINDS:
            bucket_id = self.conn.execute(
                b.insert().values(allocation_id=allocation_id, kind=bucket_kind, balance=0).returning(b.c.id)
            ).scalar_one()
            alloc.buckets[bucket_kind] = [bucket_id, 0]
        account.allocations.append(alloc)
        return alloc

    def set_state(self, alloc: Allocation, state: str) -> None:
        al = schema.allocations
        self.conn.execute(al.update().where(al.c.id == alloc.id).values(state=state))
        alloc.state = state

    def check(self) -> None:
        """The invariants, on the balances this transaction leaves."""
        if sum(units for _, units in self._moves) != 0:
            raise InvariantViolation("the transaction's entries do not sum to zero")
        for account in self.accounts.values():
            for alloc in account.allocations:
                for kind in ("held", "spent"):
                    if alloc.balance(kind) < 0:
                        raise InvariantViolation(
                            f"allocation {alloc.id} of {account.name} would have a negative {kind} balance"
                        )
            available = sum(a.balance("available") for a in account.allocations if a.state != CLOSED)
            if available < -account.overdraft:
                raise InvariantViolation(
                    f"account {account.name} would be overdrawn: {money.text(available)} available, "
                    f"limit {money.text(-account.overdraft)}"
                )

    def post(
        self,
        *,
        kind: str,
        key: str | None = None,
        request_digest: str | None = None,
        account: Account | None,
        amount: int,
        actor: str,
        source: str,
        reason: str = "",
        run_key: str | None = None,
        rate_card_version: str | None = None,
        inputs: dict[str, Any] | None = None,
        result: dict[str, Any],
    ) -> dict[str, Any]:
        """Check, then write the transaction, its entries and the buckets' new balances.

        Returns ``result`` completed with the transaction id and the account's balances after it;
        the same dict is stored, and a retry with the same key gets it back. ``key`` and
        ``request_digest`` default to those of the request being answered (``answering``).
        """
        key = key or self.key
        request_digest = request_digest or self.request_digest
        if not key or not request_digest:
            raise InvariantViolation("a ledger transaction needs its idempotency key")
        self.check()
        t, e, b = schema.transactions, schema.entries, schema.buckets
        available_after = account.available(self.now) if account is not None else None
        result = dict(result)
        result["kind"] = kind
        result["key"] = key
        if account is not None:
            result["account"] = account.name
            result["available"] = money.text(account.available(self.now))
            result["held"] = money.text(account.held())
        txn_id = self.conn.execute(
            t.insert()
            .values(
                kind=kind,
                key=key,
                digest=request_digest,
                account_id=account.id if account is not None else None,
                run_key=run_key,
                amount=amount,
                available_after=available_after,
                actor=actor,
                source=source,
                reason=reason,
                rate_card_version=rate_card_version,
                inputs=jsonutil.dumps_str(inputs) if inputs is not None else None,
                result="{}",
                created_at=self.now,
            )
            .returning(t.c.id)
        ).scalar_one()
        result["transaction"] = txn_id
        result["at"] = self.now.isoformat()
        self.conn.execute(t.update().where(t.c.id == txn_id).values(result=jsonutil.dumps_str(result)))
        if self._moves:
            self.conn.execute(
                e.insert(),
                [
                    {"transaction_id": txn_id, "bucket_id": bucket, "amount": units}
                    for bucket, units in self._moves
                ],
            )
            totals: dict[int, int] = {}
            for bucket, units in self._moves:
                totals[bucket] = totals.get(bucket, 0) + units
            changed = [
                {"bucket": bucket, "delta": delta} for bucket, delta in sorted(totals.items()) if delta
            ]
            if changed:
                self.conn.execute(
                    b.update()
                    .where(b.c.id == sa.bindparam("bucket"))
                    .values(balance=b.c.balance + sa.bindparam("delta")),
                    changed,
                )
        self._moves.clear()
        self._system.clear()
        return result
