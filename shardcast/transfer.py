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

Connections outlive a download (issue 22: over a 300 ms link, opening one cost a round trip
before the first shard byte of every version): a thread that ends `park`s its clean
connections in the pool's idle list, the next download's threads take them from there, and
`prewarm` opens one ahead of time (while a client or relay waits for the next version) and
makes it a kept-alive one with a cheap probe the node's front answers itself (the first byte
of a shard of the version not yet held: a small 404), because a node closes a new connection
that sends no request within its header timeout, but keeps an answered one for its idle
timeout (75 s by default; `PARKED_MAX_S` stays inside it). Not a HEAD: fronts before this
change wrote their error bodies after a HEAD answer too, which would poison the connection's
next response. At most `max_idle` idle connections per source.

Time is bounded for sources that drip. A response head must arrive whole by a deadline
(`Connections.get(head_timeout_s=...)`): http.client reads it line by line with a timeout per
socket read, so a source sending a byte every few seconds would hold it forever; a `Watchdog`
thread shuts the socket down at the deadline instead, which ends the blocked read at once.
Body reads (`ShardResponse.readinto`) return whatever one socket read delivered, with a
timeout the caller chooses per read (shardcast.fetch applies its minimum rate with it):
`HTTPResponse.readinto` loops until the whole buffer is full, so a drip of one byte every
few seconds never let it return.

Errors surface as `TransferError` (an OSError), which callers treat like any transport error.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import socket
import threading
import time
from urllib.parse import urlsplit

# Bytes per read and per buffered file write (writes through the page cache, used where
# O_DIRECT is unavailable or off; direct writes use shardcast.fetch.DIRECT_BUFFER). Not
# larger: on this project's reference VM (Linux 6.18, ext4), buffered writes of 1 MiB into
# fresh page-cache memory measured ~2-3 s of kernel time per GiB against ~0.2 s for writes of
# 64-256 KiB (see the notes in bench/shardcast.py); below 64 KiB the per-call overhead grows.
BUFFER = 256 * 1024
DRAIN_LIMIT = 64 * 1024  # an error body up to this size is read to keep its connection
DRAIN_S = 1.0            # ... if it arrives within this time (an honest source sends its few
                         # bytes with the head; at 5 s, a relay that drips its 404 and 503 bodies
                         # held a download thread 5 s per request, uncharged: bench/hostile.py)


class TransferError(OSError):
    """A shard transfer failed at the transport level (connect, send, read, bad framing)."""


class ReadTimeout(TransferError):
    """A body read delivered nothing within the time the caller allowed it."""


class TooSlow(TransferError):
    """A transfer below the minimum rate: `nbytes` in `seconds` (see MinRate)."""

    def __init__(self, message: str, nbytes: int, seconds: float):
        super().__init__(message)
        self.nbytes, self.seconds = nbytes, seconds


class _Alarm:
    """One armed deadline of the `Watchdog`: shuts `sock` down unless disarmed first."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.off = False
        self.fired = False
        self._lock = threading.Lock()

    def fire(self) -> None:
        with self._lock:
            if self.off:
                return
            self.fired = self.off = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # a read blocked in another thread returns at once
        except OSError:
            pass  # already closed: nothing to interrupt

    def disarm(self) -> bool:
        """Stop the alarm; True if it had already fired."""
        with self._lock:
            self.off = True
            return self.fired


class Watchdog:
    """Shuts down sockets whose deadline passed, from one daemon thread (started on first use).
    Disarmed alarms leave the heap when their deadline comes up, so it holds at most the
    requests of the last deadline's length."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, deadline: float) -> _Alarm:
        """Shut `sock` down at `deadline` (time.monotonic()) unless the alarm is disarmed."""
        alarm = _Alarm(sock)
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="shardcast-watchdog")
                self._thread.start()
            self._cv.notify()
        return alarm

    def _run(self) -> None:
        with self._cv:
            while True:
                while self._heap and self._heap[0][2].off:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                heapq.heappop(self._heap)[2].fire()


WATCHDOG = Watchdog()


class ShardResponse:
    """An open response: status, headers, and `readinto` for the body."""

    def __init__(self, pool: "Connections", base: str, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse):
        self.pool, self.base, self.conn, self.resp = pool, base, conn, resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)

    def readinto(self, buf: memoryview, timeout_s: float) -> int:
        """Read what one socket read delivers (at most len(buf) bytes, never past the body's
        Content-Length) within `timeout_s`; 0 at the end of the body. ReadTimeout if nothing
        came in time. The caller checked that the response has a Content-Length: this reads
        the bytes of a length-delimited body only (`HTTPResponse.fp`/`length` are the
        standard library's own bookkeeping, used as its `read1` does)."""
        r = self.resp
        if r.fp is None or not r.length:
            return 0
        try:
            self.conn.sock.settimeout(max(timeout_s, 0.001))
            n = r.fp.readinto1(buf[:r.length] if len(buf) > r.length else buf)
        except TimeoutError as exc:
            self.pool.drop(self.base)
            raise ReadTimeout(f"{self.base}: no body byte within {timeout_s:.3g} s") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.pool.drop(self.base)
            raise TransferError(f"{self.base}: body read failed: {type(exc).__name__}: "
                                f"{exc}") from exc
        r.length -= n
        return n

    def finish(self, complete: bool) -> bool:
        """Release the response: keep the connection if the body was read to its end, or is
        a small one (an error's detail) that arrives within DRAIN_S. False when that small
        body did not arrive in time (the source drips its answers: the caller charges it)."""
        r = self.resp
        if complete and r.isclosed():
            return True
        if not complete or r.length is None or r.length > DRAIN_LIMIT:
            self.pool.drop(self.base)
            return True
        alarm = WATCHDOG.arm(self.conn.sock, time.monotonic() + DRAIN_S) if r.length else None
        try:
            r.read()
        except (OSError, ValueError, http.client.HTTPException):
            self.pool.drop(self.base)
            return not (alarm is not None and alarm.disarm())
        if alarm is not None and alarm.disarm():
            self.pool.drop(self.base)
            return False
        return True


