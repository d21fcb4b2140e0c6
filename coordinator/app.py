"""The coordinator's HTTP API: FastAPI routes as thin adapters over `coordinator.service`.

Every POST takes a signed `Envelope` (kinds and paths from `protocol.routes` and
`protocol.messages`). A route reads the body under the size limit, applies the per-address
limit, verifies the envelope (auth.py), applies the per-identity limit, and calls one service
function; a `CoordinatorError` becomes `{"detail": ..., "reason": ...}` with its status (429 with
Retry-After) and is counted by reason. Handlers are `async` and run the short, CPU-bound
service calls inline on the event loop: one thread owns the database connection at a time,
and the only waiting (the trainer's long-poll) is an `await`. Responses are serialised once
with pydantic (no FastAPI response-model re-validation on the hot path); `/docs` still
documents every type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from coordinator import p2p
from coordinator.auth import open_signed, parse_body, parse_envelope
from coordinator.context import Context
from coordinator.dashboard import mount_dashboard
from coordinator.errors import BadRequest, CoordinatorError, RateLimited, TooLarge
from coordinator.service import join, training, upkeep, verification, work
from protocol import routes
from protocol.envelope import AUDIENCE_COORDINATOR, Envelope
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_HEARTBEAT,
    KIND_LEASE_RELEASE,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
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
    VerdictOutcome,
    WorkerInfo,
)

log = logging.getLogger("swarmrl.coordinator")

_ENVELOPE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": Envelope.model_json_schema()}}}}
BATCH_POLL_S = 0.25  # long-polls also re-check the database this often (other processes, replicas)


def _encode(result: Any) -> bytes:
    if isinstance(result, bytes):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    return json.dumps(result).encode()


class Api:
    """Binds a Context to the request plumbing shared by every route."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def address(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def limit_address(self, address: str) -> None:
        ctx = self.ctx
        if address in ctx.cfg.limits.exempt_addresses:
            return
        wait = ctx.address_limiter.take(address, ctx.clock())
        if wait > 0:
            raise RateLimited("rate_limited_address", f"too many requests from {address}; retry in {wait:.1f} s", wait)

    def limit_identity(self, signer: str) -> None:
        ctx = self.ctx
        if signer in ctx.trusted_keys:
            return
        wait = ctx.identity_limiter.take(signer, ctx.clock())
        if wait > 0:
            raise RateLimited("rate_limited_identity", f"too many requests from this identity; retry in {wait:.1f} s",
                              wait)

    async def body(self, request: Request) -> bytes:
        limit = self.ctx.cfg.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise TooLarge("too_large", f"request body of {int(declared)} bytes exceeds the limit of {limit}")
            except ValueError:
                raise BadRequest("malformed", "invalid Content-Length header") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge("too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def refuse(self, route: str, exc: CoordinatorError) -> Response:
        self.ctx.metrics.rejections.labels(exc.reason).inc()
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
        log.debug("%s refused (%s): %s", route, exc.reason, exc.detail)
        return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=exc.status, headers=headers)

    def done(self, route: str, t0: float, status: int) -> None:
        m = self.ctx.metrics
        m.requests.labels(route, str(status)).inc()
        m.latency.labels(route).observe(time.perf_counter() - t0)

    def open(self, env: Envelope, kind: str, body_type: type[BaseModel], signers: frozenset[str] | None,
             role: str) -> Any:
        """Verify one envelope (kind, signer, signature, freshness, body) and charge its signer's limit."""
        opened = open_signed(env, kind, body_type, now=self.ctx.clock(), max_skew_s=self.ctx.cfg.max_clock_skew_s,
                             run_id=self.ctx.cfg.run_id, audience=AUDIENCE_COORDINATOR, allowed_signers=signers,
                             role=role)
        self.limit_identity(env.signer)
        return opened

    async def signed(self, request: Request, route: str, kind: str, body_type: type[BaseModel],
                     op: Callable[..., Any], *, signers: frozenset[str] | None = None, role: str = "") -> Response:
        t0 = time.perf_counter()
        try:
            address = self.address(request)
            self.limit_address(address)
            raw = await self.body(request)
            opened = self.open(parse_envelope(raw), kind, body_type, signers, role)
            result = op(opened, raw, address)
            if asyncio.iscoroutine(result):
                result = await result
            resp = Response(_encode(result), media_type="application/json")
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
        self.done(route, t0, resp.status_code)
        return resp

    async def signed_each(self, request: Request, route: str, kind: str, body_type: type[BaseModel],
                          op: Callable[[Any], Any], *, signers: frozenset[str] | None = None,
                          role: str = "") -> Response:
        """A `VerdictBatch`-shaped request: a list of signed envelopes, each verified, limited
        and applied on its own as `signed` would (a refused one does not stop the others)."""
        t0 = time.perf_counter()
        ctx = self.ctx
        try:
            self.limit_address(self.address(request))
            batch = parse_body(await self.body(request), VerdictBatch, "batch", "a list of signed envelopes")
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
            self.done(route, t0, resp.status_code)
            return resp
        results = []
        for env in batch.envelopes:
            try:
                op(self.open(env, kind, body_type, signers, role))
                results.append(VerdictOutcome(status=200))
            except CoordinatorError as exc:
                ctx.metrics.rejections.labels(exc.reason).inc()
                results.append(VerdictOutcome(status=exc.status, detail=exc.detail))
        resp = Response(_encode(VerdictBatchResponse(results=results)), media_type="application/json")
        self.done(route, t0, resp.status_code)
        return resp

    async def plain(self, request: Request, route: str, op: Callable[[], Any]) -> Response:
        t0 = time.perf_counter()
        try:
            self.limit_address(self.address(request))
            resp = Response(_encode(op()), media_type="application/json")
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
        self.done(route, t0, resp.status_code)
        return resp

    async def long_poll_batch(self, opened, _raw, _address) -> bytes:
        ctx = self.ctx
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
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if ctx.archiver is not None:
                await asyncio.to_thread(ctx.archiver.flush)
            await asyncio.to_thread(p2p.stop, ctx)

    app = FastAPI(title="swarmrl coordinator", version="1", lifespan=lifespan,
                  description="Worker registry, task leases, submission intake and rewards, verification "
                              "queue, training buffer and policy versions of a swarmrl run.")

    @app.get(routes.HEALTH, tags=["ops"])
    async def health() -> dict:
        return {"ok": True, "role": "coordinator", "run_id": ctx.cfg.run_id}

    @app.get(routes.METRICS, tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
        """Signed `heartbeat` -> {"ok": true, "policy_version": n, "check_rate": r}."""
        return await api.signed(request, "heartbeat", KIND_HEARTBEAT, Heartbeat,
                                lambda o, raw, addr: join.heartbeat(ctx, o))

    @app.get(routes.WORKER, tags=["join"], responses={200: {"model": WorkerInfo}})
    async def worker(request: Request, worker_id: str) -> Response:
        return await api.plain(request, "worker", lambda: join.worker_info(ctx, worker_id))

    @app.post(routes.LEASES, tags=["work"], openapi_extra=_ENVELOPE_BODY, responses={200: {"model": LeaseResponse}})
    async def lease(request: Request) -> Response:
        """Signed `lease_request` -> coordinator-signed `lease` envelopes."""
        return await api.signed(request, "lease", KIND_LEASE_REQUEST, LeaseRequest,
                                lambda o, raw, addr: work.lease(ctx, o))

    @app.post(routes.LEASE_RELEASE, tags=["work"], openapi_extra=_ENVELOPE_BODY)
    async def release(request: Request) -> Response:
        """Signed `lease_release` -> {"released": n}."""
        return await api.signed(request, "release", KIND_LEASE_RELEASE, LeaseRelease,
                                lambda o, raw, addr: work.release(ctx, o))

    @app.post(routes.SUBMISSIONS, tags=["work"], openapi_extra=_ENVELOPE_BODY,
              responses={200: {"model": SubmissionResponse}})
    async def submit(request: Request) -> Response:
        """Signed `submission`: cheap checks, rewards, storage, verification queue."""
        return await api.signed(request, "submit", KIND_SUBMISSION, Submission,
                                lambda o, raw, addr: work.submit(ctx, o, raw))

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
        return await api.signed(request, "batch", KIND_BATCH_REQUEST, BatchRequest, api.long_poll_batch,
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
            api.limit_address(api.address(request))
            env = parse_envelope(await api.body(request))
            info = training.post_policy(ctx, env)
            resp = Response(_encode(info), media_type="application/json")
            if info.version is not None and info.manifest is not None:
                await p2p.announce(ctx, info.manifest, info.version)
        except CoordinatorError as exc:
            resp = api.refuse("post_policy", exc)
        api.done("post_policy", t0, resp.status_code)
        return resp

    @app.get(routes.STATS, tags=["ops"])
    async def stats(request: Request) -> Response:
        """Workers, versions, buffer, submissions and rewards by version (JSON)."""
        return await api.plain(request, "stats", lambda: upkeep.stats(ctx))

    mount_dashboard(app, ctx, api, background=background)  # /v1/dashboard/*, /dashboard, POST /v1/trainer/eval, checkpoints
    ctx.metrics.attach_state(lambda: upkeep.state_counts(ctx))
    return app


async def _sweep_loop(ctx: Context) -> None:
    while True:
        await asyncio.sleep(ctx.cfg.housekeeping_interval_s)
        try:
            upkeep.sweep(ctx)
            await asyncio.to_thread(ctx.db.checkpoint)
            await p2p.catch_up(ctx)
        except Exception:
            log.exception("housekeeping sweep failed; retrying next interval")
