"""The HTTP API that origins and relays both serve (paths in protocol.routes, SC_*).

    GET /v1/versions                        {"versions": [...], "complete": [...]}
    GET /v1/versions/latest?after=N&wait_s=S  newest signed manifest with version > N;
                                            long-poll up to S s (capped), 204 if none
    GET /v1/versions/{v}/manifest           the signed manifest (an Envelope)
    GET /v1/versions/{v}/shards/{i}?wait_s=S  shard bytes; one HTTP Range supported (206);
                                            a relay waits up to S s for a shard still in
                                            flight, then answers 503 + Retry-After
    GET /health, GET /metrics, /docs

The node behind the API is a `Catalog` (the origin's published versions, or the relay's
mirror). The app is a thin adapter: it never decides what is valid, it only serves what the
catalog says is verified, so a relay never serves bytes it has not checked.

HTTP stack: FastAPI under uvicorn (the project's one stack: httptools on asyncio's loop,
`protocol.http.uvicorn_config`). Shard bodies are streamed from disk in 2 MiB blocks read with `os.pread` in a
worker thread: large blocks keep the per-block cost of the ASGI layer small, the thread keeps
a cold disk from stalling the event loop (long-polls share it), and one block per transfer
is all a transfer holds in memory. Measured on this machine, serving CPU per GiB sent on
loopback: Starlette's FileResponse (64 KiB per thread hop) 1.1-1.6 s, this at 1 MiB blocks
0.6 s, at 4 MiB blocks 0.4-0.6 s; 2 MiB is the compromise with memory, which is bounded by
`max_transfers` x (block + transport buffer) on top of the process's ~70 MB. FileResponse
also cannot serve a byte range *inside* a file as a whole resource, which the origin needs
(it serves shards out of the checkpoint's files). Zero-copy sendfile is cheaper still, but
uvicorn offers no way to use it: origins and relays therefore put shardcast.front on their
public port, which serves shard bodies with sendfile and hands every other request to this
app; this shard route remains for requests that reach the app directly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol import routes
from shardcast.metrics import NodeMetrics
from shardcast.signal import Signal

BLOCK = 2 * 1024 * 1024  # see the module docstring
DEFAULT_MAX_TRANSFERS = 64
MAX_WAIT_S = 60.0


@dataclass(frozen=True)
class ShardLocation:
    """Where a verified shard's bytes live: `size` bytes of `path` from `offset`."""

    path: Path
    offset: int
    size: int
    sha256: str


class Catalog(Protocol):
    """What an origin or a relay holds; every method is cheap and thread-safe."""

    role: str
    signal: Signal
    metrics: NodeMetrics

    def versions(self) -> list[int]: ...
    def complete_versions(self) -> list[int]: ...
    def manifest_bytes(self, version: int) -> bytes | None: ...
    def shard(self, version: int, index: int) -> ShardLocation | None:
        """The verified shard, None while it is still in flight; LookupError if unknown."""
        ...


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range of a resource of `size` bytes as [start, end); None = whole.

    Several ranges, or a unit other than bytes, are served as the whole resource (allowed
    by RFC 9110); a syntactically valid range that lies outside the resource raises.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise RangeNotSatisfiable(header)
            return (max(0, size - n), size)
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
    except ValueError:
        return None
    if start < 0 or start >= size or end <= start:
        raise RangeNotSatisfiable(header)
    return (start, end)