PARKED_MAX_S = 60.0   # an idle connection older than this is closed rather than reused


class Connections:
    """Per-thread keep-alive HTTP/1.1 connections, one per source URL, and a shared list of
    idle ones (parked by threads that ended, or pre-opened) that new threads take first."""

    def __init__(self, connect_timeout_s: float = 5.0, max_idle: int = 4):
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._local = threading.local()
        self._idle: dict[str, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._idle_lock = threading.Lock()

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
        return conn

    def drop(self, base: str) -> None:
        conn = self._conns().pop(base, None)
        if conn is not None:
            conn.close()

    def close_all(self) -> None:
        for base in list(self._conns()):
            self.drop(base)

    def park(self) -> None:
        """This thread is done: keep its connections (each idle after a finished response) for
        the next thread, up to `max_idle` per source; close the rest."""
        conns = self._conns()
        for base in list(conns):
            self._put_idle(base, conns.pop(base))

    def idle(self, base: str) -> int:
        """Idle connections to `base` fresh enough to be taken."""
        now = time.monotonic()
        with self._idle_lock:
            return sum(1 for t, _ in self._idle.get(base, []) if now - t < PARKED_MAX_S)

    def prewarm(self, base: str, probe_path: str) -> bool:
        """Open a connection to `base`, send the probe `GET base+probe_path` for its first byte
        (any answer will do, read whole if small), and park it; False if the node cannot be
        reached, answers oddly or closes the connection."""
        try:
            conn = self._connect(base)
        except TransferError:
            return False
        try:
            conn.sock.settimeout(self.connect_timeout_s)
            conn.request("GET", urlsplit(base).path.rstrip("/") + probe_path,
                         headers={"accept-encoding": "identity", "range": "bytes=0-0"})
            resp = conn.getresponse()
            if resp.length is None or resp.length > DRAIN_LIMIT:
                conn.close()
                return False
            resp.read()
            if resp.will_close:
                conn.close()
                return False
        except (OSError, ValueError, http.client.HTTPException):
            conn.close()
            return False
        self._put_idle(base, conn)
        return True

    def close_idle(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for _, conn in conns:
                conn.close()

    def _put_idle(self, base: str, conn: http.client.HTTPConnection) -> None:
        with self._idle_lock:
            idle = self._idle.setdefault(base, [])
            if len(idle) < self.max_idle:
                idle.append((time.monotonic(), conn))
                return
        conn.close()

    def _take_idle(self, base: str) -> http.client.HTTPConnection | None:
        now = time.monotonic()
        stale = []
        taken = None
        with self._idle_lock:
            idle = self._idle.get(base, [])
            while idle:
                parked_at, conn = idle.pop()  # the newest first
                if now - parked_at < PARKED_MAX_S:
                    taken = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return taken

    def get(self, base: str, path: str, headers: dict[str, str], head_timeout_s: float) -> ShardResponse:
        """Send GET `base+path`; return the response once its head arrived, which must be
        within `head_timeout_s` (else TransferError)."""
        conns = self._conns()
        headers = {"accept-encoding": "identity", **headers}
        for attempt in (0, 1):
            conn = conns.get(base) or (self._take_idle(base) if attempt == 0 else None)
            reused = conn is not None
            conn = conn or self._connect(base)
            conns[base] = conn
            conn.sock.settimeout(head_timeout_s)
            alarm = WATCHDOG.arm(conn.sock, time.monotonic() + head_timeout_s)
            try:
                conn.request("GET", urlsplit(base).path.rstrip("/") + path, headers=headers)
                resp = conn.getresponse()
                if alarm.disarm():
                    raise TimeoutError("the deadline passed as the head arrived")
                return ShardResponse(self, base, conn, resp)
            except (OSError, ValueError, http.client.HTTPException) as exc:  # ValueError: TLS torn down
                late = alarm.disarm()
                self.drop(base)
                if late:
                    raise TransferError(f"{base}: no complete response head within "
                                        f"{head_timeout_s:g} s") from exc
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: try once on a fresh one
                raise TransferError(f"{base}: request failed: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")


class MinRate:
    """The minimum rate of one transfer as a leaky bucket: it starts with `window_s` of
    credit (`first_s`, when given and smaller: a source on probation), each byte received buys
    1/min_bps seconds more, and the credit is capped at `window_s` ahead of now (a burst cannot
    pay for a long stall). The transfer is too slow when the credit runs out."""

    def __init__(self, min_bps: float, window_s: float, silence_s: float, first_s: float | None = None):
        self.min_bps, self.window_s, self.silence_s = min_bps, window_s, silence_s
        self.started = time.monotonic()
        self.until = self.started + (window_s if first_s is None else min(first_s, window_s))
        self.nbytes = 0

    def received(self, n: int) -> None:
        self.nbytes += n
        self.until = min(time.monotonic() + self.window_s, self.until + n / self.min_bps)

    def next_read_s(self, url: str) -> float:
        """How long the next read may wait; raises TooSlow when no credit is left."""
        now = time.monotonic()
        left = self.until - now
        if left <= 0:
            took = now - self.started
            raise TooSlow(f"{url} sent {self.nbytes} bytes in {took:.1f} s, below the minimum "
                          f"{self.min_bps:.0f} B/s", self.nbytes, took)
        return min(left, self.silence_s)
