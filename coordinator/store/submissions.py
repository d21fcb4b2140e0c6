"""Queries on `submissions`: intake, the verification queue, verdicts, the training buffer,
the archive flags and the statistics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, case, func, or_, select, update

from coordinator.store import meta
from coordinator.store.schema import leases, submission_payloads, submissions, workers

c_ = submissions.c
# The training buffer: [held ->] ready -> handed (take_batch) -> consumed (ack); a group
# accepted without a full check is held until its worker's next clean full check; a handed
# group not acknowledged within the ack timeout is taken again. stale and dropped are final.
UNCONSUMED = ("held", "ready", "handed")
# Why an accepted group never reached a training step (`unused`; issue 23): it fell below the
# buffer's floor (stale), the same while it was held for its worker's next clean check
# (stale_held), its worker was banned (ban), or the trainer reported it in an ack
# (zero_advantage, pass_rate, trainer_stale). `waste` adds the groups still in the buffer.
WASTE_CAUSES = ("stale", "stale_held", "ban", "zero_advantage", "pass_rate", "trainer_stale")
TRAINER_CAUSES = {"zero_advantage": "zero_advantage", "pass_rate": "pass_rate", "stale": "trainer_stale"}
# hot statements, built once (see workers.py)
_STATUS = select(c_.submission_id, c_.worker_id, c_.status, c_.reason, c_.n_tokens, c_.full_check, c_.policy_version,
                 c_.lease_id, c_.received_at).where(c_.submission_id == bindparam("s"))
_STATUSES = select(c_.submission_id, c_.worker_id, c_.status, c_.reason, c_.n_tokens).where(
    c_.submission_id.in_(bindparam("ids", expanding=True)))
_CONTENT = select(c_.submission_id).where(and_(c_.task_id == bindparam("t"), c_.content_hash == bindparam("h")))
_INSERT = submissions.insert()
_QUEUED = select(func.count()).select_from(submissions).where(c_.status == "queued")
_WAITING = select(func.count()).select_from(submissions).where(
    and_(c_.buffer.in_(("ready", "handed")), c_.policy_version >= bindparam("floor")))
_VERIFY_TIMES = (select(c_.decided_at - c_.received_at).where(c_.status == "accepted")
                 .order_by(c_.received_at.desc()).limit(bindparam("n")))
_INSERT_PAYLOAD = submission_payloads.insert()
p_ = submission_payloads.c
# A newcomer's job (its worker has no clean full check yet) received after `young` waits
# behind every other job: 1 orders it last (see `claim`).
_NEWCOMER = case((and_(workers.c.clean_checks == 0, c_.received_at > bindparam("young")), 1), else_=0)
_CLAIMABLE = (select(c_.submission_id, _NEWCOMER.label("newcomer"))
              .join(workers, workers.c.worker_id == c_.worker_id)
              .where(and_(c_.status == "queued", c_.claims < bindparam("max_claims"),
                          or_(c_.claimed_at.is_(None), c_.claimed_at < bindparam("before"))))
              .order_by(_NEWCOMER, c_.received_at, c_.submission_id).limit(bindparam("n")))
_MARK_CLAIMED = (update(submissions).where(and_(c_.submission_id.in_(bindparam("ids", expanding=True)),
                                                c_.status == "queued"))
                 .values(claimed_by=bindparam("by"), claimed_instance=bindparam("inst"), claimed_at=bindparam("now"),
                         claims=c_.claims + 1))
_JOBS = (select(c_.submission_id, c_.worker_id, c_.task_index, c_.rewards, c_.full_check, p_.envelope,
                leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c_.lease_id)
         .join(submission_payloads, p_.submission_id == c_.submission_id)
         .where(c_.submission_id.in_(bindparam("ids", expanding=True))).order_by(c_.received_at, c_.submission_id))
_DECIDE = (update(submissions).where(and_(c_.submission_id == bindparam("s"), c_.status == "queued"))
           .values(status=bindparam("st"), verdict=bindparam("v"), reason=bindparam("r"), decided_at=bindparam("now"),
                   buffer=bindparam("buf")))


def get(conn: Connection, submission_id: str) -> Row | None:
    return conn.execute(select(submissions).where(submissions.c.submission_id == submission_id)).first()


def get_status(conn: Connection, submission_id: str) -> Row | None:
    return conn.execute(_STATUS, {"s": submission_id}).first()


def get_statuses(conn: Connection, submission_ids: list[str]) -> list[Row]:
    return list(conn.execute(_STATUSES, {"ids": submission_ids}))


def content_exists(conn: Connection, task_id: str, content_hash: str) -> str | None:
    return conn.execute(_CONTENT, {"t": task_id, "h": content_hash}).scalar_one_or_none()


def insert(conn: Connection, values: dict[str, Any], envelope: str, group_json: str) -> None:
    conn.execute(_INSERT, values)
    conn.execute(_INSERT_PAYLOAD, {"submission_id": values["submission_id"], "envelope": envelope,
                                   "group_json": group_json})


# -- verification queue ----------------------------------------------------------------------
def claim(conn: Connection, verifier: str, now: float, claim_ttl_s: float, limit: int,
          newcomer_wait_s: float = 0.0, max_claims: int = 5, instance: str | None = None) -> list[Row]:
    """Hand up to `limit` queued submissions to `verifier` (its process `instance`, recorded for
    `reclaim`; None for a verifier that names none): unclaimed ones, or ones whose
    claim is older than `claim_ttl_s` (the verifier that took them died). Oldest first, except
    that a newcomer's submission (its worker has no clean full check) younger than
    `newcomer_wait_s` comes after all others and never shares a claim with them: throw-away
    identities (a spammer, one per policy version, each checked in full) then neither delay
    the verdicts of workers with a record in the same claim nor go before them; a newcomer
    waits at most `newcomer_wait_s` behind them (0: strictly oldest first). A submission already
    handed out `max_claims` times is not handed out again (`drop_unjudged` ends it)."""
    q = _CLAIMABLE.with_for_update(skip_locked=True, of=submissions) if conn.dialect.name == "postgresql" else _CLAIMABLE
    found = list(conn.execute(q, {"before": now - claim_ttl_s, "n": limit, "young": now - newcomer_wait_s,
                                  "max_claims": max_claims}))
    ids = [r.submission_id for r in found if r.newcomer == found[0].newcomer] if found else []
    if not ids:
        return []
    conn.execute(_MARK_CLAIMED, {"ids": ids, "by": verifier, "inst": instance, "now": now})
    return list(conn.execute(_JOBS, {"ids": ids}))


_OWN_CLAIMS = (select(c_.submission_id)
               .where(and_(c_.status == "queued", c_.claimed_by == bindparam("by"),
                           c_.claimed_instance.is_not_distinct_from(bindparam("inst")),
                           c_.claimed_at >= bindparam("before"), c_.claims < bindparam("max_claims")))
               .order_by(c_.claimed_at, c_.received_at, c_.submission_id).limit(bindparam("n")))


def reclaim(conn: Connection, verifier: str, now: float, claim_ttl_s: float, limit: int,
            max_claims: int = 5, instance: str | None = None) -> list[Row]:
    """Hand `verifier` back up to `limit` of its own unexpired claims: those of the same key and
    process `instance` (None matches only claims made without one; replicas sharing a key never
    take each other's claims, which the sibling is judging). It restarted: they would
    otherwise wait out `claim_ttl_s`), longest held first (a job just taken back and not judged
    comes after the others), each claimed anew (counted against
    `max_claims` like any hand-out, so a verifier that dies on a job at every start is not fed
    it for ever). Claims of any other verifier or instance are never touched."""
    q = _OWN_CLAIMS.with_for_update(skip_locked=True) if conn.dialect.name == "postgresql" else _OWN_CLAIMS
    ids = [r.submission_id for r in conn.execute(q, {"by": verifier, "inst": instance, "before": now - claim_ttl_s,
                                                      "n": limit, "max_claims": max_claims})]
    if not ids:
        return []
    conn.execute(_MARK_CLAIMED, {"ids": ids, "by": verifier, "inst": instance, "now": now})
    return list(conn.execute(_JOBS, {"ids": ids}))


def judged(conn: Connection, submission_id: str) -> Row | None:
    """What a verdict must name: the stored submission digest (NULL for rows older than
    migration 0004), the stored envelope when there is no digest, and the lease envelope."""
    q = (select(c_.envelope_sha256, leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c_.lease_id).where(c_.submission_id == submission_id))
    row = conn.execute(q).first()
    if row is None or row.envelope_sha256 is not None:
        return row
    q = (select(c_.envelope_sha256, leases.c.envelope.label("lease_envelope"), p_.envelope)
         .join(leases, leases.c.lease_id == c_.lease_id)
         .join(submission_payloads, p_.submission_id == c_.submission_id).where(c_.submission_id == submission_id))
    return conn.execute(q).first()


def decide(conn: Connection, submission_id: str, accepted: bool, verdict_json: str, reason: str, now: float,
           buffer: str | None = "ready") -> bool:
    """queued -> accepted (into the buffer as `buffer`: 'ready' or 'held') or rejected; False
    if it was no longer queued."""
    res = conn.execute(_DECIDE, {"s": submission_id, "st": "accepted" if accepted else "rejected", "v": verdict_json,
                                 "r": reason[:2000], "now": now, "buf": buffer if accepted else None})
    return res.rowcount == 1


def release_held(conn: Connection, worker_id: str, received_up_to: float) -> int:
    """A clean full check of `worker_id`: its held groups received at or before it become ready."""
    c = submissions.c
    return conn.execute(update(submissions).where(and_(
        c.worker_id == worker_id, c.buffer == "held", c.received_at <= received_up_to)).values(buffer="ready")).rowcount


def drop_unconsumed(conn: Connection, worker_id: str, reason: str, now: float) -> int:
    """A banned worker's queued and unacknowledged submissions leave the pipeline (a handed-out
    one is never handed out again; the trainer may hold it already)."""
    c = submissions.c
    n = conn.execute(update(submissions).where(and_(c.worker_id == worker_id, c.status == "queued"))
                     .values(status="dropped", reason=reason[:2000], decided_at=now)).rowcount
    n += conn.execute(update(submissions).where(
        and_(c.worker_id == worker_id, c.status == "accepted", c.buffer.in_(UNCONSUMED)))
        .values(status="dropped", buffer="dropped", reason=reason[:2000], unused="ban")).rowcount
    return n


def drop_queued(conn: Connection, submission_ids: list[str], reason: str, now: float) -> int:
    """Queued submissions that no verifier can be sent leave the queue as 'dropped' (no ban)."""
    c = submissions.c
    return conn.execute(update(submissions).where(and_(c.submission_id.in_(submission_ids), c.status == "queued"))
                        .values(status="dropped", reason=reason[:2000], decided_at=now)).rowcount


def drop_unjudged(conn: Connection, now: float, claim_ttl_s: float, max_claims: int) -> list[Row]:
    """Queued submissions handed to verifiers `max_claims` times whose last claim expired
    without a verdict leave the queue as 'dropped' (no ban: the failure may be the verifiers'
    own); returns their (submission_id, worker_id) rows."""
    c = submissions.c
    due = and_(c.status == "queued", c.claims >= max_claims, c.claimed_at < now - claim_ttl_s)
    return list(conn.execute(update(submissions).where(due)
                             .values(status="dropped", decided_at=now,
                                     reason=f"no verdict after {max_claims} claims by verifiers (none could judge it)")
                             .returning(c.submission_id, c.worker_id)))


# -- training buffer -------------------------------------------------------------------------
def _takeable(now: float, ack_timeout_s: float):
    c = submissions.c
    return or_(c.buffer == "ready", and_(c.buffer == "handed", c.handed_at < now - ack_timeout_s))


_STALE_CAUSE = case((submissions.c.buffer == "held", "stale_held"), else_="stale")  # from the row before the update


def drop_stale(conn: Connection, floor: int) -> dict[str, int]:
    """Unconsumed groups below `floor` leave the buffer as stale; returns how many by cause:
    `stale_held` for those still held for their worker's next clean check, `stale` the others."""
    c = submissions.c
    causes = list(conn.execute(update(submissions).where(and_(c.buffer.in_(UNCONSUMED), c.policy_version < floor))
                               .values(buffer="stale", unused=_STALE_CAUSE).returning(c.unused)).scalars())
    return {"stale": causes.count("stale"), "stale_held": causes.count("stale_held")}


