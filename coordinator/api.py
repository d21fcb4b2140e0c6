"""The request plumbing every coordinator route shares (`Api`), and the guard it serves behind.

Before a route runs, `protocol.guard` (with `coordinator.admission`'s rule) has charged the
per-address request limit and byte budget and refused bodies over the route's cap, all on the
headers alone. A signed route then reads the body (its cap again, for chunked bodies), opens
the envelope (JSON, kind and signer rules, signature, clock skew, schema: `coordinator.auth`;
large bodies on the `OffLoop` threads), charges the signer's per-identity limit and calls one
service function. A `CoordinatorError` becomes `{"detail": ...}` with its status (429 with
Retry-After) and is counted by reason, as are the guard's own refusals.

Service calls run inline on the event loop (they are short, and the only waiting, the
trainer's long-poll, is an `await`), except a submission's: it waits for the scorer sandbox, so
its scoring runs on an `Intake` thread while the loop serves everything else. Responses
are serialised once with pydantic (no FastAPI response-model re-validation on the hot path).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.requests import ClientDisconnect

from coordinator.admission import body_cap, make_guard, route_caps
from coordinator.auth import (
    INLINE_BYTES,
    OffLoop,
    Slots,
    is_operator,
    open_request,
    open_signed,
    operator_token,
    parse_body,
    parse_envelope,
    refusal,
)
from coordinator.context import Context
from coordinator.errors import BadRequest, CoordinatorError, RateLimited, TooLarge, database_unavailable
from coordinator.fairpool import FairPool
from coordinator.gate import SwarmGate
from protocol.envelope import AUDIENCE_COORDINATOR, Envelope
from protocol.guard import Guard, address_key
from protocol.messages import VerdictBatch, VerdictBatchResponse, VerdictOutcome

T = TypeVar("T")
# a database error that is not the request's fault: rolled back, answered 503 (`database_unavailable`)
DATABASE_ERRORS = (OperationalError, IntegrityError)
# A swarm request's body read within this many seconds of taking its place at the gate keeps
# the place; a slower one gives it back until the body is in, then waits for one in turn (before,
# bodies dripped in by one address's connections held every place for limits.body_timeout_s).
BODY_IN_PLACE_S = 0.25
MAX_DETAIL_CHARS = 1000  # a refusal's detail is cut to this (`one_line`)
_CONTROLS = re.compile("[\x00-\x1f\x7f]")

log = logging.getLogger("swarmrl.coordinator")


def one_line(detail: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """A refusal's detail as one line of at most `limit` characters, its control characters
    escaped: details quote what the request sent (an id of 5000 characters, a path with an
    encoded newline, a body key "\\x00"), which must not make the answer or a log line long or
    several lines, nor put a NUL where wire text may not hold one (`VerdictOutcome.detail`)."""
    detail = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", detail)
    return detail if len(detail) <= limit else detail[: limit - 1] + "…"


def encode(result: Any) -> bytes:
    if isinstance(result, bytes):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    return json.dumps(result).encode()


class Intake:
    """Submissions are scored on threads of their own, not on the event loop: scoring waits for
    the scorer sandbox, up to its time limits on hostile text (3 s an item, 20 s a batch), and on
    the loop that held up /health and every other request. The sandbox is thread-safe with its
    own bound on children. At most `threads` run and `queue` wait; more are answered 429 `busy`
    (workers spool and retry). The write transaction that follows stays on the loop.

    The threads serve signers in turn, workers with verified work accepted first
    (`coordinator.fairpool`): an attacker's queue of slow hostile texts, from one identity or
    from fresh ones, delays an honest worker's submission by at most the item in progress.
    Admission is split the same way: new identities' submissions (running or waiting) take at
    most half of the places, so established workers always find the other half. Before, a
    handful of fresh identities, each with its first leases, filled every place with texts that
    take the scorer's whole limit on the one thread new identities may hold (64 x 3 s), and every
    honest submission was answered 429 `busy` for minutes."""

    def __init__(self, threads: int, queue: int):
        self.threads = threads
        self.slots = Slots(threads + queue, "taking in too many submissions")
        self.new_slots = Slots(max(1, (threads + queue) // 2), "taking in too many submissions from new identities")
        self.pool: FairPool | None = None
        self.in_flight: set[tuple[str, str]] = set()   # (signer, lease id) being taken in

    @contextlib.contextmanager
    def taking(self, signer: str, lease_id: str) -> Iterator[None]:
        """Hold (signer, lease) while its submission is checked, scored and stored; a second
        submission of that lease meanwhile (a replay, or a resend under a new nonce) is answered
        429 `submission_in_progress` before it is scored. Before, every copy sent at once passed
        the read-only checks (the lease was still active) and cost a sandbox round trip; only the
        write transaction refused all but one. Retried, a copy gets the first one's outcome
        (409 `duplicate_submission` once it is stored). Per server process (the event loop's, no
        lock): copies sent to several processes or replicas are scored at most once in each, and on
        PostgreSQL once in all (a claim on the lease row: `coordinator.service.work._claim`).
        Keyed by the signer too, so nobody else's request on a lease id can hold it."""
        key = (signer, lease_id)
        if key in self.in_flight:
            raise RateLimited("submission_in_progress", f"a submission for lease {lease_id} is being taken in; "
                                                        "retry shortly for its outcome", 1.0)
        self.in_flight.add(key)
        try:
            yield
        finally:
            self.in_flight.discard(key)

    async def run(self, signer: str, established: bool, fn: Callable[..., T], *args: Any) -> T:
        with contextlib.ExitStack() as places:
            if not established:
                places.enter_context(self.new_slots.slot())
            places.enter_context(self.slots.slot())
            if self.pool is None:
                self.pool = FairPool(self.threads, name="coordinator-intake")
            return await asyncio.wrap_future(self.pool.submit(signer, established, functools.partial(fn, *args)))

    def close(self) -> None:
        """Stop the threads (waits for the submissions they are taking in)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class Api:
    """Binds a Context to the request plumbing shared by every route."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        cfg = ctx.cfg
        self.caps = route_caps(cfg, ctx.tasks.vocab_size)
        self.offload = OffLoop(cfg.limits.verify_processes, cfg.limits.verify_queue)
        self.intake = Intake(cfg.limits.intake_threads, cfg.limits.intake_queue)
        self.gate = SwarmGate(cfg.limits.swarm_in_flight, cfg.limits.swarm_waiting,
                              min(cfg.limits.swarm_wait_s, cfg.limits.body_timeout_s / 2), ctx.metrics.gate_wait.observe)
        self.token = operator_token(cfg.dashboard.operator_token, cfg.dashboard.operator_token_file)
        self.guard: Guard = make_guard(cfg, self.caps, ctx.address_limiter, ctx.clock,
                                       lambda reason: ctx.metrics.rejections.labels(reason).inc())
        # every message this service acts on must be signed for this run and for the coordinator
        self.scope = {"run_id": cfg.run_id, "audience": AUDIENCE_COORDINATOR}

    def address(self, request: Request) -> str:
        """The client (the guard has already resolved X-Forwarded-For from trusted proxies)."""
        return request.client.host if request.client else "unknown"

    def operator(self, request: Request) -> bool:
        """Whether the request carries the operator token (401 if it carries another)."""
        return is_operator(request.headers.get("authorization"), self.token)

    def limit_identity(self, signer: str) -> None:
        ctx = self.ctx
        if signer in ctx.trusted_keys:
            return
        wait = ctx.identity_limiter.take(signer, ctx.clock())
        if wait > 0:
            raise RateLimited("rate_limited_identity", f"too many requests from this identity; retry in {wait:.1f} s",
                              wait)

    async def body(self, request: Request) -> bytes:
        """The body, at most the route's cap (the guard refused larger declared lengths already;
        this catches chunked bodies)."""
        limit = body_cap(self.caps, request.method, request.url.path)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge("too_large", f"request body exceeds the limit of {limit} bytes for "
                                                f"{request.method} {request.url.path}")
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest("disconnected", "the client went away before its body arrived") from None
        return b"".join(chunks)

    async def body_in_place(self, request: Request) -> bytes:
        """`body`, read while holding a place at the swarm's gate: a body not in within
        BODY_IN_PLACE_S gives the place back (`SwarmGate.set_aside`) until it is. The gate bounds
        the work in progress, not clients' upload speed (the byte budget and body_timeout_s
        bound what a slow body costs)."""
        reading = asyncio.ensure_future(self.body(request))
        try:
            done, _ = await asyncio.wait({reading}, timeout=BODY_IN_PLACE_S)
            if done:
                return reading.result()
            async with self.gate.set_aside():
                return await reading
        finally:
            if not reading.done():
                reading.cancel()

    def refuse(self, route: str, exc: CoordinatorError) -> Response:
        self.ctx.metrics.rejections.labels(exc.reason).inc()
        headers = {}
        if getattr(exc, "retry_after_s", None) is not None:  # RateLimited, Unavailable
            headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
        detail = one_line(exc.detail)
        log.debug("%s refused (%s): %s", route, exc.reason, detail)
        return JSONResponse({"detail": detail, "reason": exc.reason}, status_code=exc.status, headers=headers)

    def database_error(self, route: str, exc: Exception) -> CoordinatorError:
        """The refusal (503) for a database error that is not the request's fault, logged."""
        log.warning("%s: database error, answered 503: %s", route, exc)
        return database_unavailable(exc)

    def done(self, route: str, t0: float, status: int) -> None:
        m = self.ctx.metrics
        m.requests.labels(route, str(status)).inc()
        m.latency.labels(route).observe(time.perf_counter() - t0)

    async def open(self, raw: bytes, kind: str, body_type: type[BaseModel], signers: frozenset[str] | None,
                   role: str, admit: Callable[[str], None] | None = None) -> Any:
        """Verify one request's envelope and charge its signer's limit; a large body is verified in
        another process first and parsed here only if it passed (`coordinator.auth.OffLoop`) and
        `admit` (given the verified signer's hex key) did not refuse its signer: a correct
        signature proves only that someone made a key, which is free."""
        ctx = self.ctx
        now, skew = ctx.clock(), ctx.cfg.max_clock_skew_s
        opening = functools.partial(open_request, raw, kind, body_type, now=now, max_skew_s=skew, **self.scope,
                                    allowed_signers=signers, role=role)
        if len(raw) <= INLINE_BYTES:
            opened = opening()
            self.limit_identity(opened.envelope.signer)
            return opened
        whole, checked = await self.offload.precheck(raw, kind, body_type, now, skew, signers, role, **self.scope)
        problem = whole or checked[0]
        if isinstance(problem, tuple):
            raise refusal(*problem)
        self.limit_identity(problem)  # the verified signer
        if admit is not None:
            admit(problem)
        return await self.offload.thread(opening)

    def place(self, request: Request, swarm: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """A place at the swarm's gate for a swarm route's request (its client address waits in
        turn with the others); nothing for the operator's roles (`coordinator.gate`)."""
        return self.gate.place(address_key(self.address(request))) if swarm else contextlib.nullcontext()

    async def signed(self, request: Request, route: str, kind: str, body_type: type[BaseModel],
                     op: Callable[..., Any], *, signers: frozenset[str] | None = None, role: str = "",
                     admit: Callable[[str], None] | None = None) -> Response:
        """A signed request. A route open to any signer (`signers` None) is the swarm's: it waits
        for a place at the gate first. `admit`: see `open`."""
        t0 = time.perf_counter()
        try:
            async with self.place(request, signers is None):
                raw = await self.body_in_place(request)
                opened = await self.open(raw, kind, body_type, signers, role, admit)
                result = op(opened, raw, self.address(request))
                if asyncio.iscoroutine(result):
                    result = await result
                resp = Response(encode(result), media_type="application/json")
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
        except DATABASE_ERRORS as exc:
            resp = self.refuse(route, self.database_error(route, exc))
        self.done(route, t0, resp.status_code)
        return resp

    async def signed_each(self, request: Request, route: str, kind: str, body_type: type[BaseModel],
                          op: Callable[[Any], Any], *, signers: frozenset[str] | None = None,
                          role: str = "") -> Response:
        """A `VerdictBatch`-shaped request: a list of signed envelopes, each verified, limited
        and applied on its own as `signed` would (a refused one does not stop the others)."""
        t0 = time.perf_counter()
        ctx = self.ctx
        now, skew = ctx.clock(), ctx.cfg.max_clock_skew_s
        try:
            raw = await self.body(request)
            opening = functools.partial(self._open_each, raw, kind, body_type, signers, role, now)
            if len(raw) <= INLINE_BYTES:
                opened = opening()
            else:
                whole, checked = await self.offload.precheck(raw, kind, body_type, now, skew, signers, role,
                                                             batch=True, **self.scope)
                if whole is not None:
                    raise refusal(*whole)
                verified = [c for c in checked if not isinstance(c, tuple)]
                opened = await self.offload.thread(opening) if verified else [refusal(*c) for c in checked]
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
            self.done(route, t0, resp.status_code)
            return resp
        results = []
        for item in opened:
            try:
                if isinstance(item, CoordinatorError):
                    raise item
                self.limit_identity(item.envelope.signer)
                op(item)
                results.append(VerdictOutcome(status=200))
            except (CoordinatorError, *DATABASE_ERRORS) as exc:
                if not isinstance(exc, CoordinatorError):
                    exc = self.database_error(route, exc)
                ctx.metrics.rejections.labels(exc.reason).inc()
                results.append(VerdictOutcome(status=exc.status, detail=one_line(exc.detail)))
        resp = Response(encode(VerdictBatchResponse(results=results)), media_type="application/json")
        self.done(route, t0, resp.status_code)
        return resp

    def _open_each(self, raw: bytes, kind: str, body_type: type[BaseModel], signers: frozenset[str] | None,
                   role: str, now: float) -> list[Any]:
        """Parse a batch and verify each envelope: an Opened, or the CoordinatorError it got."""
        batch = parse_body(raw, VerdictBatch, "batch", "a list of signed envelopes")
        out: list[Any] = []
        for env in batch.envelopes:
            try:
                out.append(open_signed(env, kind, body_type, now=now, max_skew_s=self.ctx.cfg.max_clock_skew_s,
                                       **self.scope, allowed_signers=signers, role=role))
            except CoordinatorError as exc:
                out.append(exc)
        return out

    async def manifest(self, request: Request) -> Envelope:
        """The body parsed as an envelope, for the service that verifies it itself (a policy
        manifest: operator-signed, rare). A large one is first checked in an `OffLoop` process
        (the route is open to anyone), then parsed on a thread, within the bound."""
        raw = await self.body(request)
        if len(raw) <= INLINE_BYTES:
            return parse_envelope(raw)
        problem = await self.offload.precheck_manifest(raw, self.ctx.operator.hex)
        if problem is not None:
            raise refusal(*problem)
        return await self.offload.thread(functools.partial(parse_envelope, raw))

    async def plain(self, request: Request, route: str, op: Callable[[], Any], *, swarm: bool = True) -> Response:
        """A public read (the swarm's, at the gate, unless `swarm` is False)."""
        t0 = time.perf_counter()
        try:
            async with self.place(request, swarm):
                resp = Response(encode(op()), media_type="application/json")
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
        except DATABASE_ERRORS as exc:
            resp = self.refuse(route, self.database_error(route, exc))
        self.done(route, t0, resp.status_code)
        return resp

    async def viewed(self, request: Request, route: str, op: Callable[[bool], Any]) -> Response:
        """A read-only view: `op(full)`, full when the request carries the operator token (which
        also skips the swarm's gate)."""
        try:
            full = self.operator(request)
        except CoordinatorError as exc:
            resp = self.refuse(route, exc)
            self.done(route, time.perf_counter(), resp.status_code)
            return resp
        return await self.plain(request, route, lambda: op(full), swarm=not full)
