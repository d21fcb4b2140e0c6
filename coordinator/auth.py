"""Turning request bytes into a verified, typed message, or a clear refusal.

Order (the cheapest refusals first, and nothing is written before all of them pass):
body size (413) -> JSON and envelope shape (400/422) -> the kind and signer rules
(403 when the key may not send this kind) -> the run and audience the envelope is signed
for (422 `wrong_scope`: another run, or a message for another role) -> signature (401) ->
clock skew (400) -> the body against its schema (422). Replay protection (the nonce) is checked by the service inside the
same transaction as the state change, so a refused request leaves no nonce behind and an
accepted one can never be replayed, even across a restart.

`open_signed` is `protocol.envelope.open_envelope` with its errors turned into HTTP answers.
The opened envelope keeps the canonical bytes of the body that the signature covers
(`Opened.canonical_body`), so intake digests it without encoding it a second time.

Parsing, canonical encoding and the signature check of a large body take ~30 ms per MB of
CPU, each in one C call that holds the GIL. A body over `INLINE_BYTES` is therefore first
opened in another process (`OffLoop.precheck`, `limits.verify_processes` of them, at most
`limits.verify_queue` waiting, 429 `busy` beyond): a body that is not signed, not fresh, not
allowed or not valid is refused without the event loop's process parsing a byte of it, so a
flood of them cannot stall /health or small requests. (Threads do not achieve that: measured
here, a loop beside two threads parsing 3 MB bodies still stalled up to ~0.2-0.4 s; beside
two processes, ~14 ms at p99.) Only a body that verified is then parsed again where it is
used, on a thread, after its signer's rate limit was charged: twice the CPU for a large honest
submission, nothing for a forged one. Bodies up to `INLINE_BYTES` cost less than the trip to
a process and are opened inline. A policy manifest (POST /v1/policy, open to anyone; only the
operator's signature makes it count) goes the same way (`OffLoop.precheck_manifest`): before,
a forged 4 MB one of small JSON keys cost the server process ~1.4 s of its loop and GIL.

`operator_token` reads the dashboard's operator token from the config; `is_operator` compares
a request's `Authorization: Bearer` value with it in constant time (a wrong token is a 401, no
token the anonymous view).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from coordinator.errors import (
    BadRequest,
    ConfigError,
    CoordinatorError,
    Forbidden,
    Invalid,
    RateLimited,
    Unauthorized,
)
from protocol.envelope import Envelope, Opened, open_envelope
from protocol.errors import MessageError, ScopeError, SignatureError, StaleMessageError
from protocol.messages import VerdictBatch

B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")
INLINE_BYTES = 32 * 1024
MIN_TOKEN_CHARS = 16


def parse_envelope(raw: bytes) -> Envelope:
    return parse_body(raw, Envelope, "envelope", "a signed envelope")


def parse_body(raw: bytes, model: type[B], what: str, expected: str) -> B:
    """A request body as `model`; BadRequest when it is not JSON of that shape at all,
    Invalid (`bad_<what>`) naming the first wrong field otherwise."""
    if not raw:
        raise BadRequest("malformed", f"empty request body; send {expected} as JSON")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid" or first.get("type") == "model_type":
            raise BadRequest("malformed", f"request body is not a JSON {what}: {first.get('msg', exc)}") from None
        loc = ".".join(str(p) for p in first.get("loc", ())) or what
        raise Invalid(f"bad_{what}", f"invalid {what}: {loc}: {first.get('msg')}") from None


def open_signed(env: Envelope, kind: str, body_type: type[B], *, now: float | None, max_skew_s: float | None,
                run_id: str, audience: str, allowed_signers: set[str] | frozenset[str] | None = None,
                role: str = "") -> Opened[B]:
    """Verify `env` as a `kind` message of run `run_id` addressed to `audience`;
    `allowed_signers` (hex keys) restricts who may send it."""
    if env.kind != kind:
        raise Invalid("wrong_kind", f"expected a {kind!r} envelope, got {env.kind!r}")
    if allowed_signers is not None and env.signer not in allowed_signers:
        who = role or "an authorised key"
        raise Forbidden("unauthorised_key", f"{kind} must be signed by {who}; key {env.signer[:16]}… is not one")
    try:
        return open_envelope(env, kind, body_type, now=now, max_skew_s=max_skew_s, run_id=run_id, audience=audience)
    except ScopeError as exc:
        raise Invalid("wrong_scope", str(exc)) from None
    except SignatureError as exc:
        raise Unauthorized("bad_signature", str(exc)) from None
    except StaleMessageError as exc:
        raise BadRequest("stale", str(exc)) from None
    except MessageError as exc:
        raise Invalid("bad_body", str(exc)) from None


def open_request(raw: bytes, kind: str, body_type: type[B], *, now: float | None, max_skew_s: float | None,
                 run_id: str, audience: str, allowed_signers: set[str] | frozenset[str] | None = None,
                 role: str = "") -> Opened[B]:
    """Request bytes -> a verified `kind` message (everything CPU-heavy about a request)."""
    return open_signed(parse_envelope(raw), kind, body_type, now=now, max_skew_s=max_skew_s, run_id=run_id,
                       audience=audience, allowed_signers=allowed_signers, role=role)


Problem = tuple[int, str, str]  # (status, reason, detail) of a refusal: CoordinatorErrors do not pickle


def precheck(raw: bytes, kind: str, body_type: type[BaseModel], now: float, max_skew_s: float,
             allowed_signers: frozenset[str] | None, role: str,
             batch: bool, run_id: str = "", audience: str = "") -> tuple[Problem | None, list[str | Problem]]:
    """Run in an `OffLoop` process: open the request, or each envelope of a `VerdictBatch`.
    Returns (the refusal of the whole body, or None; per envelope its verified signer's hex
    key or its refusal)."""
    def one(env: Envelope) -> str | Problem:
        try:
            open_signed(env, kind, body_type, now=now, max_skew_s=max_skew_s, run_id=run_id, audience=audience,
                        allowed_signers=allowed_signers, role=role)
        except CoordinatorError as exc:
            return exc.status, exc.reason, exc.detail
        return env.signer

    try:
        if batch:
            envs = parse_body(raw, VerdictBatch, "batch", "a list of signed envelopes").envelopes
        else:
            envs = [parse_envelope(raw)]
    except CoordinatorError as exc:
        return (exc.status, exc.reason, exc.detail), []
    return None, [one(env) for env in envs]


def precheck_manifest(raw: bytes, operator_hex: str) -> Problem | None:
    """Run in an `OffLoop` process: the refusal of a policy manifest that is not JSON, not an
    envelope or not validly signed by the operator key, as
    `coordinator.service.training.post_policy` answers it; None when it verified."""
    from protocol.identity import PublicKey
    from protocol.manifest import open_manifest

    try:
        open_manifest(parse_envelope(raw), PublicKey.from_hex(operator_hex))
    except CoordinatorError as exc:
        return exc.status, exc.reason, exc.detail
    except SignatureError as exc:
        return 401, "bad_signature", f"policy manifest: {exc}"
    except MessageError as exc:
        return 422, "bad_manifest", f"policy manifest: {exc}"
    return None


def refusal(status: int, reason: str, detail: str) -> CoordinatorError:
    """The error a `precheck` Problem stands for."""
    kinds = {c.status: c for c in (BadRequest, Unauthorized, Forbidden, Invalid)}
    return kinds.get(status, BadRequest)(reason, detail)


def _exit_with(parent_pid: int) -> None:
    """In an `OffLoop` process: exit as soon as the server process that started it is gone, even
    if it was killed and never said goodbye (its pipes stay open in this process, so nothing
    else would end it)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class Slots:
    """At most `capacity` pieces of work running or waiting; one more is a 429 `busy` (the caller
    retries) before anything is queued. Used on the event loop only (no lock needed)."""

    def __init__(self, capacity: int, busy: str):
        self.capacity, self.busy = capacity, busy
        self.pending = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.pending >= self.capacity:
            raise RateLimited("busy", f"the coordinator is {self.busy}; retry shortly", 1.0)
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1