def _freshest(lower: int) -> tuple:
    """Issue 23: groups in their last version above the floor (`lower`: they go stale at the next
    version) first, then the newest policy version, and within one the earliest accepted: a step
    trains on the least stale data there is, and older groups still come while they are above
    the floor instead of leaving the buffer a whole version at a time."""
    c = submissions.c
    return (case((c.policy_version <= lower, 0), else_=1), c.policy_version.desc(), c.decided_at, c.submission_id)


def take_batch(conn: Connection, lower: int, limit: int, now: float, ack_timeout_s: float) -> list[Row]:
    """Takeable groups with policy_version >= lower, in `_freshest` order: ready ones, and handed
    ones whose hand-out is older than `ack_timeout_s` (the answer or the trainer was lost). They
    become `handed` in this transaction; only `ack` consumes them."""
    c = submissions.c
    takeable = _takeable(now, ack_timeout_s)
    q = (select(c.submission_id).where(and_(takeable, c.policy_version >= lower))
         .order_by(*_freshest(lower)).limit(limit))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    conn.execute(update(submissions).where(and_(c.submission_id.in_(ids), takeable))
                 .values(buffer="handed", handed_at=now))
    q = (select(c.submission_id, c.task_id, c.worker_id, c.policy_version, c.rewards, c.advantages,
                p_.group_json, leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c.lease_id)
         .join(submission_payloads, p_.submission_id == c.submission_id)
         .where(c.submission_id.in_(ids)).order_by(*_freshest(lower)))
    return list(conn.execute(q))


