"""Split accounts.owner_name into first_name and last_name, moving the data.

Revision ID: 0004_split_owner_name
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_split_owner_name"
down_revision = "0003_order_index_status"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("first_name", sa.Text))
    op.add_column("accounts", sa.Column("last_name", sa.Text))
    op.execute("""
        UPDATE accounts SET
            first_name = split_part(owner_name, ' ', 1),
            last_name = coalesce(nullif(substr(owner_name, length(split_part(owner_name, ' ', 1))
                                                           + 2), ''), '')
    """)
    op.alter_column("accounts", "first_name", nullable=False)
    op.alter_column("accounts", "last_name", nullable=False)
    op.drop_column("accounts", "owner_name")


def downgrade() -> None:
    op.add_column("accounts", sa.Column("owner_name", sa.Text))
    op.execute("UPDATE accounts SET owner_name = trim(first_name || ' ' || last_name)")
    op.drop_column("accounts", "first_name")
    op.drop_column("accounts", "last_name")
