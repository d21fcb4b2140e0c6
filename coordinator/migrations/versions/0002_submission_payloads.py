"""Move each submission's envelope out of `submissions` into `submission_payloads`, with the
compact training payload next to it. SQLite rewrites a whole row (overflow pages included)
on every update, so state changes of a submission (claim, verdict, consumption, archive
flags) rewrote its ~70 KB envelope each time.

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "submission_payloads",
        sa.Column("submission_id", sa.String(64), primary_key=True),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("group_json", sa.Text, nullable=False),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT submission_id, envelope FROM submissions")).fetchall()
    for sid, envelope in rows:
        comps = json.loads(envelope)["body"]["completions"]
        group = json.dumps({"completions": [c["token_ids"] for c in comps],
                            "finish_reasons": [c["finish_reason"] for c in comps]}, separators=(",", ":"))
        conn.execute(sa.text("INSERT INTO submission_payloads (submission_id, envelope, group_json) "
                             "VALUES (:s, :e, :g)"), {"s": sid, "e": envelope, "g": group})
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("envelope")


def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.add_column(sa.Column("envelope", sa.Text, nullable=False, server_default=""))
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE submissions SET envelope = (SELECT envelope FROM submission_payloads p "
                         "WHERE p.submission_id = submissions.submission_id)"))
    op.drop_table("submission_payloads")
