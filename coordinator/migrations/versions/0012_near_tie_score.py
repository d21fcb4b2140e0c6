"""A worker's near-tie CUSUM (`workers.near_tie_score`, `coordinator.rules.near_ties.score`):
the near-tie test summed a worker's whole history, so a long honest past hid a later change of
temperature or policy for a long time; the CUSUM beside it forgets an honest past. Existing
workers start at 0 (no evidence yet), as new ones do.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("near_tie_score", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("near_tie_score")
