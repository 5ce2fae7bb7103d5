"""Allocations may carry part of what is left at their end into a new allocation (rollover).

Revision ID: bank_0002
Revises: bank_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bank_0002"
down_revision = "bank_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bank_allocations") as batch:
        batch.add_column(sa.Column("rollover_percent", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("bank_allocations") as batch:
        batch.drop_column("rollover_percent")
