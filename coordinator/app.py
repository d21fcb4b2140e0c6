"""The coordinator's HTTP API: FastAPI routes as thin adapters over `coordinator.service`.

Every POST takes a signed `Envelope` (kinds and paths from `protocol.routes` and
`protocol.messages`). The cheap checks come first, on the headers alone (`protocol.guard`
with `coordinator.admission`: per-address rate and byte budget, the route's body cap,
connection caps and header/body deadlines); then `coordinator.api.Api` reads the body,
verifies the envelope (large ones off the event loop), charges the per-identity limit and
calls one service function. `/docs` documents every type.

Read-only views (GET /v1/stats and the dashboard) are anonymous unless the request carries
the operator token (`coordinator.privacy` says what anonymous readers see); the submission
statuses a worker polls name the failed checks, never their numbers, nor `full_check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator import p2p, privacy
from coordinator.api import Api, encode
from coordinator.context import Context
from coordinator.dashboard import mount_dashboard
from coordinator.dashboard.routes import Recent
from coordinator.errors import CoordinatorError, Invalid
from coordinator.gate import SwarmGate
from coordinator.service import join, training, upkeep, verification, work
from protocol import loopwatch, routes
from protocol.envelope import Envelope
from protocol.guard import attach
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_HEARTBEAT,
    KIND_LEASE_RELEASE,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_RESUME,
    KIND_SUBMISSION,
    KIND_VERDICT,
    BatchAck,
    BatchAckResponse,
    BatchRequest,
    BatchResponse,
    ClaimRequest,
    ClaimResponse,
    Heartbeat,
    LeaseRelease,
    LeaseRequest,
    LeaseResponse,
    PolicyInfo,
    Registration,
    RegistrationResponse,
    RunInfo,
    Submission,
    SubmissionResponse,
    SubmissionStatus,
    SubmissionStatuses,
    Verdict,
    VerdictBatch,
    VerdictBatchResponse,
    WorkerInfo,
)

log = logging.getLogger("swarmrl.coordinator")

_ENVELOPE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": Envelope.model_json_schema()}}}}
BATCH_POLL_S = 0.25  # long-polls also re-check the database this often (other processes, replicas)
LEASE_POLL_S = 1.0   # a held lease request re-checks at least this often when its refusal named no time


async def _submit(ctx: Context, api: Api, opened, raw: bytes, lane: dict) -> SubmissionResponse:
    """Scoring (the sandbox: up to its time limits on hostile text) on an intake thread; the
    write transaction here on the loop, like every other one (with the write on the intake
    thread too, bench/hostile.py's clean submit p99 was 210-240 ms, against 95-99 ms so).
    `lane` gets the intake lane the signer's submission was scored in (for the latency metric);
    `lane["admitted"]`, when a large body's admission (`work.admit_submitter`, before its parse)
    already read the signer's row, is whether it is established (one read per submission)."""
    received = ctx.clock()   # a lease's expiry is judged at this time, not after the intake's queue
    with api.intake.taking(opened.signer_id, opened.body.lease_id), work.in_intake(ctx, opened.body.lease_id):
        established = lane.pop("admitted", None)
        if established is None:
            established = work.admit_submitter(ctx, opened.envelope.signer)
        lane["lane"] = work.lane_of(established)
        if not api.intake.threads:  # limits.intake_threads = 0: on the loop, as before issue 18's last round
            return work.submit(ctx, opened, raw, received)
        scores = await api.intake.run(opened.signer_id, established, work.scored, ctx, opened, received)
        return work.store(ctx, opened, raw, scores, received)


async def _long_poll_batch(ctx: Context, opened, _raw, _address) -> bytes:
    req: BatchRequest = opened.body
    batch = training.begin_batch(ctx, opened)
    deadline = time.monotonic() + req.wait_s
    dropped = batch.dropped_stale
    while not batch.groups and time.monotonic() < deadline:
        await ctx.groups.wait(min(BATCH_POLL_S, deadline - time.monotonic()))
        batch = training.take_batch(ctx, req)
        dropped += batch.dropped_stale
    batch.dropped_stale = dropped
    return batch.to_json()


async def _long_poll_lease(ctx: Context, opened, gate: SwarmGate) -> LeaseResponse:
    """A lease request that asked to be held (`LeaseRequest.wait_s`) and was refused for lack of
    room in the swarm waits here, off every thread, until room may have appeared
    (`ctx.room`: the trainer acknowledged groups, leases were released, ...) or the refusal's own retry
    time passes (other replicas' changes), and tries again, until `wait_s`. Over a long link this
    saves the refused worker's wait and a round trip per refusal (bench/wan.py rollouts: workers
    at 100 ms spent 38-46% of their loop on lease calls). A request that got leases passes the
    wake on: there may be room for the next held one. Requests wait in their worker's lane
    (`Context.room`): new identities' requests are woken apart from established workers'. While it
    waits it gives its place at the swarm's gate back (`coordinator.gate`)."""
    resp, lane = work.try_lease(ctx, opened)
    wait_s = opened.body.wait_s
    if resp.leases or lane is None or wait_s <= 0:
        return resp
    deadline = time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        woken = False
        try:
            async with gate.set_aside():
                woken = await ctx.room.wait(min(resp.retry_after_s or LEASE_POLL_S, max(0.0, left)), lane)
        except CoordinatorError:  # no place again in time (429 busy): the wake is not used, pass it on
            if woken:
                ctx.room.notify(lane)
            raise
        last = time.monotonic() >= deadline
        try:   # until its last try, a full batch or nothing (small batches generate slower)
            resp, short = work.try_lease(ctx, opened, again=True, fill=not last)
        except BaseException:
            if woken:   # banned meanwhile, say: the wake was not used, pass it on
                ctx.room.notify(lane)
            raise
        if resp.leases or short is None:
            if woken:   # leases taken (there may be room for more), or refused for its own reasons
                ctx.room.notify(lane)
            return resp
        if last:   # held for all it asked: it may ask again at once (and be held again)
            return resp.model_copy(update={"retry_after_s": 0.0})


def create_app(ctx: Context, *, background: bool = True) -> FastAPI:
    """The FastAPI app of one coordinator. `background=False` skips the periodic sweep and
    archive loops (tests that drive `upkeep.sweep` themselves)."""
    api = Api(ctx)
    verifiers, operator = ctx.verifier_keys, frozenset({ctx.operator.hex})

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if background:
            await asyncio.to_thread(p2p.start, ctx)  # the swarm layer's bootstrap peer (coordinator.p2p)
        tasks = [asyncio.create_task(_sweep_loop(ctx))] if background else []
        if background and ctx.archiver is not None:
            tasks.append(asyncio.create_task(ctx.archiver.loop()))
        if background and ctx.cfg.tracking.backend != "none":
            tasks.append(asyncio.create_task(_track_loop(ctx)))
        unwatch = loopwatch.watch_running_loop("coordinator")  # None unless SWARMRL_LOOP_WATCH_MS
        try:
            yield
        finally:
            if unwatch:
                unwatch()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if ctx.archiver is not None:
                await asyncio.to_thread(ctx.archiver.flush)
            await asyncio.to_thread(p2p.stop, ctx)
            await asyncio.to_thread(api.offload.close)
            await asyncio.to_thread(api.intake.close)

    app = FastAPI(title="swarmrl coordinator", version="1", lifespan=lifespan,
                  description="Worker registry, task leases, submission intake and rewards, verification "
                              "queue, training buffer and policy versions of a swarmrl run.")
    app.state.gate = api.gate  # the swarm's gate of this process (tests and debugging look at it)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> Response:
        """A query or path value a route's signature refuses (`?limit=x`): the one-line `detail`
        and `reason` of every other refusal, not FastAPI's list of error objects."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        msg = " ".join(str(first.get("msg", "invalid")).split())
        return api.refuse(request.url.path, Invalid("bad_query", f"invalid {where}: {msg}"[:300]))

    @app.get(routes.HEALTH, tags=["ops"])
    async def health() -> dict:
        return {"ok": True, "role": "coordinator", "run_id": ctx.cfg.run_id}

    @app.get(routes.METRICS, tags=["ops"])
    async def metrics() -> Response:
        # off the loop: a scrape reads the database (metrics.StateCollector: counts by status over
        # whole tables, which grow with the run) and renders every histogram (25 latency buckets
        # per route); on the loop it held every other request (a 78 ms stall seen in
        # generate_latest under bench/hostile.py's attack, SWARMRL_LOOP_WATCH_MS=40)
        body = await asyncio.to_thread(generate_latest, ctx.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get(routes.RUN, tags=["join"], responses={200: {"model": RunInfo}})
    async def run_info(request: Request) -> Response:
        return await api.plain(request, "run", lambda: join.run_info(ctx))

    @app.post(routes.REGISTER, tags=["join"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": RegistrationResponse}})
    async def register(request: Request) -> Response:
        """Signed `registration`; the worker id is the signer's peer id."""
        return await api.signed(request, "register", KIND_REGISTRATION, Registration,
                                lambda o, raw, addr: join.register(ctx, o, addr))

    @app.post(routes.HEARTBEAT, tags=["join"], openapi_extra=_ENVELOPE_BODY)
    async def heartbeat(request: Request) -> Response:
        """Signed `heartbeat` -> {"ok": true, "policy_version": n}."""
        return await api.signed(request, "heartbeat", KIND_HEARTBEAT, Heartbeat,
                                lambda o, raw, addr: join.heartbeat(ctx, o))

    @app.get(routes.WORKER, tags=["join"], responses={200: {"model": WorkerInfo}})
    async def worker(request: Request, worker_id: str) -> Response:
        """A worker's standing; its own check rate, its near-tie ledger and the numbers of its ban
        reason only with the operator token (they would tell a cheater which of its submissions were
        fully checked and how close it runs to the limits; without it `check_rate` is null)."""
        return await api.viewed(request, "worker", lambda full: join.worker_info(ctx, worker_id, full=full))

    @app.post(routes.LEASES, tags=["work"], openapi_extra=_ENVELOPE_BODY, responses={200: {"model": LeaseResponse}})
    async def lease(request: Request) -> Response:
        """Signed `lease_request` -> coordinator-signed `lease` envelopes."""
        return await api.signed(request, "lease", KIND_LEASE_REQUEST, LeaseRequest,
                                lambda o, raw, addr: _long_poll_lease(ctx, o, api.gate))

    @app.post(routes.LEASE_RELEASE, tags=["work"], openapi_extra=_ENVELOPE_BODY)
    async def release(request: Request) -> Response:
        """Signed `lease_release` -> {"released": n}."""
        return await api.signed(request, "release", KIND_LEASE_RELEASE, LeaseRelease,
                                lambda o, raw, addr: work.release(ctx, o))

    @app.post(routes.SUBMISSIONS, tags=["work"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": SubmissionResponse}})
    async def submit(request: Request) -> Response:
        """Signed `submission`: cheap checks, rewards, storage, verification queue."""
        t0, lane = time.perf_counter(), {}
        resp = await api.signed(request, "submit", KIND_SUBMISSION, Submission,
                                lambda o, raw, addr: _submit(ctx, api, o, raw, lane),
                                admit=lambda signer: lane.update(admitted=work.admit_submitter(ctx, signer)))
        if "lane" in lane:  # its signature held: the answer's latency by intake lane
            ctx.metrics.submission_latency.labels(lane["lane"]).observe(time.perf_counter() - t0)
        return resp

    @app.get(routes.SUBMISSION_STATUSES, tags=["work"], responses={200: {"model": SubmissionStatuses}})
    async def submission_statuses(request: Request, ids: str = "") -> Response:
        """Up to 256 submissions' statuses in one request (`?ids=a,b,...`)."""
        return await api.plain(request, "submission_statuses", lambda: work.submission_statuses(ctx, ids))

    @app.get(routes.SUBMISSION, tags=["work"], responses={200: {"model": SubmissionStatus}})
    async def submission(request: Request, submission_id: str) -> Response:
        return await api.plain(request, "submission", lambda: work.submission_status(ctx, submission_id))

    @app.post(routes.VERIFICATION_CLAIM, tags=["verification"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": ClaimResponse}})
    async def claim(request: Request) -> Response:
        """`verification_claim` signed by a configured verifier key."""
        return await api.signed(request, "claim", KIND_CLAIM, ClaimRequest,
                                lambda o, raw, addr: verification.claim(ctx, o), signers=verifiers,
                                role="a configured verifier key")

    @app.post(routes.VERIFICATION_RESUME, tags=["verification"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": ClaimResponse}})
    async def resume(request: Request) -> Response:
        """`verification_resume` signed by a configured verifier key: its own unexpired claims back."""
        return await api.signed(request, "resume", KIND_RESUME, ClaimRequest,
                                lambda o, raw, addr: verification.resume(ctx, o), signers=verifiers,
                                role="a configured verifier key")

    @app.post(routes.VERDICTS, tags=["verification"], openapi_extra=_ENVELOPE_BODY)
    async def verdict(request: Request) -> Response:
        """`verdict` signed by a configured verifier key -> {"ok": true}."""
        return await api.signed(request, "verdict", KIND_VERDICT, Verdict,
                                lambda o, raw, addr: verification.verdict(ctx, o), signers=verifiers,
                                role="a configured verifier key")

    @app.post(routes.VERDICTS_BATCH, tags=["verification"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": VerdictBatch.model_json_schema()}}}},
              responses={200: {"model": VerdictBatchResponse}})
    async def verdict_batch(request: Request) -> Response:
        """`VerdictBatch`: the verdicts of one claim, each a `verdict` signed by a configured verifier
        key and handled exactly as at POST /v1/verdicts -> one outcome per element, in order."""
        return await api.signed_each(request, "verdict_batch", KIND_VERDICT, Verdict,
                                     lambda o: verification.verdict(ctx, o), signers=verifiers,
                                     role="a configured verifier key")

    @app.post(routes.TRAINER_BATCH, tags=["training"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": BatchResponse}})
    async def batch(request: Request) -> Response:
        """`batch_request` signed by the operator key; long-polls up to wait_s."""
        return await api.signed(request, "batch", KIND_BATCH_REQUEST, BatchRequest,
                                lambda o, raw, addr: _long_poll_batch(ctx, o, raw, addr),
                                signers=operator, role="the operator key")

    @app.post(routes.TRAINER_ACK, tags=["training"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": BatchAckResponse}})
    async def batch_ack(request: Request) -> Response:
        """`batch_ack` signed by the operator key: groups the trainer holds durably are consumed."""
        return await api.signed(request, "batch_ack", KIND_BATCH_ACK, BatchAck,
                                lambda o, raw, addr: training.ack(ctx, o), signers=operator, role="the operator key")

    @app.get(routes.POLICY, tags=["training"], responses={200: {"model": PolicyInfo}})
    async def get_policy(request: Request) -> Response:
        return await api.plain(request, "policy", lambda: training.policy_info_json(ctx))

    @app.post(routes.POLICY, tags=["training"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": PolicyInfo}})
    async def post_policy(request: Request) -> Response:
        """The operator-signed `policy_manifest` of a newly published version."""
        t0 = time.perf_counter()
        try:
            info = training.post_policy(ctx, await api.manifest(request))
            resp = Response(encode(info), media_type="application/json")
            if info.version is not None and info.manifest is not None:
                await p2p.announce(ctx, info.manifest, info.version)
        except CoordinatorError as exc:
            resp = api.refuse("post_policy", exc)
        api.done("post_policy", t0, resp.status_code)
        return resp

    # /v1/stats is open to anyone and its waste and reward aggregates scan every submission:
    # anonymous pollers share one answer, reused for at most `dashboard_cache_s` and for no
    # longer than 19x what it took to compute (they keep the coordinator busy <= 5% of the time;
    # on a small database the answer stays fresh). The operator's token always reads fresh.
    shared_stats = Recent(ctx.cfg.dashboard_cache_s, busy_share=0.05)

    def stats_view(full: bool) -> dict:
        raw = upkeep.stats(ctx) if full else shared_stats.get("stats", lambda: upkeep.stats(ctx))
        return privacy.stats(raw, full)

    @app.get(routes.STATS, tags=["ops"])
    async def stats(request: Request) -> Response:
        """Workers, versions, buffer, submissions and rewards by version (JSON); contributor addresses
        only with the operator token."""
        return await api.viewed(request, "stats", stats_view)

    mount_dashboard(app, ctx, api, background=background)  # /v1/dashboard/*, /dashboard, POST /v1/trainer/eval, checkpoints
    ctx.metrics.attach_state(lambda: upkeep.state_counts(ctx))
    return attach(app, api.guard)  # protocol.http serves it behind the cheap checks


async def _track_loop(ctx: Context) -> None:
    """Experiment tracking (`protocol.tracking`): a snapshot of the metrics every `every_s`."""
    from coordinator.metrics import tracking_snapshot
    from coordinator.store import submissions
    from protocol.tracking import open_tracker

    cfg = ctx.cfg.tracking
    tracker = await asyncio.to_thread(open_tracker, cfg, default_dir=ctx.cfg.data_dir / "tracking",
                                      run_id=ctx.cfg.run_id, role="coordinator")

    def snap() -> None:
        with ctx.db.read() as conn:
            reward = submissions.accepted_reward_by_version(conn, last=1)
        tracker.log(*tracking_snapshot(ctx.metrics.registry, reward))

    try:
        while True:
            await asyncio.sleep(cfg.every_s)
            try:
                await asyncio.to_thread(snap)
            except Exception:
                log.exception("tracking snapshot failed; retrying next interval")
    finally:
        tracker.close()


async def _sweep_loop(ctx: Context) -> None:
    while True:
        await asyncio.sleep(ctx.cfg.housekeeping_interval_s)
        try:
            upkeep.sweep(ctx)
            await asyncio.to_thread(ctx.db.checkpoint)
            await p2p.catch_up(ctx)
        except Exception:
            log.exception("housekeeping sweep failed; retrying next interval")
