"""Index orders by account and time; add the PARTIALLY_FILLED order status.

Revision ID: 0003_order_index_status
"""

from alembic import op

revision = "0003_order_index_status"
down_revision = "0002_trade_fee"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("orders_account_created_idx", "orders", ["account_id", "created_at"])
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE order_status ADD VALUE IF NOT EXISTS 'PARTIALLY_FILLED'")


def downgrade() -> None:
    op.drop_index("orders_account_created_idx", table_name="orders")
