"""The verifier's side: claiming queued submissions and recording verdicts.

A claim hands out the oldest queued submissions not claimed by a live verifier (a claim
older than `verification_claim_ttl_s` is handed out again; a verifier that restarts takes its
own unexpired claims back at once with a resume, `resume`); submissions of workers without a
clean full check come after the others, in claims of their own, for up to
`verification_newcomer_wait_s` (`coordinator.store.submissions.claim`). Each job carries the signed
lease and the signed submission as received, the coordinator's rewards, the task's answer,
and `full_check` as drawn at intake from the worker's check rate.

A verdict is accepted only from a configured verifier key, only for a queued submission, and
only when it is consistent (an acceptance must carry passing checks with finite numbers:
`coordinator.rules.verdicts.verdict_problems`). What it causes — the buffer state of the
group ('ready', or 'held' until the worker's next clean full check), the worker's credit,
near-tie and proof-drift ledgers, the release of held groups, a ban — is decided by the pure
rule `coordinator.rules.verdicts.consequences` and applied here in one transaction. A ban
drops the worker's queued, held and untrained submissions and revokes its active leases
(their tasks return). A rejection the verifier marks as no doing of the worker
(`Verdict.worker_fault` false: a reward dispute, `protocol.messages.NO_FAULT_CHECKS`) is
recorded, and bans and debits no one (metric label `disputed`).
"""

from __future__ import annotations

import json
import logging

from coordinator.context import Context
from coordinator.errors import Conflict, Invalid, NotFound
from coordinator.rules import verdicts
from coordinator.service import judged, use_nonce
from coordinator.store import leases, submissions, workers
from protocol import rawjson
from protocol.envelope import Opened
from protocol.errors import ProtocolError
from protocol.messages import ClaimRequest, Verdict
from protocol.tasks import task_data_problem

log = logging.getLogger("swarmrl.coordinator")


def claim(ctx: Context, opened: Opened[ClaimRequest]) -> bytes:
    """Claim jobs; returns the JSON of a `ClaimResponse`, assembled from the stored envelopes
    without re-encoding them (they are large and already JSON: `protocol.rawjson`)."""
    now = ctx.clock()
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        rows = submissions.claim(conn, opened.envelope.signer, now, ctx.cfg.verification_claim_ttl_s,
                                 opened.body.max_jobs, ctx.cfg.verification_newcomer_wait_s,
                                 ctx.cfg.verification_max_claims, opened.body.instance)
    return _claim_response(ctx, rows)


def resume(ctx: Context, opened: Opened[ClaimRequest]) -> bytes:
    """A verifier that (re)started takes back its own unexpired claims, as a `ClaimResponse`
    (`coordinator.store.submissions.reclaim`): killed mid-claim, it left them unjudged for up to
    `verification_claim_ttl_s` though it was back in seconds. Only the signer's own claims, made
    by the same process `instance` (`ClaimRequest.instance`): a verifier can never take another's
    before they expire, nor a replica sharing a key those its siblings are judging."""
    now = ctx.clock()
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        rows = submissions.reclaim(conn, opened.envelope.signer, now, ctx.cfg.verification_claim_ttl_s,
                                   opened.body.max_jobs, ctx.cfg.verification_max_claims, opened.body.instance)
    if rows:
        log.info("verifier %s took back %d of its unexpired claims", opened.envelope.signer[:16], len(rows))
    return _claim_response(ctx, rows)


def _claim_response(ctx: Context, rows) -> bytes:
    """The claim answer of `rows`. A job whose task data is over the protocol's bound (or not
    strict JSON) is not sent: no verifier could read the answer that carried it, so each claim
    of it failed whole and was retried for ever. Every source is held to that bound when it
    gives a task (`protocol.tasks.Bounded`), so only a source that changed under the coordinator
    gets here; its submission is dropped at once, with the reason (no ban: the worker did
    nothing wrong), and the claim's other jobs go out."""
    jobs, refused = [], {}
    for r in rows:
        try:
            task = ctx.tasks.task(r.task_index)
            problem = task_data_problem(task.answer, task.kind, task.metadata)
        except ProtocolError as exc:
            problem = str(exc)
        if problem:
            refused[r.submission_id] = problem
            continue
        jobs.append(rawjson.verification_job(
            {"submission_id": r.submission_id, "worker_id": r.worker_id, "rewards": json.loads(r.rewards),
             "task_answer": task.answer, "task_kind": task.kind,
             "task_metadata": task.metadata, "full_check": bool(r.full_check)},
            lease=r.lease_envelope, submission=r.envelope))
    if refused:
        _drop_refused(ctx, refused)
    return rawjson.claim_response(jobs).encode("utf-8")


