"""A queued submission's hand-outs to verifiers are counted (`submissions.claims`), so one that
no verifier can judge is dropped after `verification_max_claims` claims instead of being
handed out again every claim TTL, first in every claim, forever. Existing rows start at 0.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("claims")
