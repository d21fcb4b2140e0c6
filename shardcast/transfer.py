"""The data path: shard bodies over keep-alive HTTP/1.1 connections, read into a buffer.

Control requests (manifests, long-polls, version lists) go through httpx. Shard bodies,
which are nearly all of the bytes, go through the standard library's `http.client` instead:
its `HTTPResponse.readinto` fills a caller's buffer straight from the socket, which
measured about 0.5 CPU-seconds per GiB cheaper than httpx's 64 KiB chunk iterator on this
machine (uvicorn -> client on loopback, with sha256: ~0.95 vs ~1.5 s/GiB). On a 2-core box
that serves and receives many GiB at once, CPU is the bottleneck, so this is worth its
few lines. Each download thread keeps one connection per source (`threading.local`); a
request that fails on a reused connection before any response arrived is retried once on a
fresh one (the server may have closed an idle keep-alive connection).

Errors surface as `TransferError` (an OSError), which callers treat like any transport error.
"""

from __future__ import annotations

import http.client
import threading
from urllib.parse import urlsplit

# Bytes per read and per buffered file write (writes through the page cache, used where
# O_DIRECT is unavailable or off; direct writes use shardcast.fetch.DIRECT_BUFFER). Not
# larger: on this project's reference VM (Linux 6.18, ext4), buffered writes of 1 MiB into
# fresh page-cache memory measured ~2-3 s of kernel time per GiB against ~0.2 s for writes of
# 64-256 KiB (see the notes in bench/shardcast.py); below 64 KiB the per-call overhead grows.
BUFFER = 256 * 1024


class TransferError(OSError):
    """A shard transfer failed at the transport level (connect, send, read, bad framing)."""


class ShardResponse:
    """An open response: status, headers, and `readinto` for the body."""

    def __init__(self, pool: "Connections", base: str, resp: http.client.HTTPResponse):
        self.pool, self.base, self.resp = pool, base, resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)

    def readinto(self, buf: memoryview) -> int:
        try:
            return self.resp.readinto(buf)
        except (OSError, http.client.HTTPException) as exc:
            self.pool.drop(self.base)
            raise TransferError(f"{self.base}: body read failed: {type(exc).__name__}: "
                                f"{exc}") from exc

    def finish(self, complete: bool) -> None:
        """Release the response: keep the connection if the body was read to its end."""
        if complete and self.resp.isclosed():
            return
        if not complete:
            self.pool.drop(self.base)
            return
        try:
            self.resp.read()  # a small body (error detail) or nothing: drain it for reuse
        except (OSError, http.client.HTTPException):
            self.pool.drop(self.base)


class Connections:
    """Per-thread keep-alive HTTP/1.1 connections, one per source URL."""

    def __init__(self, connect_timeout_s: float = 5.0, read_timeout_s: float = 40.0):
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._local = threading.local()

    def _conns(self) -> dict[str, http.client.HTTPConnection]:
        d = getattr(self._local, "conns", None)
        if d is None:
            d = self._local.conns = {}
        return d

    def _connect(self, base: str) -> http.client.HTTPConnection:
        u = urlsplit(base)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname, u.port, timeout=self.connect_timeout_s)
        try:
            conn.connect()
        except OSError as exc:
            raise TransferError(f"{base}: cannot connect: {exc}") from exc
        conn.sock.settimeout(self.read_timeout_s)
        return conn

    def drop(self, base: str) -> None:
        conn = self._conns().pop(base, None)
        if conn is not None:
            conn.close()

    def close_all(self) -> None:
        for base in list(self._conns()):
            self.drop(base)

    def get(self, base: str, path: str, headers: dict[str, str]) -> ShardResponse:
        """Send GET `base+path`; return the response once its headers arrived."""
        conns = self._conns()
        for attempt in (0, 1):
            reused = base in conns
            conn = conns.get(base) or self._connect(base)
            conns[base] = conn
            try:
                conn.request("GET", urlsplit(base).path.rstrip("/") + path, headers=headers)
                return ShardResponse(self, base, conn.getresponse())
            except (OSError, http.client.HTTPException) as exc:
                self.drop(base)
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: try once on a fresh one
                raise TransferError(f"{base}: request failed: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")
