"""Periodic upkeep and the numbers dashboards read.

`sweep(ctx)` runs every `housekeeping_interval_s`: leases past their expiry become
'expired' and their tasks return to the pool (but for one whose submission arrived in time and
is being taken in: `work.in_intake`, the intake claim); workers silent for `missed_heartbeats_gone`
heartbeat intervals become 'gone' and their leases return too (both count as dropped leases,
`rules.reputation.effective_clean_checks`); groups that fell out of the
buffer's floor leave the buffer (`training.drop_stale`); queued submissions whose
`verification_max_claims`-th claim expired without a verdict are dropped, without a ban; nonces older than twice the clock skew (they could no longer
pass the timestamp check) are forgotten; envelopes of finished, archived submissions older than
`payload_retention_s` leave the database (the Parquet archive keeps them).

`stats(ctx)` is the JSON of GET /v1/stats (the demo prints it, `waste` included: the accepted
groups that never reached a training step, by cause, `coordinator.rules.waste`; anonymous readers get
`coordinator.privacy.stats` of it, without addresses) and `state_counts(ctx)` feeds the
Prometheus gauges.
"""

from __future__ import annotations

import logging
from collections import Counter

from coordinator.context import Context
from coordinator.rules import waste
from coordinator.service import training
from coordinator.service.join import worker_check_rate
from coordinator.service.work import INTAKE_CLAIM_S
from coordinator.store import leases, meta, policy, submissions, workers

log = logging.getLogger("swarmrl.coordinator")


def sweep(ctx: Context) -> dict:
    cfg = ctx.cfg
    now = ctx.clock()
    with ctx.db.write() as conn:
        # a lease whose submission arrived in time and is being taken in stays open until it is
        # stored or refused (`work.in_intake`, here; the intake claim, on any replica)
        due = [lid for lid in leases.due(conn, now, intake_since=now - INTAKE_CLAIM_S) if lid not in ctx.in_intake]
        expired = leases.close_many(conn, due, "expired", now)
        leases.return_tasks(conn, expired, now)
        # Silence is measured from the later of a worker's last heartbeat and this process's
        # start: a coordinator that was down must not blame workers for its own outage. Nor for
        # the leases that ran out while it was down, or before its workers could reach it again
        # (within the same silence period of its start): those are not counted as dropped (they
        # count against a worker's check rate and lease quota, rules.reputation).
        silence = cfg.join.heartbeat_interval_s * cfg.join.missed_heartbeats_gone
        workers.count_leases(conn, dropped=Counter(r.worker_id for r in expired
                                                   if r.expires_at >= ctx.started_at + silence))
        cutoff = now - silence
        gone = workers.mark_gone(conn, cutoff) if ctx.started_at <= cutoff else []
        orphaned = leases.close_many(conn, [lid for lid in leases.active_of_workers(conn, gone)
                                            if lid not in ctx.in_intake], "expired", now)
        leases.return_tasks(conn, orphaned, now)
        # dropped as much as expired ones: silence closes them sooner than their TTL, and was
        # a free way to shed the leases a worker did not like (rules.reputation)
        workers.count_leases(conn, dropped=Counter(r.worker_id for r in orphaned))
        dropped = training.drop_stale(ctx, conn)
        unjudged = submissions.drop_unjudged(conn, now, cfg.verification_claim_ttl_s, cfg.verification_max_claims)
        pruned = workers.prune_nonces(conn, now - 2 * cfg.max_clock_skew_s - 10)
        payloads = submissions.prune_payloads(conn, now - cfg.payload_retention_s) if cfg.payload_retention_s else 0
    m = ctx.metrics
    if expired:
        m.leases_returned.labels("expired").inc(len(expired))
    if orphaned:
        m.leases_returned.labels("worker_gone").inc(len(orphaned))
    if expired or orphaned:
        ctx.room.notify()   # room for a lease request held for it
    stale = training.count_stale(ctx, dropped)
    if gone:
        log.info("%d worker(s) gone silent: %s", len(gone), ", ".join(gone[:5]))
    if unjudged:
        m.unjudged.inc(len(unjudged))
        log.warning("%d submission(s) dropped after %d claims without a verdict: %s", len(unjudged),
                    cfg.verification_max_claims, ", ".join(f"{r.submission_id} of {r.worker_id}" for r in unjudged[:5]))
    return {"expired": len(expired), "gone": len(gone), "orphaned": len(orphaned), "stale": stale, "pruned": pruned,
            "payloads_pruned": payloads, "unjudged": len(unjudged)}


def state_counts(ctx: Context) -> dict:
    with ctx.db.read() as conn:
        return {"workers": workers.count_by_status(conn), "leases": leases.count_by_status(conn),
                "submissions": submissions.count_by_status(conn), "buffer_depth": submissions.buffer_depth(conn),
                "current_version": policy.current(conn), "versions": policy.count(conn),
                "tasks_returned": leases.count_returned(conn)}


def stats(ctx: Context) -> dict:
    with ctx.db.read() as conn:
        rows = workers.all_rows(conn)
        by_version = submissions.rewards_by_version(conn)
        accepted_reward = submissions.accepted_reward_by_version(conn)
        out = {
            "run_id": ctx.cfg.run_id,
            "time": ctx.clock(),
            "policy": {"current_version": policy.current(conn), "versions": policy.count(conn),
                       "async_window": ctx.cfg.async_window},
            "buffer": {"depth": submissions.buffer_depth(conn),
                       "by_state": submissions.count_by_buffer(conn),
                       "dropped_stale": meta.get_int(conn, meta.DROPPED_STALE)},
            "submissions": submissions.count_by_status(conn),
            "leases": leases.count_by_status(conn),
            "tasks_returned": leases.count_returned(conn),
            "waste": waste.report(submissions.waste(conn), submissions.worker_spans(conn)),
        }
    out["workers"] = [{
        "worker_id": w.worker_id, "status": w.status, "accepted": w.accepted, "rejected": w.rejected,
        "accepted_tokens": w.accepted_tokens, "check_rate": worker_check_rate(ctx, w),
        "ban_reason": w.ban_reason, "address": w.address, "last_seen": w.last_seen,
        "policy_version": w.policy_version, "tokens_per_s": w.tokens_per_s, "engine": w.engine,
    } for w in rows]
    out["rewards_by_version"] = [{
        "policy_version": int(r.policy_version), "submissions": int(r.received), "accepted": int(r.accepted or 0),
        "mean_reward": float(r.mean_reward or 0.0),
        "mean_reward_accepted": accepted_reward.get(int(r.policy_version)),
    } for r in reversed(by_version)]
    return out
