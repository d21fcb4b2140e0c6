"""Per-worker sampling counts of clean full checks: tokens checked and tokens off the seeded
argmax, for the near-tie rate test (`coordinator.rules.near_ties`). Existing workers start at 0.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("checked_positions", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("near_ties", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("near_ties")
        batch.drop_column("checked_positions")
