"""Queries on `submissions`: intake, the verification queue, verdicts, the training buffer,
the archive flags and the statistics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, case, func, or_, select, update

from coordinator.store.schema import leases, submissions


def get(conn: Connection, submission_id: str) -> Row | None:
    return conn.execute(select(submissions).where(submissions.c.submission_id == submission_id)).first()


def get_status(conn: Connection, submission_id: str) -> Row | None:
    c = submissions.c
    q = select(c.submission_id, c.worker_id, c.status, c.reason, c.n_tokens, c.full_check, c.policy_version,
               c.lease_id).where(c.submission_id == submission_id)
    return conn.execute(q).first()


def content_exists(conn: Connection, task_id: str, content_hash: str) -> str | None:
    q = select(submissions.c.submission_id).where(
        and_(submissions.c.task_id == task_id, submissions.c.content_hash == content_hash))
    return conn.execute(q).scalar_one_or_none()


def insert(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(submissions.insert().values(**values))


# -- verification queue ----------------------------------------------------------------------
def claim(conn: Connection, verifier: str, now: float, claim_ttl_s: float, limit: int) -> list[Row]:
    """Hand up to `limit` queued submissions to `verifier`: unclaimed ones, or ones whose
    claim is older than `claim_ttl_s` (the verifier that took them died). Oldest first."""
    c = submissions.c
    cond = and_(c.status == "queued", or_(c.claimed_at.is_(None), c.claimed_at < now - claim_ttl_s))
    q = select(c.submission_id).where(cond).order_by(c.received_at, c.submission_id).limit(limit)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    conn.execute(update(submissions).where(and_(c.submission_id.in_(ids), c.status == "queued"))
                 .values(claimed_by=verifier, claimed_at=now))
    q = (select(c.submission_id, c.worker_id, c.task_index, c.rewards, c.full_check, c.envelope,
                leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c.lease_id)
         .where(c.submission_id.in_(ids)).order_by(c.received_at, c.submission_id))
    return list(conn.execute(q))


def decide(conn: Connection, submission_id: str, accepted: bool, verdict_json: str, reason: str, now: float) -> bool:
    """queued -> accepted (into the buffer) or rejected; False if it was no longer queued."""
    c = submissions.c
    res = conn.execute(update(submissions).where(and_(c.submission_id == submission_id, c.status == "queued"))
                       .values(status="accepted" if accepted else "rejected", verdict=verdict_json,
                               reason=reason[:2000], decided_at=now, buffer="ready" if accepted else None))
    return res.rowcount == 1


def drop_unconsumed(conn: Connection, worker_id: str, reason: str, now: float) -> int:
    """A banned worker's queued and not-yet-trained submissions leave the pipeline."""
    c = submissions.c
    n = conn.execute(update(submissions).where(and_(c.worker_id == worker_id, c.status == "queued"))
                     .values(status="dropped", reason=reason[:2000], decided_at=now)).rowcount
    n += conn.execute(update(submissions).where(
        and_(c.worker_id == worker_id, c.status == "accepted", c.buffer == "ready"))
        .values(status="dropped", buffer="dropped", reason=reason[:2000])).rowcount
    return n


# -- training buffer -------------------------------------------------------------------------
def drop_stale(conn: Connection, floor: int) -> int:
    c = submissions.c
    return conn.execute(update(submissions).where(and_(c.buffer == "ready", c.policy_version < floor))
                        .values(buffer="stale")).rowcount


def take_batch(conn: Connection, lower: int, limit: int, now: float) -> list[Row]:
    """Oldest ready groups with policy_version >= lower, marked consumed in this transaction."""
    c = submissions.c
    q = (select(c.submission_id).where(and_(c.buffer == "ready", c.policy_version >= lower))
         .order_by(c.decided_at, c.submission_id).limit(limit))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    conn.execute(update(submissions).where(and_(c.submission_id.in_(ids), c.buffer == "ready"))
                 .values(buffer="consumed", consumed_at=now))
    q = (select(c.submission_id, c.task_id, c.worker_id, c.policy_version, c.rewards, c.advantages,
                c.envelope, leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c.lease_id)
         .where(c.submission_id.in_(ids)).order_by(c.decided_at, c.submission_id))
    return list(conn.execute(q))


def buffer_depth(conn: Connection) -> int:
    q = select(func.count()).select_from(submissions).where(submissions.c.buffer == "ready")
    return int(conn.execute(q).scalar_one())


# -- statistics -----------------------------------------------------------------------------
def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(submissions.c.status, func.count()).group_by(submissions.c.status)
    return {s: n for s, n in conn.execute(q)}


def count_by_buffer(conn: Connection) -> dict[str, int]:
    q = (select(submissions.c.buffer, func.count()).where(submissions.c.buffer.is_not(None))
         .group_by(submissions.c.buffer))
    return {s: n for s, n in conn.execute(q)}


def rewards_by_version(conn: Connection, last: int = 20) -> list[Row]:
    """Per policy version (newest `last`): submissions received, accepted, and mean rewards."""
    c = submissions.c
    acc = (c.status == "accepted")
    q = (select(c.policy_version,
                func.count().label("received"),
                func.avg(c.reward_mean).label("mean_reward"),
                func.sum(case((acc, 1), else_=0)).label("accepted"))
         .group_by(c.policy_version).order_by(c.policy_version.desc()).limit(last))
    return list(conn.execute(q))


def accepted_reward_by_version(conn: Connection, last: int = 20) -> dict[int, float]:
    c = submissions.c
    q = (select(c.policy_version, func.avg(c.reward_mean)).where(c.status == "accepted")
         .group_by(c.policy_version).order_by(c.policy_version.desc()).limit(last))
    return {int(v): float(m) for v, m in conn.execute(q)}


# -- archive --------------------------------------------------------------------------------
def unarchived(conn: Connection, limit: int) -> list[Row]:
    c = submissions.c
    q = (select(c.submission_id, c.lease_id, c.worker_id, c.task_id, c.task_index, c.policy_version,
                c.rewards, c.advantages, c.n_tokens, c.full_check, c.received_at, c.envelope,
                leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c.lease_id)
         .where(c.archived.is_(False)).order_by(c.received_at).limit(limit))
    return list(conn.execute(q))


def unarchived_verdicts(conn: Connection, limit: int) -> list[Row]:
    """Decided submissions whose verdict is not archived yet."""
    c = submissions.c
    q = (select(c.submission_id, c.worker_id, c.policy_version, c.status, c.reason, c.full_check,
                c.decided_at, c.verdict)
         .where(and_(c.verdict_archived.is_(False), c.status.in_(("accepted", "rejected"))))
         .order_by(c.decided_at).limit(limit))
    return list(conn.execute(q))


def mark_archived(conn: Connection, ids: list[str], column: str) -> None:
    if ids:
        conn.execute(update(submissions).where(submissions.c.submission_id.in_(ids)).values(**{column: True}))
