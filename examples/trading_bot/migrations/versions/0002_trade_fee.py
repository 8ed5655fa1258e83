"""Add trades.fee NOT NULL, backfilled from notional (0.1 %) on existing rows.

Revision ID: 0002_trade_fee
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_trade_fee"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("trades", sa.Column("fee", sa.Numeric(20, 8), nullable=True))
    op.execute("UPDATE trades SET fee = round(abs(quantity * price) * 0.001, 8)")
    op.alter_column("trades", "fee", nullable=False)


def downgrade() -> None:
    op.drop_column("trades", "fee")
