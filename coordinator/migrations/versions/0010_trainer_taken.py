"""The groups the trainer acknowledged are counted as they are acknowledged (meta
`trainer_taken`, added to in `store.submissions.ack`), not counted over `submissions` in every
lease request's transaction (`store.swarm_counts`): that count grew with the run (1.5 ms of
SQLite per lease request at 45,000 acknowledged groups). Existing databases start from the count.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("INSERT INTO meta (key, value) SELECT 'trainer_taken', CAST(COUNT(*) AS TEXT) "
                       "FROM submissions WHERE buffer = 'consumed'"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM meta WHERE key = 'trainer_taken'"))