def ack(conn: Connection, ids: list[str], now: float, unused: dict[str, str] | None = None) -> tuple[int, dict[str, int]]:
    """handed -> consumed for `ids`; ids in any other state are left alone. `unused` (id -> the
    trainer's reason, a key of `TRAINER_CAUSES`) marks consumed groups the trainer will not train;
    a group keeps the first cause recorded for it. Returns how many moved, and how many were
    newly marked per cause (so a resent ack counts nothing twice). The moved ones are added to
    meta `TRAINER_TAKEN` (the lease bound's count of what the trainer took, `store.swarm_counts`)."""
    c = submissions.c
    n = conn.execute(update(submissions).where(and_(c.submission_id.in_(ids), c.buffer == "handed"))
                     .values(buffer="consumed", consumed_at=now)).rowcount
    if n:
        meta.add_int(conn, meta.TRAINER_TAKEN, n)
    marked: dict[str, int] = {}
    for reason, cause in TRAINER_CAUSES.items():
        named = [i for i, r in (unused or {}).items() if r == reason]
        if named:
            marked[cause] = conn.execute(update(submissions).where(and_(
                c.submission_id.in_(named), c.buffer == "consumed", c.unused.is_(None))).values(unused=cause)).rowcount
    return n, marked


def recent_verify_times(conn: Connection, limit: int = 32) -> list[float]:
    """Seconds from receipt to verdict of the newest accepted submissions."""
    return [float(t) for t in conn.execute(_VERIFY_TIMES, {"n": limit}).scalars() if t is not None]



