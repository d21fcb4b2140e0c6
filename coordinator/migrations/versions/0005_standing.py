"""A worker's standing beyond its check count (issue 17): the proof-drift score of its full
checks, the receipt time of its newest clean full check (its cheap-only accepted groups
wait in the buffer as 'held' until a later clean full check), leases issued and dropped
(released or let expire), and when it was banned (banned identities count against their
address for a cooldown). Existing workers start at 0 / unset.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("drift_score", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("drift_worst_score", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_clean_check_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("leases_issued", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("leases_dropped", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("banned_at", sa.Float, nullable=True))
        batch.create_index("ix_workers_address_banned_at", ["address", "banned_at"])


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_index("ix_workers_address_banned_at")
        for name in ("banned_at", "leases_dropped", "leases_issued", "last_clean_check_at", "drift_worst_score",
                     "drift_score"):
            batch.drop_column(name)