class OffLoop:
    """Where large request bodies are checked: `precheck` in `processes` spawned processes (started
    on the first large body, ended with the server process), at most `queue` bodies waiting
    (429 `busy` beyond)."""

    def __init__(self, processes: int, queue: int):
        self.processes = processes
        self.slots = Slots(processes + queue, "checking too many large requests")
        self.pool: ProcessPoolExecutor | None = None

    async def precheck(self, raw: bytes, kind: str, body_type: type[BaseModel], now: float, max_skew_s: float,
                       allowed_signers: frozenset[str] | None, role: str, *, run_id: str, audience: str,
                       batch: bool = False) -> tuple[Problem | None, list[str | Problem]]:
        return await self.run(precheck, raw, kind, body_type, now, max_skew_s, allowed_signers, role, batch, run_id,
                              audience)

    async def precheck_manifest(self, raw: bytes, operator_hex: str) -> Problem | None:
        """`precheck_manifest` (this module) in a process."""
        return await self.run(precheck_manifest, raw, operator_hex)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in one of the processes, within the bound."""
        with self.slots.slot():
            if self.pool is None:
                self.pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_exit_with, initargs=(os.getpid(),))
            try:
                return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            except BrokenProcessPool:
                self.pool = None  # a child died (killed, out of memory): the next large body starts a new pool
                raise RateLimited("busy", "the coordinator's checking process failed; retry shortly", 1.0) from None

    async def thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a thread, within the same bound (the work that follows a precheck)."""
        with self.slots.slot():
            return await asyncio.to_thread(fn, *args)

    def close(self) -> None:
        """Stop the processes (waits for the one body each may be checking)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def operator_token(token: str, token_file: str) -> str:
    """The configured operator token ('' = none): the file's content, or the value itself."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"dashboard.operator_token_file {token_file}: {exc.strerror or exc}") from None
    token = token.strip()
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the operator token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                          "random ones (e.g. `openssl rand -hex 24`)")
    return token


def is_operator(authorization: str | None, token: str) -> bool:
    """True for `Bearer <the operator token>`; False without the header; 401 for any other value."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if not token or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("bad_operator_token", "the Authorization header does not hold the operator token; "
                                                  "send 'Authorization: Bearer <token>' or no header for the public view")
    return True


def json_detail(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()
