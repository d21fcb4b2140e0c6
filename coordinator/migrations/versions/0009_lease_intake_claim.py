"""A lease row records the submission of it being scored (`leases.intake_nonce`, `intake_at`):
on PostgreSQL, copies of one submission sent to two replicas at once were both scored (the
in-flight guard of `coordinator.api.Intake` is per process); the claim lets one. Existing rows
start unclaimed.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("intake_nonce", sa.String(64), nullable=True))
        batch.add_column(sa.Column("intake_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("intake_at")
        batch.drop_column("intake_nonce")
