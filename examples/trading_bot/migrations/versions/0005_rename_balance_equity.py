"""Rename balance_snapshots.balance to equity.

Revision ID: 0005_rename_balance_equity
"""

from alembic import op

revision = "0005_rename_balance_equity"
down_revision = "0004_split_owner_name"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("balance_snapshots", "balance", new_column_name="equity")


def downgrade() -> None:
    op.alter_column("balance_snapshots", "equity", new_column_name="balance")
