"""The ledger's invariants, checked over the whole database: ``slurmlink bank verify`` and the tests.

Each transaction checks them for what it touches before it commits; this reads everything, so an
operator can prove the books after an incident (a restore, a manual SQL fix) and the concurrency
tests can prove them after a race.
"""

from __future__ import annotations

import sqlalchemy as sa

from slurmlink.bank import money, schema
from slurmlink.bank.books import CLOSED


def problems(conn: sa.Connection) -> list[str]:
    """Every broken invariant, in words; empty when the books are sound."""
    t, e, b, al, a = schema.transactions, schema.entries, schema.buckets, schema.allocations, schema.accounts
    found: list[str] = []
    for txn_id, total in conn.execute(
        sa.select(e.c.transaction_id, sa.func.sum(e.c.amount))
        .group_by(e.c.transaction_id)
        .having(sa.func.sum(e.c.amount) != 0)
    ):
        found.append(f"transaction {txn_id}: entries sum to {money.text(total)}, not 0")
    sums = sa.select(e.c.bucket_id, sa.func.sum(e.c.amount).label("total")).group_by(e.c.bucket_id).subquery()
    for bucket_id, balance, total in conn.execute(
        sa.select(b.c.id, b.c.balance, sa.func.coalesce(sums.c.total, 0))
        .select_from(b.outerjoin(sums, sums.c.bucket_id == b.c.id))
        .where(b.c.balance != sa.func.coalesce(sums.c.total, 0))
    ):
        found.append(
            f"bucket {bucket_id}: balance {money.text(balance)} but its entries sum to {money.text(total)}"
        )
    for bucket_id, kind, balance in conn.execute(
        sa.select(b.c.id, b.c.kind, b.c.balance).where(b.c.kind.in_(("held", "spent")), b.c.balance < 0)
    ):
        found.append(f"bucket {bucket_id}: {kind} balance is negative ({money.text(balance)})")
    available = (
        sa.select(al.c.account_id, sa.func.sum(b.c.balance).label("available"))
        .join(b, b.c.allocation_id == al.c.id)
        .where(b.c.kind == "available", al.c.state != CLOSED)
        .group_by(al.c.account_id)
        .subquery()
    )
    for name, left, limit in conn.execute(
        sa.select(a.c.name, available.c.available, a.c.overdraft)
        .join(available, available.c.account_id == a.c.id)
        .where(available.c.available < -a.c.overdraft)
    ):
        found.append(f"account {name}: overdrawn ({money.text(left)} available, limit {money.text(-limit)})")
    for run_key, count in conn.execute(
        sa.select(t.c.run_key, sa.func.count())
        .where(t.c.kind == "charge")
        .group_by(t.c.run_key)
        .having(sa.func.count() > 1)
    ):
        found.append(f"run {run_key}: charged {count} times")
    return found
