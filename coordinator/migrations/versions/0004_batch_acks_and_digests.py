"""At-least-once training batches and verdicts bound to what they judged.

`submissions.handed_at`: when a group was last handed to the trainer. A handed-out group is
`buffer = 'handed'` until the trainer acknowledges it (then `consumed`); one not acknowledged
within `batch_ack_timeout_s` of `handed_at` is handed out again. `submissions.envelope_sha256`:
`protocol.envelope.envelope_digest` of the submission as received, which a verdict must name.
Both are NULL for rows written before this revision (the coordinator then computes the digest
from the stored envelope).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("handed_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("envelope_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("envelope_sha256")
        batch.drop_column("handed_at")
