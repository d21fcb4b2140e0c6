"""A lease's terms live in its signed envelope only (issue 19): the copies of min/max policy
version, seed count, max_tokens and EOS that intake used to read from the row are dropped;
intake and the verifier both read the signed `Lease` (`protocol.conformance`). The row keeps
the lease's state (status, expiry, its worker and task).

Revision ID: 0006
Revises: 0005
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COPIES = ("min_version", "max_version", "n_seeds", "max_tokens", "eos_token_id")


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        for name in COPIES:
            batch.drop_column(name)


def downgrade() -> None:
    # the copies come back from the envelopes they were copied from
    with op.batch_alter_table("leases") as batch:
        for name in COPIES:
            batch.add_column(sa.Column(name, sa.Integer, nullable=False, server_default="0"))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT lease_id, envelope FROM leases")).fetchall()
    for lease_id, envelope in rows:
        body = json.loads(envelope)["body"]
        conn.execute(sa.text("UPDATE leases SET min_version = :lo, max_version = :hi, n_seeds = :n, max_tokens = :m, "
                             "eos_token_id = :e WHERE lease_id = :id"),
                     {"lo": body["min_policy_version"], "hi": body["max_policy_version"], "n": len(body["seeds"]),
                      "m": body["sampling"]["max_tokens"], "e": body["eos_token_id"], "id": lease_id})
