"""The verifier's side: claiming queued submissions and recording verdicts.

A claim hands out the oldest queued submissions not claimed by a live verifier (a claim
older than `verification_claim_ttl_s` is handed out again). Each job carries the signed
lease and the signed submission as received, the coordinator's rewards, the task's answer,
and `full_check` as drawn at intake from the worker's check rate.

A verdict is accepted only from a configured verifier key and only for a queued submission.
Accepted: the group enters the training buffer (its advantages were computed at intake) and
the worker is credited (accepted count, accepted tokens; a full check also counts towards a
lower check rate, and its sampling counts to the worker's near-tie ledger). Rejected, or
accepted but with the worker's near-tie count now implausible for honest noise
(`coordinator.rules.near_ties`): the worker is banned with the reason, its queued and
untrained submissions are dropped, and its active leases are revoked (their tasks return).
"""

from __future__ import annotations

import json
import logging

from coordinator.context import Context
from coordinator.errors import Conflict, Invalid, NotFound
from coordinator.rules import near_ties
from coordinator.service import judged, use_nonce
from coordinator.store import leases, submissions, workers
from protocol.envelope import Opened
from protocol.messages import ClaimRequest, Verdict

log = logging.getLogger("swarmrl.coordinator")


def claim(ctx: Context, opened: Opened[ClaimRequest]) -> bytes:
    """Claim jobs; returns the JSON of a `ClaimResponse`, assembled from the stored envelopes
    without re-encoding them (they are large and already JSON)."""
    now = ctx.clock()
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        rows = submissions.claim(conn, opened.envelope.signer, now, ctx.cfg.verification_claim_ttl_s,
                                 opened.body.max_jobs)
    parts = []
    for r in rows:
        task = ctx.tasks.task(r.task_index)
        head = json.dumps({"submission_id": r.submission_id, "worker_id": r.worker_id,
                           "rewards": json.loads(r.rewards), "task_answer": task.answer,
                           "task_kind": task.kind, "full_check": bool(r.full_check)}, separators=(",", ":"))
        parts.append(head[:-1] + ',"lease":' + r.lease_envelope + ',"submission":' + r.envelope + "}")
    return ('{"jobs":[' + ",".join(parts) + "]}").encode("utf-8")


def verdict(ctx: Context, opened: Opened[Verdict]) -> dict:
    v = opened.body
    now = ctx.clock()
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        row = submissions.get_status(conn, v.submission_id)
        if row is None:
            raise NotFound("unknown_submission", f"no submission {v.submission_id}")
        if row.status != "queued":
            raise Conflict("already_decided", f"submission {v.submission_id} is already {row.status}")
        judged.check_judged(conn, v)  # the verdict names the stored submission and lease
        if row.full_check and not v.full_check:
            raise Invalid("check_skipped", f"submission {v.submission_id} was drawn for a full check; "
                                           "the verdict must come from one")
        verdict_json = opened.envelope.model_dump_json()
        if not submissions.decide(conn, v.submission_id, v.accepted, verdict_json, v.reason, now):
            raise Conflict("already_decided", f"submission {v.submission_id} was decided meanwhile")
        reason = ""
        if v.accepted:
            positions, ties = _sampling_counts(v)
            workers.credit_accepted(conn, row.worker_id, row.n_tokens, clean_check=v.full_check,
                                    positions=positions, near_ties=ties)
            reason = _near_tie_excess(ctx, conn, row.worker_id) if ties else ""
        else:
            reason = f"submission {v.submission_id} rejected: {v.reason or _failed_checks(v)}"
            workers.debit_rejected(conn, row.worker_id)
        if reason:
            workers.ban(conn, row.worker_id, reason)
            dropped = submissions.drop_unconsumed(conn, row.worker_id, f"worker banned: {reason}", now)
            revoked = leases.close_many(conn, leases.active_of_workers(conn, [row.worker_id]), "revoked", now)
            leases.return_tasks(conn, revoked, now)
    m = ctx.metrics
    m.verdicts.labels("accepted" if v.accepted else "rejected", str(v.full_check).lower()).inc()
    if v.accepted and not reason:
        ctx.groups.notify()
    if reason:
        m.bans.inc()
        log.info("banned worker %s: %s (%d submissions dropped, %d leases revoked)", row.worker_id, reason,
                 dropped, len(revoked))
    return {"ok": True}


def _sampling_counts(v: Verdict) -> tuple[int, int]:
    """(tokens checked, tokens off the seeded argmax) of a full check's sampling result."""
    for c in v.checks:
        if c.name == "sampling" and v.full_check:
            try:
                return max(0, int(c.stats.get("positions", 0))), max(0, int(c.stats.get("not_argmax", 0)))
            except (TypeError, ValueError):
                return 0, 0
    return 0, 0


def _near_tie_excess(ctx: Context, conn, worker_id: str) -> str:
    """The ban reason when the worker's near-tie count has become implausible, else ''."""
    cfg = ctx.cfg.near_ties
    w = workers.get(conn, worker_id)
    if not cfg.enabled or w is None or not near_ties.implausible(
            w.near_ties, w.checked_positions, honest_rate=cfg.honest_rate, alpha=cfg.alpha):
        return ""
    return (f"{w.near_ties} of {w.checked_positions} fully checked tokens were not the seeded sample "
            f"(each within the sampling tolerance): P < {cfg.alpha:g} at the honest rate {cfg.honest_rate:g} "
            "(another temperature or policy?)")


def _failed_checks(v: Verdict) -> str:
    failed = [c.name for c in v.checks if not c.passed]
    return "failed " + ", ".join(failed) if failed else "rejected by the verifier"
