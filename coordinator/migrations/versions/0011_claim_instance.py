"""A claim records the verifier process that made it (`submissions.claimed_instance`, from
`ClaimRequest.instance`), beside its key: several verifier replicas share one key, and a
replica's resume at restart took back every unexpired claim of that key, the ones its siblings
were judging included (judged twice, each hand-out counted against `verification_max_claims`).
Now a resume takes back only the claims of the same key and instance. Existing claims have none
(NULL): resumable only by a resume without an instance, as before.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("claimed_instance", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("claimed_instance")
