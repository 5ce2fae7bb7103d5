"""The bank's ledger: accounts, allocations, buckets, transactions and entries, job runs, rate cards.

Written out in full (not taken from ``bank.schema``), so this revision keeps making the layout it
made when released, whatever later revisions change.

Revision ID: bank_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bank_0001"
down_revision = None
branch_labels = ("bank",)
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bank_accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("overdraft", sa.BigInteger, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("cluster", "name", name="bank_accounts_cluster_name"),
    )
    op.create_table(
        "bank_user_caps",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), primary_key=True),
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("cap", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "bank_members",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), primary_key=True),
        sa.Column("user", sa.String(64), primary_key=True),
    )
    op.create_index("ix_bank_members_user", "bank_members", ["user"])
    op.create_table(
        "bank_allocations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("starts_at", _TS, nullable=False),
        sa.Column("ends_at", _TS, nullable=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_bank_allocations_account_id", "bank_allocations", ["account_id"])
    buckets = op.create_table(
        "bank_buckets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("allocation_id", sa.Integer, sa.ForeignKey("bank_allocations.id"), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("allocation_id", "kind", name="bank_buckets_allocation_kind"),
    )
    op.create_table(
        "bank_transactions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(400), nullable=False, unique=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("bank_accounts.id"), nullable=True),
        sa.Column("run_key", sa.String(200), nullable=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("available_after", sa.BigInteger, nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rate_card_version", sa.String(100), nullable=True),
        sa.Column("inputs", sa.Text, nullable=True),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_bank_transactions_account_id", "bank_transactions", ["account_id"])
    op.create_index("ix_bank_transactions_run_key", "bank_transactions", ["run_key"])
    op.create_table(
        "bank_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("transaction_id", sa.Integer, sa.ForeignKey("bank_transactions.id"), nullable=False),
        sa.Column("bucket_id", sa.Integer, sa.ForeignKey("bank_buckets.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_bank_entries_transaction_id", "bank_entries", ["transaction_id"])
    op.create_index("ix_bank_entries_bucket_id", "bank_entries", ["bucket_id"])
    op.create_table(
        "bank_runs",
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
        sa.Column("hold_split", sa.Text, nullable=False),
        sa.Column("charge_split", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("bank_runs_by_account_state", "bank_runs", ["account_id", "state"])
    op.create_index("bank_runs_by_job", "bank_runs", ["cluster", "job_id"])
    op.create_table(
        "bank_rate_cards",
        sa.Column("version", sa.String(100), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("imported_at", _TS, nullable=False),
        sa.Column("imported_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "bank_settings",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # The world outside the ledger: where grants come from, where expired units go, corrections.
    op.bulk_insert(
        buckets,
        [
            {"id": 1, "allocation_id": None, "kind": "external", "balance": 0},
            {"id": 2, "allocation_id": None, "kind": "expired", "balance": 0},
            {"id": 3, "allocation_id": None, "kind": "adjustments", "balance": 0},
        ],
    )
    if op.get_bind().dialect.name == "postgresql":  # ids 1-3 were given explicitly
        op.execute("SELECT setval(pg_get_serial_sequence('bank_buckets', 'id'), 3)")


def downgrade() -> None:
    for table in (
        "bank_settings",
        "bank_rate_cards",
        "bank_runs",
        "bank_entries",
        "bank_transactions",
        "bank_buckets",
        "bank_allocations",
        "bank_user_caps",
        "bank_members",
        "bank_accounts",
    ):
        op.drop_table(table)