def on_their_way(conn: Connection, floor: int) -> int:
    """Submissions queued for the verifier, and takeable groups (ready or handed out) at or above
    `floor`. Held groups do not count: they wait for their worker's next clean check, which needs
    its next submissions (counting them, a lease bound could wait for them for ever)."""
    return int(conn.execute(_QUEUED).scalar_one()) + waiting(conn, floor)


def waiting(conn: Connection, floor: int) -> int:
    """Takeable groups (ready or handed out) at or above `floor`."""
    return int(conn.execute(_WAITING, {"floor": floor}).scalar_one())



def buffer_depth(conn: Connection) -> int:
    """Accepted groups not yet handed to the trainer: ready ones and those held for their
    worker's next clean full check together. Public (/metrics, /v1/stats, the dashboard): with
    ready groups alone, a worker watching it right after its own verdict learned whether that
    submission was fully checked (ready at once) or not (held); `count_by_buffer` splits it for
    the operator."""
    q = select(func.count()).select_from(submissions).where(submissions.c.buffer.in_(("ready", "held")))
    return int(conn.execute(q).scalar_one())


# -- statistics -----------------------------------------------------------------------------
def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(submissions.c.status, func.count()).group_by(submissions.c.status)
    return {s: n for s, n in conn.execute(q)}


