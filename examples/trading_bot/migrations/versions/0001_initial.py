"""Initial schema: events, accounts with one owner_name column, orders, trades, positions.

Revision ID: 0001_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

PRICE = sa.Numeric(20, 8)
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    event_type = sa.Enum("TEST", "INFO", "ERROR", "TRADE", name="event_type")
    order_status = sa.Enum("NEW", "FILLED", "CANCELLED", name="order_status")
    op.create_table(
        "system_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("type", event_type, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_system_events_created_at", "system_events", ["created_at"])
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("owner_name", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("client_order_id", sa.String(40), nullable=False, unique=True),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("quantity", PRICE, nullable=False),
        sa.Column("limit_price", PRICE, nullable=False),
        sa.Column("status", order_status, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_at", TZ, nullable=False),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name="orders_side_check"),
    )
    op.create_table(
        "trades",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("order_id", sa.BigInteger, sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("quantity", PRICE, nullable=False),
        sa.Column("price", PRICE, nullable=False),
        sa.Column("executed_at", TZ, nullable=False),
    )
    op.create_index("ix_trades_order_id", "trades", ["order_id"])
    op.create_table(
        "positions",
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("symbol", sa.String(16), primary_key=True),
        sa.Column("quantity", PRICE, nullable=False),
    )
    op.create_table(
        "balance_snapshots",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("balance", PRICE, nullable=False),
        sa.Column("taken_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("balance_snapshots", "positions", "trades", "orders", "accounts",
                  "system_events"):
        op.drop_table(table)
    sa.Enum(name="order_status").drop(op.get_bind())
    sa.Enum(name="event_type").drop(op.get_bind())