class Transfers:
    """Shard bodies being sent right now, counted by this route and by shardcast.front (one
    event loop thread each; a count off by one for a moment is harmless). Each holds at most
    one block in memory (plus what the transport buffers), so capping their number bounds the
    node's memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0


async def _file_blocks(loc: ShardLocation, start: int, end: int, metrics: NodeMetrics,
                       transfers: Transfers):
    # The file is opened here, not in the handler, so a request dropped before its body
    # starts leaks no descriptor. A pruned file surfaces as a short body, which every client
    # detects by the content length and the hash.
    fd = os.open(loc.path, os.O_RDONLY)
    transfers.active += 1
    metrics.transfers.set(transfers.active)
    try:
        pos = start
        while pos < end:
            n = min(BLOCK, end - pos)
            block = await anyio.to_thread.run_sync(os.pread, fd, n, loc.offset + pos)
            if not block:
                raise OSError(f"{loc.path} ended early at {loc.offset + pos}")
            pos += len(block)
            metrics.bytes_served.inc(len(block))
            yield block
    finally:
        os.close(fd)
        transfers.active -= 1
        metrics.transfers.set(transfers.active)


def _detail(status: int, text: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": text}, status_code=status, headers=headers)


def build_app(catalog: Catalog, *, title: str, max_transfers: int = DEFAULT_MAX_TRANSFERS,
              transfers: Transfers | None = None) -> FastAPI:
    """The API over `catalog`. At most `max_transfers` shard bodies are sent at once; a
    request beyond that gets 503 + Retry-After and its client turns to another source.
    `transfers`: a count shared with shardcast.front (its limit replaces `max_transfers`)."""
    app = FastAPI(title=title, description="shardcast: signed, sharded policy versions")
    m = catalog.metrics
    transfers = transfers if transfers is not None else Transfers(max_transfers)

    @app.get(routes.HEALTH)
    def health() -> dict:
        vs = catalog.versions()
        return {"ok": True, "role": catalog.role, "versions": vs,
                "complete": catalog.complete_versions(), "latest": max(vs) if vs else None}

    @app.get(routes.METRICS)
    def metrics() -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(routes.SC_VERSIONS)
    def versions() -> dict:
        return {"versions": catalog.versions(), "complete": catalog.complete_versions()}

    @app.get(routes.SC_LATEST)
    async def latest(after: int = Query(-1, ge=-1), wait_s: float = Query(0.0, ge=0.0)) -> Response:
        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        m.longpolls.inc()
        try:
            while True:
                seen = catalog.signal.generation
                newer = [v for v in catalog.versions() if v > after]
                if newer:
                    body = catalog.manifest_bytes(max(newer))
                    if body is not None:
                        return Response(body, media_type="application/json")
                left = deadline - time.monotonic()
                if left <= 0 or catalog.signal.closed:
                    return Response(status_code=204)
                await catalog.signal.wait(seen, left)
        finally:
            m.longpolls.dec()

    @app.get(routes.SC_MANIFEST)
    def manifest(version: int) -> Response:
        body = catalog.manifest_bytes(version)
        if body is None:
            return _detail(404, f"version {version} is not held here")
        return Response(body, media_type="application/json")

    @app.get(routes.SC_SHARD)
    async def shard(version: int, index: int, request: Request,
                    wait_s: float = Query(30.0, ge=0.0)) -> Response:
        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            seen = catalog.signal.generation
            try:
                loc = catalog.shard(version, index)
            except LookupError as exc:
                m.shard_requests.labels("not_found").inc()
                return _detail(404, str(exc))
            if loc is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0 or catalog.signal.closed:
                m.shard_requests.labels("not_ready").inc()
                return _detail(503, f"shard {index} of version {version} is not verified yet",
                               {"retry-after": "1"})
            await catalog.signal.wait(seen, min(left, 5.0))
        try:
            rng = parse_range(request.headers.get("range"), loc.size)
        except RangeNotSatisfiable:
            m.shard_requests.labels("bad_range").inc()
            return _detail(416, f"range {request.headers.get('range')!r} is outside shard of "
                                f"{loc.size} bytes", {"content-range": f"bytes */{loc.size}"})
        if transfers.active >= transfers.limit:
            m.shard_requests.labels("busy").inc()
            return _detail(503, f"busy: {transfers.active} transfers in progress; "
                                f"try another source",
                           {"retry-after": "1"})
        if not loc.path.exists():
            m.shard_requests.labels("not_found").inc()
            return _detail(404, f"version {version} was just pruned here")
        start, end = rng if rng is not None else (0, loc.size)
        headers = {"content-length": str(end - start), "accept-ranges": "bytes",
                   "etag": f'"{loc.sha256}"',
                   "cache-control": "public, max-age=31536000, immutable"}
        status = 200
        if rng is not None:
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{loc.size}"
        m.shard_requests.labels("ok").inc()
        return StreamingResponse(_file_blocks(loc, start, end, m, transfers), status_code=status,
                                 headers=headers, media_type="application/octet-stream")

    return app


