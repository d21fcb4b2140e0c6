"""Nothing verified goes to waste (issue 23): why an accepted group never reached a training
step is kept per submission (`submissions.unused`: stale, stale_held, ban, zero_advantage,
pass_rate, trainer_stale; NULL while it waits or once it is trained), and a worker's newest
submitted leases are found through an index (the lease path sizes a worker's leases from its
measured lease -> submit times, `coordinator.rules.lease_size`). Existing rows keep NULL; the
waste report reads their old buffer states (stale, dropped) as before.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("unused", sa.String(16), nullable=True))
    with op.batch_alter_table("leases") as batch:
        batch.create_index("ix_leases_worker_status_closed", ["worker_id", "status", "closed_at"])


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_index("ix_leases_worker_status_closed")
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("unused")
