"""Bounded requests to untrusted sources: one deadline, a byte cap, no compression.

Every control request shardcast sends to a relay or an upstream (long-polls, manifests,
version listings), and the coordinator dashboard's relay polls, go through `get_bounded`:

- `Accept-Encoding: identity` is sent, and a body with any other Content-Encoding is refused
  before a byte of it is read: 0.4 MB of gzip inflates to gigabytes (issue 18), and a relay
  has no reason to compress (manifests are small JSON, shards are incompressible);
- the body is read raw, chunk by chunk, and refused the moment it passes `max_bytes` (a
  declared Content-Length over the cap is refused before the body is read), so the caller's
  memory is bounded by the cap whatever the source sends;
- the whole exchange (connect, request, response head, body) has one deadline, enforced by
  cancelling it (`asyncio.timeout`). httpx's timeouts bound each read, not their sum, so a
  source that drips its head or body a byte every few seconds would otherwise hold the caller
  for as long as it likes.

Shard bodies do not come through here: shardcast.transfer reads them (zero-copy, with a
minimum rate). `short(text)` (`protocol.http.short`, shared with every role) is how untrusted text may enter a log line or an error message;
`in_daemon_thread` awaits a blocking call without letting it hold the event loop's end.

Failures: `RefusedAnswer` (too large, compressed), `AnswerTimeout` (the deadline; a
RefusedAnswer) and httpx.HTTPError (the transport). `SOURCE_ERRORS` names all of them for
callers that treat any of them as "this source failed". Why our own few lines: httpx has no
overall deadline and no body cap (its docs suggest exactly this: stream, count, cancel).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from protocol.http import short, tls_context
from shardcast.errors import AnswerTimeout, RefusedAnswer

MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a signed manifest (~150 bytes per shard and file)
MAX_LISTING_BYTES = 64 * 1024          # GET /v1/versions: a few version numbers
IDENTITY = {"accept-encoding": "identity"}
SOURCE_ERRORS = (httpx.HTTPError, RefusedAnswer)

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """A complete response whose body is at most the cap it was read with."""

    status: int
    body: bytes
    headers: httpx.Headers


def decimal(text: str) -> bool:
    """True when `text` is a non-empty run of ASCII digits: what a Content-Length, a version
    folder or a shard file name may be. Not `str.isdigit` alone: "²" (latin-1 0xB2, as a
    header can carry) and "٣" are digits to it, and int("²") raises ValueError."""
    return text.isascii() and text.isdigit()


def new_client(connections: int = 4) -> httpx.AsyncClient:
    """An AsyncClient for untrusted sources (the caller's requests set their own deadlines)."""
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=connections), verify=tls_context(),
                             headers=IDENTITY)


async def get_bounded(http: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float,
                      params: dict[str, Any] | None = None) -> Answer:
    """GET `url` with the rules of the module docstring. Raises RefusedAnswer, AnswerTimeout
    or httpx.HTTPError; any status is returned (the caller decides what it means)."""
    budget = max(0.0, timeout_s)
    try:
        async with asyncio.timeout(budget):
            async with http.stream("GET", url, params=params, headers=IDENTITY,
                                   timeout=httpx.Timeout(budget + 1.0, connect=min(budget + 1.0, 5.0))) as resp:
                encoding = resp.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise RefusedAnswer(f"{url}: refused a compressed body (content-encoding "
                                        f"{short(encoding, 40)}); sources must send identity")
                declared = resp.headers.get("content-length", "")
                if decimal(declared) and int(declared) > max_bytes:
                    raise RefusedAnswer(f"{url}: announced {short(declared, 20)} bytes, more than "
                                        f"the {max_bytes} accepted")
                parts: list[bytes] = []
                got = 0
                async for chunk in resp.aiter_raw():
                    got += len(chunk)
                    if got > max_bytes:
                        raise RefusedAnswer(f"{url}: body passed the {max_bytes} bytes accepted")
                    parts.append(chunk)
                return Answer(resp.status_code, b"".join(parts), resp.headers)
    except TimeoutError as exc:
        raise AnswerTimeout(f"{url}: no complete answer within {budget:g} s") from exc


def run_bounded(work: Callable[[httpx.AsyncClient], Awaitable[T]], connections: int = 4) -> T:
    """Run `work(http)` to its end in a fresh event loop of the calling thread (for the
    synchronous callers: the client's and the relay's threads)."""

    async def main() -> T:
        async with new_client(connections) as http:
            return await work(http)

    return asyncio.run(main())


async def in_daemon_thread(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` in a daemon thread of its own, awaited. Not `asyncio.to_thread`: the
    default executor is joined when `asyncio.run` ends, so a blocking call still running
    there (e.g. a peer request) would hold the caller past its deadline; a daemon thread is
    left to finish on its own (its result is dropped)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            ok, value = True, fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            ok, value = False, exc
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:
            pass  # the loop has closed: nobody awaits the result any more

    threading.Thread(target=run, daemon=True, name="shardcast-blocking-call").start()
    return await fut
