"""Tables of the coordinator's database. The one source of truth for queries; the Alembic
migrations (`coordinator/migrations/versions`) are frozen snapshots that create exactly
this, and a test compares the two.

workers          one row per identity (peer id): status, ban reason, ledger counters
nonces           (signer, nonce) of every signed request seen recently: replay protection
leases           every lease issued, with its signed envelope and state
task_returns     tasks whose lease expired or was released, waiting to be leased again
submissions      every submission that passed intake: rewards, advantages, verification
                 state, verdict, training-buffer state (ready -> handed -> consumed once the
                 trainer acknowledges it), archive flags
submission_payloads  its signed envelope as received and the compact training payload
policy_versions  every policy version announced by the trainer, with its signed manifest
meta             small key/value facts (task counter, pow challenge, counters)
"""

from __future__ import annotations

from sqlalchemy import (
                        BigInteger,
                        Boolean,
                        Column,
                        Float,
                        Index,
                        Integer,
                        MetaData,
                        String,
                        Table,
                        Text,
                        UniqueConstraint,
                        false,
)

metadata = MetaData()

workers = Table(
    "workers", metadata,
    Column("worker_id", String(128), primary_key=True),
    Column("public_key", String(64), nullable=False, unique=True),
    Column("address", String(64), nullable=False, server_default=""),
    Column("status", String(16), nullable=False),            # active | gone | banned
    Column("ban_reason", Text, nullable=False, server_default=""),
    Column("registered_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("accepted", Integer, nullable=False, server_default="0"),
    Column("rejected", Integer, nullable=False, server_default="0"),
    Column("accepted_tokens", BigInteger, nullable=False, server_default="0"),
    Column("clean_checks", Integer, nullable=False, server_default="0"),
    Column("checked_positions", BigInteger, nullable=False, server_default="0"),  # tokens of clean full checks
    Column("near_ties", BigInteger, nullable=False, server_default="0"),          # ... off the seeded argmax
    Column("drift_score", Float, nullable=False, server_default="0"),    # proof-drift CUSUMs (rules.proof_drift)
    Column("drift_worst_score", Float, nullable=False, server_default="0"),  # ... of its worst completions
    Column("near_tie_score", Float, nullable=False, server_default="0"),  # near-tie CUSUM (rules.near_ties.score)
    Column("last_clean_check_at", Float, nullable=True),  # received_at of its newest clean full check
    Column("leases_issued", BigInteger, nullable=False, server_default="0"),
    Column("leases_dropped", BigInteger, nullable=False, server_default="0"),  # released, expired, gone, duplicate
    Column("banned_at", Float, nullable=True),
    Column("hardware", Text, nullable=False, server_default="{}"),
    Column("client_version", String(64), nullable=False, server_default=""),
    Column("engine", String(64), nullable=False, server_default=""),
    Column("policy_version", Integer, nullable=True),
    Column("tokens_per_s", Float, nullable=False, server_default="0"),
    Column("status_text", String(64), nullable=False, server_default=""),
    Index("ix_workers_status_address", "status", "address"),
    Index("ix_workers_address_banned_at", "address", "banned_at"),
)

nonces = Table(
    "nonces", metadata,
    Column("signer", String(64), primary_key=True),
    Column("nonce", String(32), primary_key=True),
    Column("seen_at", Float, nullable=False),
    Index("ix_nonces_seen_at", "seen_at"),
)

leases = Table(
    "leases", metadata,
    Column("lease_id", String(64), primary_key=True),
    Column("worker_id", String(128), nullable=False),
    Column("task_index", BigInteger, nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),            # active | submitted | released | expired | revoked | duplicate
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    Column("envelope", Text, nullable=False),                # the signed Lease, JSON: its terms live only here
    Column("intake_nonce", String(64), nullable=True),       # PostgreSQL: the submission being scored (its nonce)
    Column("intake_at", Float, nullable=True),               # ... since when (service.work.INTAKE_CLAIM_S)
    Index("ix_leases_status_expires", "status", "expires_at"),
    Index("ix_leases_worker_status", "worker_id", "status"),
    Index("ix_leases_worker_status_closed", "worker_id", "status", "closed_at"),  # a worker's newest submitted
)

task_returns = Table(
    "task_returns", metadata,
    Column("task_index", BigInteger, primary_key=True),
    Column("previous_worker", String(128), nullable=False),
    Column("returned_at", Float, nullable=False),
    Index("ix_task_returns_returned_at", "returned_at"),
)

submissions = Table(
    "submissions", metadata,
    Column("submission_id", String(64), primary_key=True),
    Column("lease_id", String(64), nullable=False, unique=True),
    Column("worker_id", String(128), nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("task_index", BigInteger, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),            # queued | accepted | rejected | dropped
    Column("full_check", Boolean, nullable=False),
    Column("rewards", Text, nullable=False),                 # JSON list[float]
    Column("advantages", Text, nullable=False),              # JSON list[float]
    Column("reward_mean", Float, nullable=False),
    Column("n_tokens", Integer, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", Float, nullable=True),
    Column("claimed_instance", String(128), nullable=True),  # the claiming verifier process (ClaimRequest.instance)
    Column("claims", Integer, nullable=False, server_default="0"),  # hand-outs to verifiers (capped)
    Column("decided_at", Float, nullable=True),
    Column("verdict", Text, nullable=True),                  # the verifier's signed Verdict, JSON
    Column("reason", Text, nullable=False, server_default=""),
    Column("buffer", String(16), nullable=True),             # held | ready | handed | consumed | stale | dropped
    Column("unused", String(16), nullable=True),             # why an accepted group was never trained (WASTE_CAUSES)
    Column("consumed_at", Float, nullable=True),             # when the trainer acknowledged it
    Column("handed_at", Float, nullable=True),               # last hand-out to the trainer (re-handed if not acked)
    Column("envelope_sha256", String(64), nullable=True),    # envelope_digest of the submission, named by verdicts
    Column("archived", Boolean, nullable=False, server_default=false()),
    Column("verdict_archived", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("task_id", "content_hash", name="uq_submissions_task_content"),
    Index("ix_submissions_status_received", "status", "received_at"),
    Index("ix_submissions_buffer_version", "buffer", "policy_version"),
    Index("ix_submissions_worker_status", "worker_id", "status"),
    Index("ix_submissions_archived", "archived"),
    Index("ix_submissions_verdict_archived", "verdict_archived", "status"),
)

# The large, write-once part of a submission, apart from its state: SQLite rewrites a whole
# row (overflow pages included) on every update, so keeping ~70 KB envelopes out of
# `submissions` keeps claims, verdicts, consumption and archive flags cheap.
submission_payloads = Table(
    "submission_payloads", metadata,
    Column("submission_id", String(64), primary_key=True),
    Column("envelope", Text, nullable=False),                # the worker's signed Submission, JSON as received
    Column("group_json", Text, nullable=False),              # {"completions": [[ids]...], "finish_reasons": [...]}
)

policy_versions = Table(
    "policy_versions", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("step", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("manifest", Text, nullable=False),                # the operator-signed PolicyManifest, JSON
)

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