def count_by_buffer(conn: Connection) -> dict[str, int]:
    q = (select(submissions.c.buffer, func.count()).where(submissions.c.buffer.is_not(None))
         .group_by(submissions.c.buffer))
    return {s: n for s, n in conn.execute(q)}


def waste(conn: Connection) -> list[Row]:
    """Per worker and cause: accepted groups that never reached a training step and their tokens
    (cause NULL: trained or still waiting; `buffer` tells which), with the worker's submitted
    tokens and active span, from which `coordinator.rules.waste` prices them in worker-seconds."""
    c = submissions.c
    # rows from before migration 0007 have no cause: their buffer state says it
    cause = func.coalesce(c.unused, case((c.buffer == "stale", "stale"), (c.buffer == "dropped", "ban"), else_=None))
    q = (select(c.worker_id, cause.label("cause"), c.buffer, func.count().label("groups"),
                func.sum(c.n_tokens).label("tokens"))
         .where(or_(c.status == "accepted", and_(c.status == "dropped", c.buffer == "dropped")))
         .group_by(c.worker_id, cause, c.buffer))
    return list(conn.execute(q))


def worker_spans(conn: Connection) -> list[Row]:
    """Per worker: tokens submitted, and the span from its first lease to its last submission."""
    c, lc = submissions.c, leases.c
    q = (select(c.worker_id, func.sum(c.n_tokens).label("tokens"), func.min(lc.issued_at).label("first"),
                func.max(c.received_at).label("last"))
         .join(leases, lc.lease_id == c.lease_id).group_by(c.worker_id))
    return list(conn.execute(q))


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
                c.rewards, c.advantages, c.n_tokens, c.full_check, c.received_at, p_.envelope,
                leases.c.envelope.label("lease_envelope"))
         .join(leases, leases.c.lease_id == c.lease_id)
         .join(submission_payloads, p_.submission_id == c.submission_id)
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


def prune_payloads(conn: Connection, before: float, limit: int = 5000) -> int:
    """Delete the envelopes of submissions that no longer need them: archived (both the
    submission and, if decided by a verifier, its verdict), decided before `before`, and not
    waiting in the training buffer or for the trainer's acknowledgement. The Parquet archive keeps them."""
    c = submissions.c
    done = and_(c.archived.is_(True), c.decided_at < before, c.status != "queued",
                or_(c.buffer.is_(None), c.buffer.not_in(UNCONSUMED)),
                or_(c.verdict_archived.is_(True), c.status == "dropped"))
    ids = select(c.submission_id).where(done).limit(limit)
    present = select(p_.submission_id).where(p_.submission_id.in_(ids.scalar_subquery()))
    doomed = list(conn.execute(present).scalars())
    if not doomed:
        return 0
    return conn.execute(submission_payloads.delete().where(p_.submission_id.in_(doomed))).rowcount


def mark_archived(conn: Connection, ids: list[str], column: str) -> None:
    if ids:
        conn.execute(update(submissions).where(submissions.c.submission_id.in_(ids)).values(**{column: True}))
