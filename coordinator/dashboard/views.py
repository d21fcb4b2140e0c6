"""What each dashboard endpoint answers, built from one read transaction (plain functions).

Collaborators: `coordinator.dashboard.queries` (the SQL), `coordinator.dashboard.relays`
(the relays' last answers, passed in), `protocol.rollout_view` (one rollout, the same view
`swarmrl audit show` prints; a submission whose payload the database has dropped is read back
from the Parquet archive). The routes (`coordinator.dashboard.routes`) are thin adapters.
Time comes from `ctx.clock`, so tests drive it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coordinator.context import Context
from coordinator.dashboard import queries
from coordinator.errors import NotFound
from coordinator.service.join import worker_check_rate
from coordinator.service.upkeep import state_counts
from coordinator.rules import waste
from coordinator.store import meta, submissions, workers
from protocol.archive import checkpoint_versions
from protocol.rollout_view import rollout_view

THROUGHPUT_WINDOW_S = 60.0
AUDIT_PAGE = "/dashboard/rollout.html?id="


def _archive_root(ctx: Context) -> Path:
    return ctx.cfg.data_dir / "archive"


def overview(ctx: Context) -> dict[str, Any]:
    s = state_counts(ctx)
    with ctx.db.read() as conn:
        dropped = meta.get_int(conn, meta.DROPPED_STALE)
        queued = queries.queue_depth(conn)
        unused = waste.report(submissions.waste(conn), submissions.worker_spans(conn))
    cfg = ctx.cfg
    return {"run_id": cfg.run_id, "time": ctx.clock(), "current_version": s["current_version"],
            "versions": s["versions"], "async_window": cfg.async_window, "workers": s["workers"],
            "leases": s["leases"], "submissions": s["submissions"], "verification_queue": queued,
            "buffer": {"depth": s["buffer_depth"], "dropped_stale": dropped}, "waste": unused, "tasks_returned": s["tasks_returned"],
            "relays": list(cfg.relays), "archive": {"enabled": cfg.archive, "path": str(_archive_root(ctx)),
                                                     "checkpoints": checkpoint_versions(_archive_root(ctx))}}


def worker_rows(ctx: Context) -> list[dict[str, Any]]:
    now = ctx.clock()
    with ctx.db.read() as conn:
        rows = workers.all_rows(conn)
        subs = queries.per_worker_submissions(conn)
        recent = queries.recent_tokens(conn, now - THROUGHPUT_WINDOW_S)
        held = queries.active_leases(conn)
    out = []
    for w in rows:
        s = subs.get(w.worker_id, {})
        n_recent, tok_recent = recent.get(w.worker_id, (0, 0))
        decided = s.get("accepted", 0) + s.get("rejected", 0)
        out.append({
            "worker_id": w.worker_id, "status": w.status, "address": w.address, "engine": w.engine,
            "client_version": w.client_version, "policy_version": w.policy_version, "status_text": w.status_text,
            "last_seen_s_ago": round(max(0.0, now - w.last_seen), 1), "registered_at": w.registered_at,
            "reported_tokens_per_s": round(float(w.tokens_per_s), 1),
            "tokens_per_s": round(tok_recent / THROUGHPUT_WINDOW_S, 2), "submissions_last_minute": n_recent,
            "check_rate": round(worker_check_rate(ctx, w), 4), "clean_checks": w.clean_checks,
            "accepted": s.get("accepted", 0), "rejected": s.get("rejected", 0), "queued": s.get("queued", 0),
            "dropped": s.get("dropped", 0), "full_checked": s.get("full_checked", 0),
            "full_check_share": round(s.get("full_checked", 0) / decided, 4) if decided else None,
            "accepted_tokens": w.accepted_tokens, "active_leases": held.get(w.worker_id, 0),
            "ban_reason": w.ban_reason,
        })
    return out


def version_rows(ctx: Context, relays: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    with ctx.db.read() as conn:
        rows = queries.versions(conn, limit)
        counts = queries.by_version(conn, min((int(r.version) for r in rows), default=0))
    kept = set(checkpoint_versions(_archive_root(ctx)))
    reachable = [r for r in relays if r["reachable"]]
    out = []
    for r in rows:
        v = int(r.version)
        body = json.loads(r.manifest).get("body", {})
        complete = [x["url"] for x in reachable if v in x["complete"]]
        partial = [x["url"] for x in reachable if v in x["in_progress"]]
        c = counts.get(v, {})
        out.append({
            "version": v, "step": int(r.step), "created_at": float(r.created_at), "announced_at": float(r.received_at),
            "total_bytes": body.get("total_bytes"), "files": len(body.get("files") or []),
            "shards": len(body.get("shards") or []), "relays_complete": complete, "relays_in_progress": partial,
            "broadcast": (len(complete) / len(relays)) if relays else None, "archived_checkpoint": v in kept,
            "submissions": c.get("submissions", 0), "accepted": c.get("accepted", 0), "rejected": c.get("rejected", 0),
        })
    return {"versions": out, "relays": relays}


def curve(ctx: Context, limit: int) -> list[dict[str, Any]]:
    return trim_curve(curve_data(ctx, limit), limit)


def trim_curve(data: tuple[list[dict[str, Any]], list[int]], limit: int) -> list[dict[str, Any]]:
    """`curve(ctx, limit)` out of `curve_data(ctx, n)` for any n >= limit (the points of the
    `limit` newest announced versions and after)."""
    points, announced = data
    lowest = min(announced[:limit], default=0)
    return [p for p in points if p["version"] >= lowest]


def curve_data(ctx: Context, limit: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The curve's points and the announced versions they start from (newest first)."""
    with ctx.db.read() as conn:
        announced = [int(r.version) for r in queries.versions(conn, limit)]
        lowest = min(announced, default=0)
        counts = queries.by_version(conn, lowest)
        evals = queries.evals(conn)
    points = []
    for v in sorted(set(announced) | {k for k in counts if k >= lowest} | {k for k in evals if k >= lowest}):
        c, e = counts.get(v, {}), evals.get(v) or {}
        points.append({"version": v, "submissions": c.get("submissions", 0), "accepted": c.get("accepted", 0),
                       "mean_reward": c.get("mean_reward"), "mean_reward_accepted": c.get("mean_reward_accepted"),
                       "greedy_accuracy": e.get("greedy_accuracy"), "sampled_accuracy": e.get("sampled_accuracy"),
                       "eval_tasks": e.get("num_tasks")})
    return points, announced


