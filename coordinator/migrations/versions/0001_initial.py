"""Initial schema of the coordinator: workers, nonces, leases, task returns, submissions,
policy versions, meta. A frozen snapshot of `coordinator.store.schema` as of this revision.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(128), primary_key=True),
        sa.Column("public_key", sa.String(64), nullable=False, unique=True),
        sa.Column("address", sa.String(64), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ban_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rejected", sa.Integer, nullable=False, server_default="0"),
        sa.Column("accepted_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("clean_checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("hardware", sa.Text, nullable=False, server_default="{}"),
        sa.Column("client_version", sa.String(64), nullable=False, server_default=""),
        sa.Column("engine", sa.String(64), nullable=False, server_default=""),
        sa.Column("policy_version", sa.Integer, nullable=True),
        sa.Column("tokens_per_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("status_text", sa.String(64), nullable=False, server_default=""),
    )
    op.create_index("ix_workers_status_address", "workers", ["status", "address"])

    op.create_table(
        "nonces",
        sa.Column("signer", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(32), primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_index("ix_nonces_seen_at", "nonces", ["seen_at"])

    op.create_table(
        "leases",
        sa.Column("lease_id", sa.String(64), primary_key=True),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("task_index", sa.BigInteger, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("min_version", sa.Integer, nullable=False),
        sa.Column("max_version", sa.Integer, nullable=False),
        sa.Column("n_seeds", sa.Integer, nullable=False),
        sa.Column("max_tokens", sa.Integer, nullable=False),
        sa.Column("eos_token_id", sa.Integer, nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
    )
    op.create_index("ix_leases_status_expires", "leases", ["status", "expires_at"])
    op.create_index("ix_leases_worker_status", "leases", ["worker_id", "status"])

    op.create_table(
        "task_returns",
        sa.Column("task_index", sa.BigInteger, primary_key=True),
        sa.Column("previous_worker", sa.String(128), nullable=False),
        sa.Column("returned_at", sa.Float, nullable=False),
    )
    op.create_index("ix_task_returns_returned_at", "task_returns", ["returned_at"])

    op.create_table(
        "submissions",
        sa.Column("submission_id", sa.String(64), primary_key=True),
        sa.Column("lease_id", sa.String(64), nullable=False, unique=True),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("task_index", sa.BigInteger, nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("full_check", sa.Boolean, nullable=False),
        sa.Column("rewards", sa.Text, nullable=False),
        sa.Column("advantages", sa.Text, nullable=False),
        sa.Column("reward_mean", sa.Float, nullable=False),
        sa.Column("n_tokens", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.Float, nullable=True),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("verdict", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("buffer", sa.String(16), nullable=True),
        sa.Column("consumed_at", sa.Float, nullable=True),
        sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("verdict_archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("task_id", "content_hash", name="uq_submissions_task_content"),
    )
    op.create_index("ix_submissions_status_received", "submissions", ["status", "received_at"])
    op.create_index("ix_submissions_buffer_version", "submissions", ["buffer", "policy_version"])
    op.create_index("ix_submissions_worker_status", "submissions", ["worker_id", "status"])
    op.create_index("ix_submissions_archived", "submissions", ["archived"])
    op.create_index("ix_submissions_verdict_archived", "submissions", ["verdict_archived", "status"])

    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
    )

    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for name in ("meta", "policy_versions", "submissions", "task_returns", "leases", "nonces", "workers"):
        op.drop_table(name)
