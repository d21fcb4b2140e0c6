"""Read-only queries behind the dashboard (one function per question, plain rows out).

They read the coordinator's tables (`coordinator.store.schema`) inside the caller's read
transaction and never write, except `put_eval`, which stores a trainer's evaluation report in
the `meta` key/value table under `eval/vNNNNNN` (small, one row per evaluated version; no
migration needed, and replicas sharing a database see the same curve).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from coordinator.store import meta as meta_store
from coordinator.store.schema import leases, meta, policy_versions, submission_payloads, submissions

EVAL_PREFIX = "eval/v"


def per_worker_submissions(conn: Connection) -> dict[str, dict[str, int]]:
    """worker_id -> {status: count, 'tokens': accepted tokens, 'full_checked': decided full checks}."""
    c = submissions.c
    out: dict[str, dict[str, int]] = {}
    q = select(c.worker_id, c.status, func.count(), func.sum(case((c.full_check, 1), else_=0))).group_by(
        c.worker_id, c.status)
    for wid, status, n, full in conn.execute(q):
        d = out.setdefault(wid, {"queued": 0, "accepted": 0, "rejected": 0, "dropped": 0, "full_checked": 0})
        d[status] = int(n)
        if status in ("accepted", "rejected"):
            d["full_checked"] += int(full or 0)
    return out


def recent_tokens(conn: Connection, since: float) -> dict[str, tuple[int, int]]:
    """worker_id -> (submissions, completion tokens) received since `since`."""
    c = submissions.c
    q = (select(c.worker_id, func.count(), func.sum(c.n_tokens)).where(c.received_at >= since)
         .group_by(c.worker_id))
    return {wid: (int(n), int(t or 0)) for wid, n, t in conn.execute(q)}


def active_leases(conn: Connection) -> dict[str, int]:
    q = select(leases.c.worker_id, func.count()).where(leases.c.status == "active").group_by(leases.c.worker_id)
    return {wid: int(n) for wid, n in conn.execute(q)}


def versions(conn: Connection, limit: int) -> list[Any]:
    """The newest `limit` announced versions, newest first (with their signed manifests)."""
    pv = policy_versions.c
    q = select(pv.version, pv.step, pv.created_at, pv.received_at, pv.manifest).order_by(pv.version.desc()).limit(limit)
    return list(conn.execute(q))


def by_version(conn: Connection, lowest: int) -> dict[int, dict[str, Any]]:
    """policy_version -> submissions, accepted, rejected, mean reward (all and accepted) for versions >= lowest."""
    c = submissions.c
    acc = c.status == "accepted"
    q = (select(c.policy_version, func.count(), func.sum(case((acc, 1), else_=0)),
                func.sum(case((c.status == "rejected", 1), else_=0)), func.avg(c.reward_mean),
                func.avg(case((acc, c.reward_mean), else_=None)), func.sum(c.n_tokens))
         .where(c.policy_version >= lowest).group_by(c.policy_version))
    return {int(v): {"submissions": int(n), "accepted": int(a or 0), "rejected": int(r or 0),
                     "mean_reward": None if m is None else float(m),
                     "mean_reward_accepted": None if ma is None else float(ma), "tokens": int(t or 0)}
            for v, n, a, r, m, ma, t in conn.execute(q)}


def queue_depth(conn: Connection) -> int:
    q = select(func.count()).select_from(submissions).where(submissions.c.status == "queued")
    return int(conn.execute(q).scalar_one())


def recent_rejections(conn: Connection, limit: int) -> list[Any]:
    c = submissions.c
    q = (select(c.submission_id, c.worker_id, c.policy_version, c.decided_at, c.received_at, c.reason, c.verdict,
                c.full_check)
         .where(c.status == "rejected").order_by(c.decided_at.desc(), c.submission_id).limit(limit))
    return list(conn.execute(q))


def rollout(conn: Connection, submission_id: str) -> Any | None:
    c = submissions.c
    q = (select(c.submission_id, c.worker_id, c.task_id, c.task_index, c.policy_version, c.status, c.full_check,
                c.rewards, c.advantages, c.n_tokens, c.received_at, c.decided_at, c.reason, c.buffer, c.verdict,
                c.archived, submission_payloads.c.envelope, leases.c.envelope.label("lease_envelope"))
         .join(submission_payloads, submission_payloads.c.submission_id == c.submission_id, isouter=True)
         .join(leases, leases.c.lease_id == c.lease_id, isouter=True)
         .where(c.submission_id == submission_id))
    return conn.execute(q).first()


# -- evaluation reports ------------------------------------------------------------------------
def eval_key(version: int) -> str:
    return f"{EVAL_PREFIX}{version:06d}"


def put_eval(conn: Connection, version: int, report: dict) -> None:
    meta_store.put(conn, eval_key(version), json.dumps(report, sort_keys=True))


def evals(conn: Connection) -> dict[int, dict]:
    """policy_version -> its newest evaluation report."""
    q = select(meta.c.key, meta.c.value).where(meta.c.key.like(EVAL_PREFIX + "%"))
    out = {}
    for key, value in conn.execute(q):
        try:
            out[int(key[len(EVAL_PREFIX):])] = json.loads(value)
        except ValueError:
            continue
    return out


def version_exists(conn: Connection, version: int) -> bool:
    q = select(func.count()).select_from(policy_versions).where(and_(policy_versions.c.version == version))
    return int(conn.execute(q).scalar_one()) > 0