def _failed_checks(verdict_json: str | None) -> list[str]:
    if not verdict_json:
        return []
    try:
        checks = json.loads(verdict_json).get("body", {}).get("checks") or []
    except ValueError:
        return []
    return [c.get("name", "?") for c in checks if isinstance(c, dict) and not c.get("passed")]


def rejections(ctx: Context, limit: int) -> list[dict[str, Any]]:
    with ctx.db.read() as conn:
        rows = queries.recent_rejections(conn, limit)
    return [{"submission_id": r.submission_id, "worker_id": r.worker_id, "policy_version": int(r.policy_version),
             "decided_at": r.decided_at, "received_at": r.received_at, "reason": r.reason,
             "failed_checks": _failed_checks(r.verdict), "full_check": bool(r.full_check),
             "audit_url": AUDIT_PAGE + r.submission_id,
             "audit_command": f"swarmrl audit show {r.submission_id} --archive {_archive_root(ctx)}"}
            for r in rows]


def archived_submission(root: Path, version: int, submission_id: str) -> str | None:
    """The submission envelope as the Parquet archive holds it (the database drops old payloads)."""
    import pyarrow.parquet as pq

    folder = Path(root) / "submissions" / f"v{version:06d}"
    for f in sorted(folder.glob("part-*.parquet"), reverse=True):
        t = pq.read_table(f, columns=["submission_id", "submission_envelope"],
                          filters=[("submission_id", "==", submission_id)])
        if t.num_rows:
            return t.column("submission_envelope")[0].as_py()
    return None


def rollout(ctx: Context, submission_id: str) -> dict[str, Any]:
    with ctx.db.read() as conn:
        r = queries.rollout(conn, submission_id)
    if r is None:
        raise NotFound("unknown_submission", f"no submission {submission_id}")
    tok = ctx.tasks.tokenizer
    rewards, advantages = json.loads(r.rewards), json.loads(r.advantages)
    envelope, source = r.envelope, "database"
    if envelope is None:  # payload retention dropped it from the database; the archive keeps it
        envelope = archived_submission(_archive_root(ctx), int(r.policy_version), r.submission_id)
        source = "archive" if envelope is not None else "gone"
    view = rollout_view(envelope or {}, r.lease_envelope, r.verdict, rewards=rewards, advantages=advantages,
                        decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
    view["submission_source"] = source
    if view["worker_id"] is None:
        view["worker_id"] = r.worker_id
    if view["policy_version"] is None:
        view["policy_version"] = int(r.policy_version)
    # Seeds are 63-bit: as JSON numbers a browser would round them, so the page gets decimal strings.
    view["lease"]["seeds"] = [str(x) for x in view["lease"].get("seeds") or []]
    for c in view["completions"]:
        c["seed"] = None if c["seed"] is None else str(c["seed"])
    archive = _archive_root(ctx)
    view.update({
        "submission_id": r.submission_id, "status": r.status, "reason": r.reason, "buffer": r.buffer,
        "full_check": bool(r.full_check), "received_at": r.received_at, "decided_at": r.decided_at,
        "task_index": int(r.task_index), "n_tokens": int(r.n_tokens), "archived": bool(r.archived),
        "checkpoint_archived": int(r.policy_version) in set(checkpoint_versions(archive)),
        "audit_commands": [f"swarmrl audit show {r.submission_id} --archive {archive}",
                           f"swarmrl audit reverify {r.submission_id} --archive {archive}"],
    })
    return view
