"""Zero-copy shard serving: a small HTTP/1.1 server in front of a node's FastAPI app.

Shard bodies are nearly all the bytes an origin or a relay sends. uvicorn cannot send a file
with sendfile(2) (it does not implement the ASGI zero-copy extension), so every byte crossed
Python twice (pread into a block, then the socket write): on the 2-core reference VM that
was ~0.6 CPU-s per GiB served, the largest part of a relay's CPU. This server owns the
node's public port and answers

    GET|HEAD /v1/versions/{v}/shards/{i}[?wait_s=S]   (routes.SC_SHARD; one Range supported)

itself, with `loop.sendfile` (os.sendfile: the bytes go from the page cache to the socket
without entering the process). Every other well-formed request (manifests, long-polls,
/health, /metrics, /docs) is handed, head and body, to the FastAPI app under uvicorn on a
private loopback port, as the one request of a fresh connection with `connection: close`;
uvicorn's answer is relayed back and the client's connection is closed after it, so those
routes keep one HTTP stack and no request reaches uvicorn unchecked. Shard requests reach
this server on the data connections that shardcast.transfer keeps for shard bodies alone
(kept alive); control requests are few per version. The two servers are started together
by shardcast.node_server.

Slow and greedy clients (shardcast.front_guard, limits from `FrontLimits`): connections per
client address and in all are capped (503 and closed at once); a request head must arrive
within `header_timeout_s` of its first byte (a new connection's first byte within
`header_timeout_s` of its opening) and a body within `body_timeout_s` of its head (else the
connection is closed); bodies must declare a length within their route's cap
(411, 413); a head that is not plain HTTP/1.x is answered 400. Each refusal is counted in
shardcast_front_refusals{reason} and logged at debug level only (an attacker must not be
able to fill the log).

Invariants (the same as shardcast.serving's shard route, which stays as the fallback):
- it serves only what `Catalog.shard` returns, i.e. verified shards; the path on disk comes
  from the catalog, never from the request (the request's path must be two decimal numbers);
- a shard still in flight is waited for up to `wait_s` (capped), then 503 + Retry-After;
  unknown version or shard 404; a range outside the shard 416; more than `max_transfers`
  bodies at once 503 (shared count with the fallback route), and more than
  `max_transfers_per_address` to one client address (default half of them: one address that
  requests shards and never reads them held every slot, 503 for everyone else for as long as
  it kept asking); a path the app would decode into a shard path (`%30`, `%2F`, zero-padded
  numbers) is answered 404 here, so no shard body leaves through the app's fallback route,
  outside these counts;
- memory per transfer is the kernel's socket buffer: no block is read into the process, so
  a relay's memory does not grow with the number of clients or the checkpoint size.
Metrics: bytes_served counts bytes handed to the socket, per sendfile chunk.

Why our own few lines and not a library: the stack is asyncio's own (start_server,
loop.sendfile); no maintained ASGI server offers sendfile, and the parsing here is only the
request line and headers of bodiless GET/HEAD requests (anything else goes to uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from protocol import routes
from shardcast.config import FrontLimits
from shardcast.front_guard import (
    HEAD_LIMIT, Admission, Refused, Request, body_length, closing_head, parse_head, read_body, read_head,
)
from shardcast.serving import MAX_WAIT_S, Catalog, RangeNotSatisfiable, Transfers, parse_range

log = logging.getLogger("shardcast.front")

SHARD_PATH = re.compile("^" + re.escape(routes.SC_SHARD).replace(r"\{version\}", r"(\d{1,18})")
                        .replace(r"\{index\}", r"(\d{1,9})") + "$")
# What the app's shard route would take as one once decoded ("%30", "%2F", "000...0"): the
# front answers 404 to these itself, so no shard body leaves outside its accounting.
LOOSE_SHARD_PATH = re.compile("^" + re.escape(routes.SC_SHARD).replace(r"\{version\}", "[^/]+")
                              .replace(r"\{index\}", "[^/]+") + "/?$")
SENDFILE_CHUNK = 8 * 1024 * 1024  # bytes per sendfile call (metrics move per chunk)
GRACE_S = 1.0                   # on stop, how long spliced requests may take to finish
STALL_S = 60.0                  # a client that takes this long for one chunk is dropped (it
                                # would hold one of the `max_transfers` slots)
REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 416: "Range Not Satisfiable",
           422: "Unprocessable Content", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class ShardFront:
    """The front server of one node: `catalog` for shards, uvicorn at `backend` for the rest."""

    def __init__(self, catalog: Catalog, backend: tuple[str, int], transfers: Transfers,
                 limits: FrontLimits | None = None):
        self.catalog = catalog
        self.m = catalog.metrics
        self.backend = backend
        self.transfers = transfers
        self.limits = limits or FrontLimits()
        self.admission = Admission(self.limits)
        self.per_address = (self.limits.max_transfers_per_address
                            or max(1, transfers.limit // 2))
        self._sending: Counter[str] = Counter()   # shard bodies being sent, by client address
        self._tasks: set[asyncio.Task] = set()
        self._splicing: set[asyncio.Task] = set()

    async def serve(self, sock: socket.socket, stop: asyncio.Event,
                    stop_backend: Callable[[], None] | None = None) -> None:
        """Serve on `sock` until `stop` is set. Then: accept nothing more; run `stop_backend`
        (blocking: uvicorn's graceful stop answers requests in flight, e.g. long-polls
        ended by the node's closed Signal, and closes its connections, which ends their
        splices here); give splices still open `GRACE_S`; drop every other connection."""
        server = await asyncio.start_server(self._connection, sock=sock, limit=HEAD_LIMIT)
        try:
            await stop.wait()
        finally:
            server.close()
            if stop_backend is not None:
                await asyncio.get_running_loop().run_in_executor(None, stop_backend)
            if self._splicing:
                await asyncio.wait(list(self._splicing), timeout=GRACE_S)
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    # -- one connection ------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refused = self.admission.enter(address)
        if refused is not None:
            self.m.front_refusals.labels("connections").inc()
            log.debug("refused a connection: %s", refused)
            try:
                await self._error(writer, 503, refused, {"retry-after": "5"}, close=True)
            except (ConnectionError, OSError):
                pass
            writer.close()
            return
        self._tasks.add(task)
        opening = True
        try:
            while True:
                try:
                    head = await read_head(reader, self.limits, opening=opening)
                    opening = False
                except TimeoutError:
                    self.m.front_refusals.labels("head_timeout").inc()
                    log.debug("closed a connection from %s: no complete request head within %g s", address,
                              self.limits.header_timeout_s)
                    await self._error(writer, 408, f"send the request head within "
                                                   f"{self.limits.header_timeout_s:g} s", close=True)
                    return
                except asyncio.LimitOverrunError:
                    self.m.front_refusals.labels("head_too_large").inc()
                    await self._error(writer, 431, "request headers too large", close=True)
                    return
                if head is None:
                    return  # the client closed between requests, or stayed silent too long
                req = parse_head(head)
                try:
                    path = urlsplit(req.target).path if req is not None else ""
                except ValueError:  # e.g. "//[x": urlsplit refuses the target
                    req = None
                if req is None:
                    self.m.front_refusals.labels("malformed").inc()
                    await self._error(writer, 400, "not an HTTP/1.x request", close=True)
                    return
                match = SHARD_PATH.match(path) if req.method in ("GET", "HEAD") else None
                if match is None and req.method in ("GET", "HEAD") and LOOSE_SHARD_PATH.match(unquote(path)):
                    self.m.shard_requests.labels("not_found").inc()
                    await self._error(writer, 404, "a shard path is /v1/versions/<decimal>/shards/<decimal>",
                                      close=True, head=req.method == "HEAD")
                    return
                if match is None:
                    self._splicing.add(task)
                    await self._forward(head, req, path, reader, writer)
                    return
                if not await self._shard(req, int(match[1]), int(match[2]), writer, address):
                    return
        except (ConnectionError, TimeoutError) as exc:
            log.debug("connection ended: %s", exc)
        except OSError as exc:  # e.g. a read error on the shard file: this connection ends
            log.warning("shard transfer failed: %s", exc)
        except asyncio.CancelledError:
            # Only `serve` cancels, when the node stops. Ending normally keeps asyncio's
            # stream callback (3.11) from logging the cancellation as an error.
            return
        finally:
            self.admission.leave(address)
            self._tasks.discard(task)
            self._splicing.discard(task)
            writer.close()  # sends what is still buffered, then closes

    async def _forward(self, head: bytes, req: Request, path: str, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        """Hand one checked request (head and body) to uvicorn with `connection: close`, relay
        its answer, and end the client's connection with it."""
        try:
            body = await read_body(reader, body_length(req, path, self.limits), self.limits)
        except Refused as exc:
            self.m.front_refusals.labels(f"body_{exc.status}").inc()
            await self._error(writer, exc.status, exc.detail, close=True)
            return
        except (TimeoutError, asyncio.IncompleteReadError):
            self.m.front_refusals.labels("body_timeout").inc()
            log.debug("closed a connection: request body not complete within %g s", self.limits.body_timeout_s)
            await self._error(writer, 408, f"send the request body within {self.limits.body_timeout_s:g} s",
                              close=True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
        except OSError as exc:
            await self._error(writer, 503, f"service unavailable: {exc}", close=True)
            return
        up_writer.write(closing_head(head) + body)

        async def client_gone() -> None:
            # Nothing more is taken from the client on this connection; read on only to see it
            # leave (a long-poll then ends here instead of holding uvicorn), dropping what comes.
            while await reader.read(64 * 1024):
                pass

        watcher = asyncio.ensure_future(client_gone())
        relay = asyncio.ensure_future(self._relay_answer(up_reader, writer))
        try:
            await asyncio.wait({watcher, relay}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watcher, relay):
                t.cancel()
            await asyncio.gather(watcher, relay, return_exceptions=True)
            up_writer.close()

    @staticmethod
    async def _relay_answer(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """uvicorn's answer to the client, until uvicorn closes (a client that stops reading for
        STALL_S is dropped)."""
        try:
            while data := await src.read(256 * 1024):
                dst.write(data)
                await asyncio.wait_for(dst.drain(), STALL_S)
        except (ConnectionError, OSError, TimeoutError):
            pass

    # -- shards --------------------------------------------------------------------------------
    async def _shard(self, req: Request, version: int, index: int,
                     writer: asyncio.StreamWriter, address: str = "?") -> bool:
        """Answer one shard request; True if the connection stays open for the next."""
        keep = req.keep_alive
        if req.headers.get("transfer-encoding") or req.headers.get("content-length", "0") != "0":
            await self._error(writer, 400, "a shard request has no body", close=True)
            return False
        try:
            wait_s = float(parse_qs(urlsplit(req.target).query).get("wait_s", ["30"])[-1])
            if not wait_s >= 0:
                raise ValueError(wait_s)
        except ValueError:
            await self._error(writer, 422, "wait_s must be a number >= 0", close=not keep, head=req.method == "HEAD")
            return keep
        m = self.m
        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            seen = self.catalog.signal.generation
            try:
                loc = self.catalog.shard(version, index)
            except LookupError as exc:
                m.shard_requests.labels("not_found").inc()
                await self._error(writer, 404, str(exc), close=not keep, head=req.method == "HEAD")
                return keep
            if loc is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0 or self.catalog.signal.closed:
                m.shard_requests.labels("not_ready").inc()
                await self._error(writer, 503, f"shard {index} of version {version} is not "
                                  f"verified yet", {"retry-after": "1"}, close=not keep, head=req.method == "HEAD")
                return keep
            await self.catalog.signal.wait(seen, min(left, 5.0))
        try:
            rng = parse_range(req.headers.get("range"), loc.size)
        except RangeNotSatisfiable:
            m.shard_requests.labels("bad_range").inc()
            await self._error(writer, 416, f"range {req.headers.get('range')!r} is outside shard "
                              f"of {loc.size} bytes", {"content-range": f"bytes */{loc.size}"},
                              close=not keep, head=req.method == "HEAD")
            return keep
        if self.transfers.active >= self.transfers.limit:
            m.shard_requests.labels("busy").inc()
            await self._error(writer, 503, f"busy: {self.transfers.active} transfers in progress; "
                              f"try another source", {"retry-after": "1"}, close=not keep, head=req.method == "HEAD")
            return keep
        if req.method == "GET" and self._sending[address] >= self.per_address:
            m.shard_requests.labels("busy").inc()
            await self._error(writer, 503, f"busy: {self._sending[address]} transfers to {address} in "
                              f"progress; try another source", {"retry-after": "1"}, close=not keep)
            return keep
        try:
            fh = open(loc.path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            m.shard_requests.labels("not_found").inc()
            await self._error(writer, 404, f"version {version} was just pruned here", close=not keep, head=req.method == "HEAD")
            return keep
        with fh:
            start, end = rng if rng is not None else (0, loc.size)
            headers = {"content-type": "application/octet-stream",
                       "content-length": str(end - start), "accept-ranges": "bytes",
                       "etag": f'"{loc.sha256}"',
                       "cache-control": "public, max-age=31536000, immutable"}
            status = 200
            if rng is not None:
                status = 206
                headers["content-range"] = f"bytes {start}-{end - 1}/{loc.size}"
            m.shard_requests.labels("ok").inc()
            if req.method == "HEAD":
                self._head(writer, status, headers, keep)
                await writer.drain()
                return keep
            # The head and the body's first bytes leave in one segment (TCP_CORK, as nginx's
            # tcp_nopush): sent alone, the head went out and Linux held the body back until the
            # head's ACK came, one round trip later (bench/wan.py broadcast: first byte at
            # head + 1 RTT on every worker; issue 22).
            sock = writer.get_extra_info("socket")
            # The slot is taken before the first await, so requests arriving together cannot all
            # pass the checks above before any of them is counted.
            self.transfers.active += 1
            self.m.transfers.set(self.transfers.active)
            self._sending[address] += 1
            _cork(sock, True)
            try:
                self._head(writer, status, headers, keep)
                await writer.drain()
                if not await self._send_file(writer, fh, loc.offset + start, end - start):
                    return False
            finally:
                _cork(sock, False)
                self.transfers.active -= 1
                self.m.transfers.set(self.transfers.active)
                self._sending[address] -= 1
                if self._sending[address] <= 0:
                    del self._sending[address]
        return keep

    async def _send_file(self, writer: asyncio.StreamWriter, fh, offset: int, count: int) -> bool:
        """Send `count` bytes of `fh` from `offset`; False if the file ended early (a pruned
        shard: the client sees a short body, which it detects by length and hash)."""
        loop = asyncio.get_running_loop()
        sent_total = 0
        while sent_total < count:
            n = min(SENDFILE_CHUNK, count - sent_total)
            try:
                sent = await asyncio.wait_for(
                    loop.sendfile(writer.transport, fh, offset + sent_total, n), STALL_S)
            except TimeoutError:
                log.info("a client took over %.0f s for %d bytes; dropping it", STALL_S, n)
                writer.transport.abort()
                return False
            self.m.bytes_served.inc(sent)
            sent_total += sent
            if sent < n:
                log.warning("%s ended %d bytes early", fh.name, count - sent_total)
                return False
        return True

    # -- responses -----------------------------------------------------------------------------
    @staticmethod
    def _head(writer: asyncio.StreamWriter, status: int, headers: dict[str, str],
              keep: bool) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("connection: keep-alive" if keep else "connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def _error(self, writer: asyncio.StreamWriter, status: int, text: str,
                     headers: dict[str, str] | None = None, *, close: bool, head: bool = False) -> None:
        body = json.dumps({"detail": text}).encode()
        h = {"content-type": "application/json", "content-length": str(len(body))}
        h.update(headers or {})
        self._head(writer, status, h, not close)
        if not head:  # an answer to HEAD has no body (RFC 9110 9.3.2): the client reads none
            writer.write(body)
        await writer.drain()


def _cork(sock, on: bool) -> None:
    """TCP_CORK on or off (Linux; elsewhere, and on a socket already gone, nothing)."""
    if sock is None or not hasattr(socket, "TCP_CORK"):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))
    except OSError:
        pass
