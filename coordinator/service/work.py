"""Work: leasing tasks, giving leases back, and taking submissions in (the cheap checks,
rewards computed here, storage and the verification queue), and a submission's status.

A lease request gets at most what the worker may hold: `coordinator.rules.lease_size` sizes it
from the worker's measured throughput and the version rate (issue 23), within
limits.max_leases_per_worker. A task that cannot be leased (its prompt does not fit, its data is
over the protocol's bound, its source fails on it) is passed over (`_draw`): it no longer fails
every lease request at that draw position; a source with none leasable answers 503.

A status names the checks a rejected submission failed, never the verifier's numbers
(`coordinator.privacy.public_reason`), and never whether it was drawn for a full check: a
worker must not learn how close it came to a threshold, nor which submissions were looked at."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from coordinator.context import Context
from coordinator.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, Unavailable
from coordinator.privacy import public_reason
from coordinator.rules import intake
from coordinator.rules.advantages import group_advantages
from coordinator.rules.lease_size import Demand, Sizing, SizingTerms, leases_allowed, spread_retry, trainer_take
from coordinator.rules.leasing import draw_seeds, leases_to_issue, new_id, pick_returned, split_held
from coordinator.rules.reputation import full_check, mostly_dropped
from coordinator.service import require_worker, training, use_nonce
from coordinator.service.join import revive, worker_check_rate
from coordinator.store import leases, meta, policy, submissions, swarm_counts, workers
from coordinator.taskbook import SKIP_MEMORY, PreparedTask, Refused
from protocol.envelope import AUDIENCE_WORKER, Opened, envelope_digest, seal
from protocol.guard import address_group
from protocol.identity import PublicKey
from protocol.messages import (
    IDENT_PATTERN,
    KIND_LEASE,
    MAX_STATUS_IDS,
    Lease,
    LeaseRelease,
    LeaseRequest,
    LeaseResponse,
    SamplingParams,
    Submission,
    SubmissionResponse,
    SubmissionStatus,
    SubmissionStatuses,
)
from protocol.rawjson import TrainingPayload
from protocol.window import allowed_versions

log = logging.getLogger("swarmrl.coordinator")

NO_POLICY_RETRY_S = 2.0
DUPLICATE = "duplicate"   # a lease's status once its submission was refused as a content duplicate
# A claim on a lease's intake (PostgreSQL) older than this is taken over: its replica died
# while scoring (the scorer sandbox's batch limit is 20 s).
INTAKE_CLAIM_S = 60.0
# A lease request passes over tasks that cannot be leased (`TaskBook.draw`): at most
# MAX_NEW_REFUSALS that it has to prepare to find so (a tokenisation each, in the write
# transaction), and as many known ones as the split has (at most SKIP_MEMORY, a lookup each). It
# takes the draw counter in chunks of at most DRAW_CHUNK indices past a run of refused ones.
MAX_NEW_REFUSALS = 16
DRAW_CHUNK = 1024
NO_TASK_RETRY_S = 10.0


def submission_id_for(lease_id: str) -> str:
    """One submission per lease: its id is derived from the lease id."""
    return "s-" + lease_id[2:]


def lease(ctx: Context, opened: Opened[LeaseRequest]) -> LeaseResponse:
    """Lease up to `max_tasks` tasks now (none: with when to ask again)."""
    return try_lease(ctx, opened)[0]


def try_lease(ctx: Context, opened: Opened[LeaseRequest], *, again: bool = False,
              fill: bool = False) -> tuple[LeaseResponse, str | None]:
    """`lease`, and, when an empty answer was for lack of room in the swarm (the second bound of
    `rules.lease_size`: room appears when the trainer acknowledges groups, so a request held for it
    (`LeaseRequest.wait_s`, `coordinator.app`) may try again then), the lane whose room it was
    ("established" or "new", as `established_row`; None otherwise). `again`: such a held
    request's later try (the first used its nonce). `fill`: while room is short of what the
    request and the worker's own bound would take, lease nothing (a held request waits for a
    full batch rather than taking the first lease's worth of room: small batches generate
    slower)."""
    cfg = ctx.cfg
    now = ctx.clock()
    worker_id = opened.signer_id
    with ctx.db.write() as conn:
        if not again:
            use_nonce(conn, opened, now)
        row = require_worker(conn, worker_id)
        revive(ctx, conn, row, now)
        workers.seen(conn, worker_id, now)
        current = policy.current(conn)
        if current is None:
            return LeaseResponse(leases=[], retry_after_s=NO_POLICY_RETRY_S), None
        held_tasks = leases.active_task_ids(conn, worker_id)
        held = len(held_tasks)
        established = established_row(ctx, row)
        sizing = _sizing(ctx, conn, worker_id, established, row, held, current, now)
        n = leases_to_issue(opened.body.max_tasks, held, sizing.allowed)
        if fill and sizing.own is not None and n < leases_to_issue(opened.body.max_tasks, held, sizing.own):
            n = 0
        if n == 0:
            room = sizing.retry_after_s is not None
            active = workers.count_by_status(conn).get("active", 0) if room else 0
            lane = lane_of(established) if room else None
            return LeaseResponse(leases=[], retry_after_s=spread_retry(sizing.retry_after_s, active)), lane
        reused = leases.take_returned(conn, pick_returned(n, leases.returned(conn, n + 64), worker_id))
        drawn = _draw(ctx, conn, reused, n - len(reused), now)
        indices, back = split_held([(i, p.task.id) for i, p in drawn.items()], set(held_tasks))
        leases.put_back(conn, back, now)
        lo, hi = allowed_versions(current, cfg.async_window)
        sampling = SamplingParams(temperature=cfg.sampling.temperature, max_tokens=cfg.sampling.max_tokens)
        envs, rows = [], []
        for index in indices:
            prepared = drawn[index]
            body = Lease(lease_id=new_id(ctx.rng, "l-"), run_id=cfg.run_id, worker_id=worker_id,
                         task_id=prepared.task.id, prompt_token_ids=list(prepared.prompt_ids),
                         seeds=draw_seeds(ctx.rng, cfg.group_size), sampling=sampling,
                         eos_token_id=ctx.tasks.eos_token_id, eos_token_ids=_extra_eos(ctx),
                         min_policy_version=lo, max_policy_version=hi,
                         issued_at=now, expires_at=now + cfg.lease_ttl_s, allowed_dtypes=list(cfg.allowed_dtypes))
            env = seal(KIND_LEASE, body, ctx.key, now=now, run_id=cfg.run_id, audience=AUDIENCE_WORKER)
            envs.append(env)
            rows.append(dict(lease_id=body.lease_id, worker_id=worker_id, task_index=index, task_id=body.task_id,
                             status="active", issued_at=now, expires_at=body.expires_at,
                             envelope=env.model_dump_json()))
        leases.insert_many(conn, rows)
        workers.count_leases(conn, issued={worker_id: len(rows)})
    ctx.metrics.leases.inc(len(envs))
    return LeaseResponse(leases=envs), None


def _draw(ctx: Context, conn, reused: list[int], fresh: int, now: float) -> dict[int, PreparedTask]:
    """The prepared tasks of `reused` (taken from the returned pool) and of `fresh` more from the
    draw counter, in order, passing over those that cannot be leased: for each refused, one more
    is drawn, so the counter moves past it (with the lease's transaction). Bounded per request
    (MAX_NEW_REFUSALS, SKIP_MEMORY); indices drawn but not looked at once it has enough, or once
    a bound is met, go to the returned pool. None drawn within the bounds: 503
    `no_leasable_tasks` (the transaction rolls back; the refused ones are remembered, so the
    next request passes them at the cost of a lookup and goes further). The answer does not say
    why a task was refused: a plugin's error may quote its answer; the log does."""
    want = len(reused) + fresh
    budget = min(ctx.tasks.train_size, SKIP_MEMORY)
    drawn: dict[int, PreparedTask] = {}
    refused: list[Refused] = []
    new = 0
    pending, chunk = list(reused), fresh
    while True:
        for pos, index in enumerate(pending):
            if len(drawn) >= want or new >= MAX_NEW_REFUSALS or len(refused) >= budget:
                leases.put_back(conn, pending[pos:], now)
                break
            got = ctx.tasks.draw(index)
            if isinstance(got, Refused):
                refused.append(got)
                new += got.new
            else:
                drawn[index] = got
        need = want - len(drawn)
        if need <= 0 or new >= MAX_NEW_REFUSALS or len(refused) >= budget:
            break
        chunk = min(DRAW_CHUNK, max(need, len(refused), chunk))
        end = meta.add_int(conn, meta.NEXT_TASK, chunk)
        pending = list(range(end - chunk, end))
    if new:
        ctx.metrics.tasks_skipped.inc(new)
    if not drawn:
        raise Unavailable("no_leasable_tasks",
                          f"no task could be leased: the {len(refused)} this request drew cannot be leased and were "
                          "skipped (the coordinator's log names each and why); the operator must fix the task source",
                          retry_after_s=NO_TASK_RETRY_S)
    return drawn


def _sizing(ctx: Context, conn, worker_id: str, established: bool, row, held: int, current: int,
            now: float) -> Sizing:
    """How many leases `worker_id` may hold now (`coordinator.rules.lease_size`), from the
    coordinator's own measurements: the worker's newest submitted leases and its lease counters
    (`row`, its workers row: what it dropped of what it was issued; its address, for the
    newcomers' group cap), the versions' arrival
    times, recent verification times, how many versions the buffer keeps, what the trainer took
    per version (all groups it acknowledged / versions: its step size, however short of groups
    the swarm is) and what is on its way to it."""
    terms = SizingTerms(**ctx.cfg.lease_sizing.model_dump())
    max_leases = ctx.cfg.limits.max_leases_per_worker
    if not terms.enabled:
        return Sizing(max_leases, None, None, "lease sizing off")
    counts = swarm_counts.read(conn, ctx.cfg.limits.intake_established_after)
    floor = training.floor_of(ctx, current, counts.trainer_floor)
    staleness = current - floor
    taken = counts.taken if current >= terms.demand_versions else 0
    per_version = trainer_take(taken, current, int(counts.trainer_step or 0))
    demand = None
    if per_version > 0:
        in_flight = counts.active + counts.queued + submissions.waiting(conn, floor)
        of_new = counts.active_of_new + counts.queued_of_new
        share = terms.new_identity_share if counts.established_active else None
        of_group = _of_group(ctx, conn, row.address) if share is not None and not established else None
        demand = Demand(per_version=per_version, in_flight=in_flight - of_new, new=of_new, new_share=share,
                        of_group=of_group, group_share=terms.new_group_share)
    return leases_allowed(max_leases=max_leases, held=held, recent=leases.recent_submitted(conn, worker_id, terms.history),
                          arrivals=policy.recent_arrivals(conn), staleness=staleness,
                          verify_s=submissions.recent_verify_times(conn), demand=demand, now=now, terms=terms,
                          new_identity=not established, dropped=row.leases_dropped,
                          mostly_dropped=mostly_dropped(row.leases_issued, row.leases_dropped,
                                                        drop_share=ctx.cfg.standing.drop_share,
                                                        drop_slack=ctx.cfg.standing.drop_slack))


def _of_group(ctx: Context, conn, address: str) -> int | None:
    """What new identities of `address`'s group hold (`rules.lease_size.Demand.of_group`); None
    where the group cap does not apply: it is off (new_group_share 1), or `address` is exempt
    (the operator's own machines, the local demo's loopback). Exempt addresses of the group
    are not counted."""
    if ctx.cfg.lease_sizing.new_group_share >= 1:
        return None
    if address in ctx.exempt:
        return None
    group = address_group(address)
    held = swarm_counts.new_held_by_address(conn, ctx.cfg.limits.intake_established_after)
    return sum(n for a, n in held.items() if a not in ctx.exempt and address_group(a) == group)


def release(ctx: Context, opened: Opened[LeaseRelease]) -> dict:
    now = ctx.clock()
    worker_id = opened.signer_id
    ids = list(dict.fromkeys(opened.body.lease_ids))
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        require_worker(conn, worker_id)
        rows = leases.get_many(conn, ids)
        found = {r.lease_id: r for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound("unknown_lease", f"no lease {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        foreign = [r.lease_id for r in rows if r.worker_id != worker_id]
        if foreign:
            raise Forbidden("not_your_lease", f"lease {foreign[0]} was issued to another worker")
        closed = leases.close_many(conn, ids, "released", now)
        leases.return_tasks(conn, closed, now)
        workers.count_leases(conn, dropped={worker_id: len(closed)})
    if closed:
        ctx.metrics.leases_returned.labels("released").inc(len(closed))
        ctx.room.notify()   # room for a lease request held for it
    return {"released": len(closed)}


def submit(ctx: Context, opened: Opened[Submission], raw: bytes, received: float | None = None) -> SubmissionResponse:
    """Take in one submission: `scored` (cheap checks and rewards), then `store`. `received`: when
    it arrived (None: now); its lease's expiry is judged at that time, so a submission that came in
    time is not refused for the time it waited in the intake's queue and was scored."""
    return store(ctx, opened, raw, scored(ctx, opened, received), received)


@contextmanager
def in_intake(ctx: Context, lease_id: str) -> Iterator[None]:
    """While a submission of `lease_id` is taken in, the sweep leaves the lease open past its
    expiry (`upkeep.sweep`; `Context.in_intake`): it arrived in time, and closing the lease under
    it refused it after scoring and returned its task to the pool. On PostgreSQL the intake claim
    (`_claim`) does the same for the other replicas' sweeps once scoring starts."""
    ctx.in_intake[lease_id] = ctx.in_intake.get(lease_id, 0) + 1
    try:
        yield
    finally:
        left = ctx.in_intake.pop(lease_id, 1) - 1
        if left > 0:
            ctx.in_intake[lease_id] = left


def admit_submitter(ctx: Context, signer_hex: str) -> bool:
    """Refuse, with one primary-key read, a signer that is no registered worker (404
    `unknown_worker`) or is banned (403 `banned`); otherwise whether it is `established` (its
    intake lane). A large submission's is run between its verification in an `OffLoop` process
    and its parse in this one (`coordinator.api.Api.open`: the parse costs ~30 ms of the server
    process's GIL per MB), a small one's before it is queued for scoring."""
    with ctx.db.read() as conn:
        return established_row(ctx, require_worker(conn, PublicKey.from_hex(signer_hex).peer_id))


def lane_of(established: bool) -> str:
    """The lane's name (metrics, `coordinator.context.LaneWakeup`)."""
    return "established" if established else "new"


def established_row(ctx: Context, row) -> bool:
    """Whether a worker (its row; None: unknown) is established: its submissions are scored in
    the intake's established lane (`coordinator.fairpool`) and its leases come from the
    established workers' room (`rules.lease_size.Demand`): not banned, with at least
    `limits.intake_established_after` verified accepted submissions. `store.workers.new_identity`
    is the same rule as a condition on the table."""
    return row is not None and row.status != "banned" and row.accepted >= ctx.cfg.limits.intake_established_after


def scored(ctx: Context, opened: Opened[Submission], received: float | None = None) -> tuple[int, list[float]]:
    """(token count, rewards) of a submission: read-only checks and the scorer sandbox, no
    write lock, so it may run on a thread beside the event loop (`coordinator.api.Intake`)."""
    now = ctx.clock()
    return _checked_and_scored(ctx, opened, now, now if received is None else received)


def store(ctx: Context, opened: Opened[Submission], raw: bytes, scores: tuple[int, list[float]],
          received: float | None = None) -> SubmissionResponse:
    """The write transaction of a scored submission (its checks again, as the lease may have
    closed meanwhile): queued for the verifier, or a refusal that changes nothing (but for a
    content duplicate's, which closes the lease: `_close_duplicate`)."""
    now = ctx.clock()
    try:
        return _store(ctx, opened, raw, scores, now, now if received is None else received)
    except BaseException:
        _unclaim(ctx, opened)
        raise


def _store(ctx: Context, opened: Opened[Submission], raw: bytes, scores: tuple[int, list[float]],
           now: float, received: float) -> SubmissionResponse:
    sub, worker_id = opened.body, opened.signer_id
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        worker = require_worker(conn, worker_id)
        # locked: checked active here and closed below; a copy on another replica waits, then
        # finds it submitted (409 duplicate_submission, not a primary-key error)
        row = leases.get(conn, sub.lease_id, for_update=True)
        if row is None:
            raise NotFound("unknown_lease", f"no lease {sub.lease_id}; submit only leases this coordinator issued")
        intake.check_lease(row, worker_id, received)  # again: it may have closed meanwhile
        chash = intake.content_hash(sub.completions)
        other = submissions.content_exists(conn, row.task_id, chash)
        if other is not None:
            closed = _close_duplicate(conn, row, now)   # committed; refused below
        else:
            _insert(ctx, conn, opened, raw, row, worker, chash, scores, now)
    if other is not None:
        _closed_duplicate(ctx, closed)
        raise _duplicate(row.task_id, other)
    ctx.metrics.submissions.inc()
    return SubmissionResponse(submission_id=submission_id_for(row.lease_id), status="queued")


def _insert(ctx: Context, conn, opened: Opened[Submission], raw: bytes, row, worker, chash: str,
            scores: tuple[int, list[float]], now: float) -> None:
    """Store the submission of the active lease `row` (queued for the verifier) and close it."""
    sub, worker_id = opened.body, opened.signer_id
    n_tokens, rewards = scores
    rate = worker_check_rate(ctx, worker)
    sid = submission_id_for(row.lease_id)
    group = TrainingPayload.of(sub).model_dump_json()  # what each TrainingGroup of it will carry
    submissions.insert(conn, dict(
        submission_id=sid, lease_id=row.lease_id, worker_id=worker_id, task_id=row.task_id,
        task_index=row.task_index, policy_version=sub.policy_version, status="queued",
        full_check=full_check(rate, ctx.rng.random()), rewards=json.dumps(rewards),
        advantages=json.dumps(group_advantages(rewards, ctx.cfg.advantage_scale)), reward_mean=sum(rewards) / len(rewards),
        n_tokens=n_tokens, content_hash=chash, received_at=now,
        envelope_sha256=envelope_digest(opened.envelope, opened.canonical_body)),
        envelope=raw.decode("utf-8"), group_json=group)
    if not leases.close(conn, row.lease_id, "submitted", now):
        raise Conflict("duplicate_submission", f"lease {row.lease_id} was already submitted")


def _duplicate(task_id: str, other: str) -> Conflict:
    return Conflict("duplicate_completion", f"these completions were already submitted for task {task_id} "
                                            f"(submission {other}); the lease is closed, lease new work")


def _close_duplicate(conn, row, now: float) -> bool:
    """Close the active lease `row`, whose submission repeats completions stored for its task,
    as `duplicate` (its answer: 409 `duplicate_completion`, again for a resend). Left active, it
    held one of the worker's lease places until it expired, its task went back to the pool
    (where a peaked policy makes the same group again), and the expiry counted as a dropped
    lease all the same. It counts as one dropped lease, as a release does
    (`rules.reputation.effective_clean_checks`: free within the share allowed): a worker that
    re-submits stored completions to shed a lease it does not like pays what releasing it
    costs, no less. Its task does not return: a group for it is stored."""
    if not leases.close(conn, row.lease_id, DUPLICATE, now):
        return False
    workers.count_leases(conn, dropped={row.worker_id: 1})
    return True


def _refuse_duplicate(ctx: Context, opened: Opened[Submission], chash: str, now: float) -> Conflict:
    """The refusal of a submission found, read-only and before scoring, to repeat stored
    completions: its lease closed (`_close_duplicate`) in a write transaction that checks
    again what the read saw (and takes the message's nonce, as a stored submission would)."""
    with ctx.db.write() as conn:
        use_nonce(conn, opened, now)
        require_worker(conn, opened.signer_id)
        row = leases.get(conn, opened.body.lease_id, for_update=True)
        if row is None:
            raise NotFound("unknown_lease", f"no lease {opened.body.lease_id}")
        intake.check_lease(row, opened.signer_id, now)   # closed meanwhile: that answer
        other = submissions.content_exists(conn, row.task_id, chash)
        if other is None:
            raise Conflict("duplicate_completion", f"these completions were already submitted for task {row.task_id}")
        closed = _close_duplicate(conn, row, now)
    _closed_duplicate(ctx, closed)
    return _duplicate(row.task_id, other)


def _closed_duplicate(ctx: Context, closed: bool) -> None:
    """After the commit of `_close_duplicate`: count it, and wake a lease request held for room."""
    if closed:
        ctx.metrics.leases_returned.labels(DUPLICATE).inc()
        ctx.room.notify()


def _checked_and_scored(ctx: Context, opened: Opened[Submission], now: float,
                        received: float) -> tuple[int, list[float]]:
    """(token count, rewards) of a submission, before the write transaction: the rewards come
    from the scorer sandbox, which may take up to its batch limit on hostile text, and that
    must not hold the database's write lock. Every refusal the write transaction would give
    that does not depend on what happens meanwhile is given here first, read-only, so nothing
    is scored for an unknown or banned worker, someone else's or a closed lease (a lease
    already submitted: 409 `duplicate_submission`, which a resend after a lost answer relies
    on), a replayed nonce, completions that do not fit the lease, or completions already stored
    for the task (before, the last two were refused only after scoring, and a refused duplicate
    left its lease open: the same envelope sent again was scored every time). The write
    transaction checks them again (`store`); copies of one submission in flight at once are the
    route's to refuse (`coordinator.api.Intake.taking`) and, across replicas, the claim's
    (`_claim`, in this transaction on PostgreSQL)."""
    sub, worker_id = opened.body, opened.signer_id
    chash = intake.content_hash(sub.completions)
    # SQLite: a read (no write lock); PostgreSQL: also the claim, where read and write are alike
    with (ctx.db.read() if ctx.db.is_sqlite else ctx.db.write()) as conn:
        require_worker(conn, worker_id)
        row = leases.get(conn, sub.lease_id)
        replayed = workers.nonce_seen(conn, opened.envelope.signer, opened.nonce)
        other = submissions.content_exists(conn, row.task_id, chash) if row is not None else None
        if row is None:
            raise NotFound("unknown_lease", f"no lease {sub.lease_id}; submit only leases this coordinator issued")
        intake.check_lease(row, worker_id, received)
        if replayed:
            raise Conflict("replay", "replayed message: this nonce was already used by this signer")
        lease = Lease.model_validate(json.loads(row.envelope)["body"])  # the signed lease, as the worker got it
        n_tokens = intake.check_completions(sub, lease, worker_id, ctx.tasks.vocab_size, ctx.tasks.hidden_size)
        if other is None:
            _claim(ctx, conn, opened, now)
    if other is not None:
        raise _refuse_duplicate(ctx, opened, chash, now)
    try:
        task = ctx.tasks.task(row.task_index)
        return n_tokens, ctx.tasks.rewards(task, [c.token_ids for c in sub.completions])
    except BaseException:
        _unclaim(ctx, opened)
        raise


def _claim(ctx: Context, conn, opened: Opened[Submission], now: float) -> None:
    """On PostgreSQL, claim the lease's intake for this submission before it is scored, or
    refuse it 429 `submission_in_progress`: copies of one submission sent to two replicas at
    once were both scored (`coordinator.api.Intake.taking` guards one process; SQLite has one
    writer process, which it covers). One UPDATE in the read-only checks' transaction (`conn`),
    which it makes a writing one (no extra round trip: +0.2 to +1.1 ms median per submission on
    a local PostgreSQL, 5-6.5 ms against 4.9-5.5 ms); given back if the intake fails after it
    (`_unclaim`), taken over after INTAKE_CLAIM_S if its replica died."""
    if ctx.db.is_sqlite:
        return
    if not leases.claim_intake(conn, opened.body.lease_id, opened.nonce, now, now - INTAKE_CLAIM_S):
        raise RateLimited("submission_in_progress", f"a submission for lease {opened.body.lease_id} is being "
                                                    "taken in; retry shortly for its outcome", 1.0)


def _unclaim(ctx: Context, opened: Opened[Submission]) -> None:
    """Give back this submission's claim (`_claim`), if it holds one: its intake failed."""
    if ctx.db.is_sqlite:
        return
    try:
        with ctx.db.write() as conn:
            leases.unclaim_intake(conn, opened.body.lease_id, opened.nonce)
    except Exception as exc:   # the database failed too: the claim goes stale after INTAKE_CLAIM_S
        log.warning("lease %s: its intake claim could not be given back (%s)", opened.body.lease_id, exc)


MAX_SUBMISSION_ID_CHARS = 64   # store.schema submissions.submission_id
_SUBMISSION_ID = re.compile(IDENT_PATTERN)


def submission_statuses(ctx: Context, ids_csv: str) -> SubmissionStatuses:
    """The statuses of up to MAX_STATUS_IDS comma-separated submission ids, in one query. An id
    that cannot be a submission id (its alphabet, `protocol.messages.Ident`) is refused: `unknown`
    echoes the asker's ids back, and a NUL in one was a 500 on PostgreSQL."""
    ids = list(dict.fromkeys(i for i in ids_csv.split(",") if i))
    if not ids:
        raise Invalid("no_ids", "give the submission ids as ?ids=a,b,...")
    if len(ids) > MAX_STATUS_IDS or any(len(i) > MAX_SUBMISSION_ID_CHARS for i in ids):
        raise Invalid("too_many_ids", f"at most {MAX_STATUS_IDS} ids of at most {MAX_SUBMISSION_ID_CHARS} characters")
    if not all(_SUBMISSION_ID.fullmatch(i) for i in ids):
        raise Invalid("bad_ids", "submission ids are letters, digits and _ . : - only")
    with ctx.db.read() as conn:
        rows = {r.submission_id: r for r in submissions.get_statuses(conn, ids)}
    return SubmissionStatuses(statuses=[_status(rows[i]) for i in ids if i in rows],
                              unknown=[i for i in ids if i not in rows])


def submission_status(ctx: Context, submission_id: str) -> SubmissionStatus:
    if len(submission_id) > MAX_SUBMISSION_ID_CHARS or not _SUBMISSION_ID.fullmatch(submission_id):
        raise Invalid("bad_id", "a submission id is at most 64 letters, digits and _ . : -")
    with ctx.db.read() as conn:
        row = submissions.get_status(conn, submission_id)
    if row is None:
        raise NotFound("unknown_submission", f"no submission {submission_id}")
    return _status(row)


def _status(row) -> SubmissionStatus:
    return SubmissionStatus(submission_id=row.submission_id, worker_id=row.worker_id, status=row.status,
                            reason=public_reason(row.reason), tokens=row.n_tokens)


def _extra_eos(ctx: Context) -> list[int]:
    """The lease's `eos_token_ids`: empty when the model has one EOS (leases stay as before)."""
    ids = list(getattr(ctx.tasks, "eos_token_ids", ()))
    return ids if len(ids) > 1 else []