def _drop_refused(ctx: Context, refused: dict[str, str]) -> None:
    now = ctx.clock()
    with ctx.db.write() as conn:
        for sid, problem in refused.items():
            submissions.drop_queued(conn, [sid], f"task data cannot be sent to a verifier: {problem}", now)
    ctx.metrics.unjudged.inc(len(refused))
    log.error("%d submission(s) dropped unjudged, their task data cannot be sent to a verifier (fix the task "
              "source): %s", len(refused), "; ".join(f"{sid}: {p}" for sid, p in list(refused.items())[:3]))


def verdict_rules(cfg) -> verdicts.Rules:
    return verdicts.Rules(hold_until_checked=cfg.standing.hold_until_checked, near_ties_enabled=cfg.near_ties.enabled,
                          honest_rate=cfg.near_ties.honest_rate, alpha=cfg.near_ties.alpha,
                          drift_enabled=cfg.proof_drift.enabled,
                          drift={d: (lim.allowance, lim.limit, lim.worst_allowance, lim.worst_limit)
                                 for d, lim in (("float32", cfg.proof_drift.float32),
                                                ("bfloat16", cfg.proof_drift.bfloat16))})


def verdict(ctx: Context, opened: Opened[Verdict]) -> dict:
    """Record a verdict and apply what it causes (`coordinator.rules.verdicts.consequences`)."""
    v = opened.body
    now = ctx.clock()
    problem = verdicts.verdict_problems(v.accepted, v.full_check, v.checks, v.worker_fault)
    if problem:
        raise Invalid("inconsistent_verdict", f"verdict for {v.submission_id} refused: {problem}")
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
        # locked: the new standing is computed from this read and written back whole (the
        # drift scores), so a verdict of the same worker on another replica must wait for it
        w = workers.get(conn, row.worker_id, for_update=True)
        standing = verdicts.Standing(checked_positions=w.checked_positions if w else 0,
                                     near_ties=w.near_ties if w else 0,
                                     drift=(w.drift_score, w.drift_worst_score) if w else (0.0, 0.0),
                                     last_clean_check_at=w.last_clean_check_at if w else None,
                                     near_tie_score=w.near_tie_score if w else 0.0)
        reason = f"submission {v.submission_id} rejected: {v.reason or _failed_checks(v)}" if not v.accepted else ""
        c = verdicts.consequences(v.accepted, v.full_check, v.checks, reason, received_at=row.received_at,
                                  standing=standing, rules=verdict_rules(ctx.cfg), worker_fault=v.worker_fault)
        if not submissions.decide(conn, v.submission_id, v.accepted, opened.envelope.model_dump_json(), v.reason,
                                  now, buffer=c.buffer):
            raise Conflict("already_decided", f"submission {v.submission_id} was decided meanwhile")
        released = 0
        if v.accepted:
            workers.credit_accepted(conn, row.worker_id, row.n_tokens, clean_check=c.clean_check,
                                    positions=c.positions, near_ties=c.near_ties, drift=c.drift,
                                    clean_check_at=c.release_held_up_to, near_tie_score=c.near_tie_score)
            if c.release_held_up_to is not None and not c.ban_reason:
                released = submissions.release_held(conn, row.worker_id, c.release_held_up_to)
        elif v.worker_fault:
            workers.debit_rejected(conn, row.worker_id)
        if c.ban_reason:
            workers.ban(conn, row.worker_id, c.ban_reason, now)
            dropped = submissions.drop_unconsumed(conn, row.worker_id, f"worker banned: {c.ban_reason}", now)
            revoked = leases.close_many(conn, leases.active_of_workers(conn, [row.worker_id]), "revoked", now)
            leases.return_tasks(conn, revoked, now)
    m = ctx.metrics
    m.verdicts.labels("accepted" if v.accepted else "rejected" if v.worker_fault else "disputed").inc()
    if (c.buffer == "ready" or released) and not c.ban_reason:
        ctx.groups.notify_all()
    if c.buffer != "ready" or c.ban_reason:  # a rejection, a held group or a ban's drops: room for more work
        ctx.room.notify()
    if c.ban_reason:
        m.bans.inc()
        log.info("banned worker %s: %s (%d submissions dropped, %d leases revoked)", row.worker_id, c.ban_reason,
                 dropped, len(revoked))
    return {"ok": True}


def _failed_checks(v: Verdict) -> str:
    failed = [c.name for c in v.checks if not c.passed]
    return "failed " + ", ".join(failed) if failed else "rejected by the verifier"
