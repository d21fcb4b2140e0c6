"""The trainer's side: training batches from the buffer, and policy versions.

Batches: groups accepted by a verifier whose policy version is at or above the buffer's floor
(and >= the request's own bound), those in their last version above the floor first, then
the freshest (`submissions.take_batch`). The floor is
`protocol.window.buffer_floor`: the async window's, or the lower floor the trainer asks for
when its staleness limit is longer than the window (issue 23: work that arrives a little late is
still trained). Delivery is at least
once: a group handed out is `handed` until the trainer acknowledges it (`ack`, after it has
spooled the group durably), and one not acknowledged within `batch_ack_timeout_s` is handed
out again, so a lost answer or a trainer killed before its spool write loses nothing. The
trainer remembers what it has spooled and trained (durably), so a second hand-out is never
trained twice. Groups that fell below the floor are dropped and counted; an ack may name
groups the trainer will not train (`BatchAck.unused`), counted as waste too. The long-poll
(wait_s) lives in the route: it calls `take_batch` again when an accepted verdict arrives, or
every second, until the wait is over.

Policy versions: the trainer POSTs the operator-signed manifest of each version after
publishing it through its shardcast origin. A version must be newer than the current one;
posting the same signed manifest again is a no-op (so a trainer may retry safely).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from coordinator.context import Context
from coordinator.errors import Conflict, Invalid, Unauthorized
from coordinator.service import use_nonce
from coordinator.store import meta, policy, submissions
from protocol import rawjson
from protocol.envelope import Envelope, Opened
from protocol.errors import MessageError, SignatureError
from protocol.manifest import open_manifest
from protocol.messages import BatchAck, BatchAckResponse, BatchRequest, BatchResponse, PolicyInfo
from protocol.window import buffer_floor

log = logging.getLogger("swarmrl.coordinator")


@dataclass
class Batch:
    """Groups taken from the buffer, each the JSON text of a `TrainingGroup`, assembled from
    stored, validated pieces (`protocol.rawjson`; a test checks they validate): the token ids
    are never decoded and re-encoded on this path."""

    groups: list[str]
    dropped_stale: int = 0

    def to_json(self) -> bytes:
        return rawjson.batch_response(self.groups, self.dropped_stale).encode()

    def to_response(self) -> BatchResponse:
        return BatchResponse.model_validate_json(self.to_json())


def begin_batch(ctx: Context, opened: Opened[BatchRequest]) -> Batch:
    """The first attempt of a batch request: records its nonce, then takes what is there."""
    with ctx.db.write() as conn:
        use_nonce(conn, opened, ctx.clock())
    return take_batch(ctx, opened.body)


def floor(ctx: Context, conn) -> int:
    """The oldest policy version the buffer keeps now (`protocol.window.buffer_floor`)."""
    return floor_of(ctx, policy.current(conn), meta.get(conn, meta.TRAINER_FLOOR))


def floor_of(ctx: Context, current: int | None, trainer_floor: str | int | None) -> int:
    """`floor` from values the caller read in its transaction (the current version, the stored
    `meta.TRAINER_FLOOR`): the lease and batch paths read them once for several uses."""
    return buffer_floor(current, ctx.cfg.async_window, None if trainer_floor is None else int(trainer_floor))


def drop_stale(ctx: Context, conn, cut: int | None = None) -> dict[str, int]:
    """Drop the groups below the floor (`cut`, when the caller has it) and count them (in the
    caller's write transaction; the caller adds them to the metrics with `count_stale` once it
    has committed)."""
    stale = submissions.drop_stale(conn, floor(ctx, conn) if cut is None else cut)
    if sum(stale.values()):
        meta.add_int(conn, meta.DROPPED_STALE, sum(stale.values()))
    return stale


def count_stale(ctx: Context, stale: dict[str, int]) -> int:
    """Add dropped stale groups to the metrics; returns how many there were."""
    for cause, n in stale.items():
        if n:
            ctx.metrics.groups_unused.labels(cause).inc(n)
    if sum(stale.values()):
        ctx.metrics.dropped_stale.inc(sum(stale.values()))
        ctx.room.notify()   # room for a lease request held for it
    return sum(stale.values())


def take_batch(ctx: Context, req: BatchRequest) -> Batch:
    now = ctx.clock()
    with ctx.db.write() as conn:
        known = meta.get_many(conn, meta.TRAINER_FLOOR, meta.TRAINER_STEP)
        if known.get(meta.TRAINER_FLOOR) != str(req.min_policy_version):
            meta.put(conn, meta.TRAINER_FLOOR, str(req.min_policy_version))
        if req.max_groups > int(known.get(meta.TRAINER_STEP, 0)):  # what lease sizing assumes a step takes
            meta.put(conn, meta.TRAINER_STEP, str(req.max_groups))
        cut = floor_of(ctx, policy.current(conn), req.min_policy_version)
        stale = drop_stale(ctx, conn, cut)
        rows = submissions.take_batch(conn, max(cut, req.min_policy_version), req.max_groups, now,
                                      ctx.cfg.batch_ack_timeout_s)
    groups = [_group(r) for r in rows]
    dropped = count_stale(ctx, stale)
    if groups:
        ctx.metrics.groups_served.inc(len(groups))
    return Batch(groups=groups, dropped_stale=dropped)


def ack(ctx: Context, opened: Opened[BatchAck]) -> BatchAckResponse:
    """The trainer holds these groups durably: handed -> consumed (idempotent)."""
    now = ctx.clock()
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        n, marked = submissions.ack(conn, list(dict.fromkeys(opened.body.submission_ids)), now,
                                    dict(opened.body.unused))
    if n:
        ctx.metrics.groups_acked.inc(n)
        ctx.room.notify()   # consumed groups are no longer on their way: room for a held lease request
    for cause, k in marked.items():
        if k:
            ctx.metrics.groups_unused.labels(cause).inc(k)
    return BatchAckResponse(acknowledged=n)


def _group(r) -> str:
    """The JSON of one `TrainingGroup`: small fields encoded here, the stored payload spliced in."""
    lease = json.loads(r.lease_envelope)["body"]
    return rawjson.training_group(
        {"submission_id": r.submission_id, "task_id": r.task_id, "worker_id": r.worker_id,
         "policy_version": int(r.policy_version), "prompt_token_ids": lease["prompt_token_ids"],
         "temperature": lease["sampling"]["temperature"]},
        rewards=r.rewards, advantages=r.advantages, payload=r.group_json)


def post_policy(ctx: Context, env: Envelope) -> PolicyInfo:
    try:
        manifest = open_manifest(env, ctx.operator)
    except SignatureError as exc:
        raise Unauthorized("bad_signature", f"policy manifest: {exc}") from None
    except MessageError as exc:
        raise Invalid("bad_manifest", f"policy manifest: {exc}") from None
    if manifest.run_id != ctx.cfg.run_id:
        raise Invalid("wrong_run", f"manifest is for run {manifest.run_id!r}, this coordinator runs {ctx.cfg.run_id!r}")
    now = ctx.clock()
    with ctx.db.write() as conn:
        existing = policy.get(conn, manifest.version)
        if existing is not None:
            if Envelope.model_validate_json(existing.manifest).signature != env.signature:
                raise Conflict("version_exists", f"policy version {manifest.version} was already announced "
                                                 "with a different manifest")
        else:
            current = policy.current(conn)
            if current is not None and manifest.version <= current:
                raise Conflict("version_not_newer", f"policy version {manifest.version} is not newer than the "
                                                    f"current version {current}")
            policy.insert(conn, manifest.version, manifest.step, manifest.created_at, now, env.model_dump_json())
            ctx.new_version.set()
            ctx.room.notify()   # the buffer's floor moved up: room may have appeared
            log.info("policy version %d (step %d, %d bytes) is current", manifest.version, manifest.step,
                     manifest.total_bytes)
    return policy_info(ctx)


def policy_info(ctx: Context) -> PolicyInfo:
    with ctx.db.read() as conn:
        current = policy.current(conn)
        row = policy.get(conn, current) if current is not None else None
    return PolicyInfo(version=current, manifest=Envelope.model_validate_json(row.manifest) if row else None,
                      async_window=ctx.cfg.async_window, relays=list(ctx.cfg.relays))


def policy_info_json(ctx: Context) -> bytes:
    """GET /v1/policy, the hot poll of every worker: the JSON is encoded once per version (one
    indexed query per request tells whether the version moved, also across processes)."""
    with ctx.db.read() as conn:
        current = policy.current(conn)
    cached = ctx.policy_cache
    if cached is not None and cached[0] == current:
        return cached[1]
    body = policy_info(ctx).model_dump_json().encode()
    ctx.policy_cache = (current, body)
    return body
