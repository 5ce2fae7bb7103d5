"""The bank's tables, as the code uses them (their layout is made by ``store/migrations/bank``).

A double-entry ledger beside the object store, in the same database. Every allocation has three
buckets (available, held, spent); three system buckets stand for the world outside (where grants
come from, where expired units go, where corrections are booked). A transaction moves units between
buckets with entries that sum to zero; entries are never changed or removed (a correction is a new
transaction). Each bucket's ``balance`` caches the sum of its entries, kept in the same transaction.
Amounts are integers of 1/10 000 service unit (see ``bank.money``).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: Ids of the system buckets the first migration creates.
EXTERNAL_BUCKET = 1
EXPIRED_BUCKET = 2
ADJUSTMENTS_BUCKET = 3

accounts = sa.Table(
    "bank_accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("overdraft", sa.BigInteger, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("cluster", "name", name="bank_accounts_cluster_name"),
)

user_caps = sa.Table(
    "bank_user_caps",
    metadata,
    sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), primary_key=True),
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("cap", sa.BigInteger, nullable=False),
)

members = sa.Table(
    "bank_members",
    metadata,
    sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), primary_key=True),
    sa.Column("user", sa.String(64), primary_key=True, index=True),
)

allocations = sa.Table(
    "bank_allocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reference", sa.String(200), nullable=False),
    #: Percent of what is left at the end that moves into a new allocation (migration bank_0002).
    sa.Column("rollover_percent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

buckets = sa.Table(
    "bank_buckets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("allocation_id", sa.Integer, sa.ForeignKey("bank_allocations.id"), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("allocation_id", "kind", name="bank_buckets_allocation_kind"),
)

transactions = sa.Table(
    "bank_transactions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("key", sa.String(400), nullable=False, unique=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=True, index=True),
    sa.Column("run_key", sa.String(200), nullable=True, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("available_after", sa.BigInteger, nullable=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("rate_card_version", sa.String(100), nullable=True),
    sa.Column("inputs", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

entries = sa.Table(
    "bank_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "transaction_id", sa.Integer, sa.ForeignKey("bank_transactions.id"), nullable=False, index=True
    ),
    sa.Column("bucket_id", sa.Integer, sa.ForeignKey("bank_buckets.id"), nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
)

runs = sa.Table(
    "bank_runs",
    metadata,
    sa.Column("run_key", sa.String(200), primary_key=True),
    sa.Column("cluster", sa.String(64), nullable=False),
    sa.Column("job_id", sa.BigInteger, nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=False),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("held", sa.BigInteger, nullable=False),
    sa.Column("charged", sa.BigInteger, nullable=False),
    sa.Column("refunded", sa.BigInteger, nullable=False),
    sa.Column("unbilled", sa.BigInteger, nullable=False),
    #: JSON: allocation id -> units, where the hold (then the charge) was drawn.
    sa.Column("hold_split", sa.Text, nullable=False),
    sa.Column("charge_split", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("bank_runs_by_account_state", "account_id", "state"),
    sa.Index("bank_runs_by_job", "cluster", "job_id"),
)

rate_cards = sa.Table(
    "bank_rate_cards",
    metadata,
    sa.Column("version", sa.String(100), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("imported_by", sa.String(200), nullable=False),
)

settings = sa.Table(
    "bank_settings",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
