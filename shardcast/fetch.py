"""Parallel, verified shard downloads from a set of untrusted sources (relays or the origin).

Used by the client (writing shards into the files of a partial checkpoint) and by the relay
mirror (writing each shard to its own file). Where the bytes go is a `ShardSink`; what is
downloaded, from whom and how it is checked is decided here:

- `parallel` threads take shards in index order (relays mirror in the same order, so a
  client asking a relay that is still mirroring waits the least);
- each transfer picks a source with `selection.Sources` (measured throughput, success rate,
  transfers in flight) and streams the body to disk in blocks, hashing exactly the bytes it
  writes, in one pass: no shard is ever held in memory; with a sink that offers an O_DIRECT
  fd (`direct_fd`), page-aligned blocks go around the page cache (`Downloader._write`);
- a transfer that breaks is resumed from the byte where it stopped (HTTP Range) at the
  next source, keeping the running hash;
- time is bounded whatever a source does: the response head must arrive within
  `shard_wait_s + read_timeout_s`; the body must keep up `min_rate_bps` (shardcast.transfer.
  MinRate: a leaky bucket holding at most `rate_window_s` of credit), so a source that drips,
  or bursts and then stalls, is dropped within about `rate_window_s` and ranked down by the
  rate it managed (`Sources.slow`); a source that has not completed a transfer yet, while
  another source is usable, starts with `probation_s` of credit instead (a drip relay listed
  first held each client's first shard a whole window: 10 s per client in bench/hostile.py),
  and may hold the request only `probation_s` (its head due as much later) rather than
  `shard_wait_s` (a relay that held requests 30 s and answered 503 held the first version);
  a shard's attempts together end by `shard_deadline_s`;
- a body is capped at the bytes of the shard still missing (signed manifest): another
  Content-Length is refused before a byte is read, and nothing past it is read;
- a shard whose hash does not match the signed manifest is discarded; the source is marked
  hostile when it alone served the shard, and the shard is fetched again from one source;
- a shard counts only after its hash matched (`ShardSink.commit`).

Threads rather than asyncio: socket reads, sha256 and file writes release the GIL, so
threads use both cores. Bodies arrive through shardcast.transfer (keep-alive http.client
connections read into a 256 KiB buffer), not httpx: see that module for the measurement.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from protocol import routes
from protocol.messages import ShardEntry
from shardcast.bounded import decimal, short
from shardcast.errors import FetchFailed, VersionUnavailable
from shardcast.selection import Sources
from shardcast.transfer import BUFFER, DRAIN_S, Connections, MinRate, ReadTimeout, TooSlow, TransferError

ALIGN = 4096                     # O_DIRECT alignment of offsets, lengths and memory
RECHECK_MISSING_S = 0.5          # before asking again a source that lacked a version
MISSING_GRACE_S = 3.0            # a shard that every source either lacks (404) or failed to send
                                 # this long is given up (VersionUnavailable): pruned everywhere
                                 # (a worker that fell behind), not a relay still catching up
DIRECT_BUFFER = 4 * 1024 * 1024  # bytes per direct write (a filled read buffer); 256 KiB
                                 # measured slower in bench/shardcast.py, 1-4 MiB alike

log = logging.getLogger("shardcast.fetch")


PREWARM_SOURCES = 2              # sources given a pre-opened connection while waiting for a version


def prewarm(conns: Connections, sources: Sources, next_version: int) -> None:
    """Open, in a daemon thread, one kept-alive data connection to each of the best
    `PREWARM_SOURCES` sources that has none idle, so the first shard request of
    `next_version` (when it is announced) does not wait for a TCP handshake. The probe asks
    for the first byte of shard 0 of `next_version` without waiting (`wait_s=0`): a small 404
    or 503, or that byte."""
    todo = [url for url in sources.ranked()[:PREWARM_SOURCES] if not conns.idle(url)]
    if not todo:
        return
    probe = routes.SC_SHARD.format(version=max(0, next_version), index=0) + "?wait_s=0"

    def run() -> None:
        for url in todo:
            conns.prewarm(url, probe)

    threading.Thread(target=run, daemon=True, name="shard-prewarm").start()


class ShardSink(Protocol):
    def begin(self, shard: ShardEntry) -> tuple[int, int]:
        """An fd open for writing and the file offset where byte 0 of `shard` goes."""
        ...

    # Optional: `direct_fd(shard) -> int | None`, an fd of the same file opened with O_DIRECT;
    # when a sink has it, page-aligned runs of a shard are written through it (see
    # `Downloader._write`), the rest through the fd of `begin`.

    def end(self, shard: ShardEntry, fd: int) -> None:
        """The transfer of `shard` stopped (verified or not); release `fd` if needed."""
        ...

    def commit(self, shard: ShardEntry) -> None:
        """`shard`'s bytes are on disk and matched the manifest."""
        ...


@dataclass
class FetchOptions:
    parallel: int = 4
    shard_wait_s: float = 30.0          # how long a source may hold a request for a shard in flight
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0        # silence allowed mid-body; and after shard_wait_s, for the head
    min_rate_bps: float = 64 * 1024     # a transfer slower than this (after its window) is dropped
    rate_window_s: float = 10.0         # ... judged over this window (the most credit a burst buys)
    probation_s: float = 2.0            # the first credit of a source with no completed transfer, while
                                        # another source is usable (it is resumed there by Range); also
                                        # how long it may hold a request (its head due as much later)
    shard_deadline_s: float = 1800.0    # all attempts at one shard together
    max_attempts_per_shard: int = 16
    manifest_wait_s: float = 30.0       # how long fetch(N) waits for a source to learn of N
    control_timeout_s: float = 15.0     # one manifest request, whole answer (shardcast.bounded)
    stall_s: float | None = None        # a shard that received no byte for this long (its sources
                                        # unreachable or breaking transfers; "not ready yet" does not
                                        # count) fails with FetchFailed instead of waiting out
                                        # max_attempts_per_shard: for callers with another source
                                        # (the client with libp2p peers); None = off


@dataclass
class FetchEvents:
    """Callbacks for metrics and progress (all optional; called from download threads)."""

    on_bytes: Callable[[str, int], None] | None = None          # (source, n)
    on_verified: Callable[[ShardEntry], None] | None = None
    on_corrupt: Callable[[str, ShardEntry], None] | None = None  # (source, shard)
    on_error: Callable[[str, str], None] | None = None           # (source, reason)


@dataclass(frozen=True)
class _Target:
    """Where a shard's bytes go: `fd` (buffered) and `dfd` (O_DIRECT, or None) of one file,
    byte 0 of the shard at `base`."""

    fd: int
    dfd: int | None
    base: int


class _NotHere(Exception):
    pass


class _NotReady(Exception):
    pass


class _Restart(Exception):
    pass


@dataclass
class _ShardState:
    pos: int = 0
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    used: set[str] = field(default_factory=set)
    single_source: bool = False

    def reset(self) -> None:
        self.pos = 0
        self.hasher = hashlib.sha256()
        self.used = set()


class Downloader:
    def __init__(self, sources: Sources, opts: FetchOptions | None = None,
                 events: FetchEvents | None = None, abort: threading.Event | None = None,
                 conns: Connections | None = None):
        """`conns`: a connection pool that outlives this download (the client's or relay's,
        pre-opened while it waited for the version); None: one of its own, closed after."""
        self.sources = sources
        self.opts = opts or FetchOptions()
        self.events = events or FetchEvents()
        self.abort = abort or threading.Event()
        self._own_conns = conns is None
        self.conns = conns if conns is not None else Connections(self.opts.connect_timeout_s)
        self._local = threading.local()
        self._no_direct = False
        self._fd_locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- many shards -------------------------------------------------------------------------
    def fetch_all(self, version: int, shards: list[ShardEntry], sink: ShardSink) -> None:
        """Fetch and verify `shards` of `version` into `sink`; raise on the first shard that
        cannot be fetched (the others stop soon after)."""
        if not shards:
            return
        todo = iter(list(shards))
        lock = threading.Lock()
        errors: list[BaseException] = []
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                with lock:
                    shard = next(todo, None)
                if shard is None:
                    break
                try:
                    self.fetch_one(version, shard, sink, stop)
                except BaseException as exc:  # handed to the caller below, never swallowed
                    with lock:
                        errors.append(exc)
                    stop.set()
                    break
            self.conns.park()  # this thread's connections, for the next download

        threads = [threading.Thread(target=worker, daemon=True, name=f"shard-{i}")
                   for i in range(max(1, min(self.opts.parallel, len(shards))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._own_conns:
            self.conns.close_idle()
        if errors:
            raise errors[0]

    # -- one shard -----------------------------------------------------------------------------
    def fetch_one(self, version: int, shard: ShardEntry, sink: ShardSink,
                  stop: threading.Event | None = None) -> None:
        fd, base = sink.begin(shard)
        direct = getattr(sink, "direct_fd", None)
        dfd = direct(shard) if direct is not None else None
        try:
            self._fetch_into(version, shard, _Target(fd, dfd, base), stop)
        finally:
            sink.end(shard, fd)
        sink.commit(shard)
        if self.events.on_verified:
            self.events.on_verified(shard)

    def _fetch_into(self, version: int, shard: ShardEntry, target: "_Target",
                    stop: threading.Event | None) -> None:
        st = _ShardState()
        missing: set[str] = set()
        failed: set[str] = set()           # sources whose transfer of this shard failed
        missing_since: float | None = None
        attempts = 0
        moved_at, moved_pos = time.monotonic(), 0
        give_up_at = moved_at + self.opts.shard_deadline_s
        while True:
            if self.abort.is_set() or (stop is not None and stop.is_set()):
                raise FetchFailed(f"download of version {version} was stopped")
            if time.monotonic() > give_up_at:
                raise FetchFailed(f"shard {shard.index} of version {version}: not verified within "
                                  f"{self.opts.shard_deadline_s:g} s ({attempts} attempts)")
            if st.pos != moved_pos:
                moved_at, moved_pos = time.monotonic(), st.pos
            if self.opts.stall_s is not None and time.monotonic() - moved_at > self.opts.stall_s:
                raise FetchFailed(f"shard {shard.index} of version {version}: no byte from any source "
                                  f"in {self.opts.stall_s:g} s ({attempts} attempts)")
            if missing_since is not None and time.monotonic() - missing_since >= MISSING_GRACE_S \
                    and all(u in missing or u in failed or self.sources.is_hostile(u) for u in self.sources.urls):
                raise VersionUnavailable(
                    f"shard {shard.index} of version {version}: no source that works holds it (not held: "
                    f"{', '.join(sorted(missing))}; the others failed) for {MISSING_GRACE_S:g} s")
            url = self.sources.acquire(missing)
            if url is None:
                if self._wait_for_a_source(version, shard, missing):
                    missing.clear()  # the sources that lacked the version may hold it by now
                continue
            attempts += 1
            t0, pos0 = time.monotonic(), st.pos
            try:
                self._transfer(url, version, shard, target, st, stop)
            except _NotHere:
                missing.add(url)
                if missing_since is None:
                    missing_since = time.monotonic()
                if attempts >= self.opts.max_attempts_per_shard:
                    raise VersionUnavailable(f"shard {shard.index} of version {version}: after {attempts} "
                                             f"attempts, no source that is not hostile holds it") from None
                continue
            except (_NotReady, _Restart, OSError) as exc:
                reason = (f"shard {shard.index} of version {version} not ready"
                          if isinstance(exc, _NotReady) else f"{type(exc).__name__}: {short(exc)}")
                if isinstance(exc, _NotReady):
                    moved_at = time.monotonic()  # the source is alive, still receiving it: no stall
                if isinstance(exc, TooSlow):
                    self._slow(url, exc)
                else:
                    self._error(url, reason)
                if not isinstance(exc, _NotReady):
                    failed.add(url)
                if isinstance(exc, _Restart) or st.single_source:
                    st.reset()
                if attempts >= self.opts.max_attempts_per_shard:
                    raise FetchFailed(f"shard {shard.index} of version {version}: "
                                      f"{attempts} attempts failed; last: {reason}") from exc
                continue
            finally:
                self.sources.done(url)
            if st.hasher.hexdigest() == shard.sha256:
                self.sources.success(url, st.pos - pos0, time.monotonic() - t0)
                return
            self._corrupt(st, shard)
            st.reset()
            st.single_source = True
            if attempts >= self.opts.max_attempts_per_shard:
                raise FetchFailed(f"shard {shard.index} of version {version}: no source served "
                                  f"bytes matching the manifest in {attempts} attempts")

    def _transfer(self, url: str, version: int, shard: ShardEntry, target: "_Target",
                  st: _ShardState, stop: threading.Event | None) -> None:
        headers = {"range": f"bytes={st.pos}-"} if st.pos else {}
        o = self.opts
        # A source on probation (no completed transfer, another usable) may hold the request
        # `probation_s` and must answer within as much again: one that held every request
        # the whole shard_wait_s and then answered 503 held each new client's first shards that
        # long (30 s), where another source had them.
        probation = self.sources.on_probation(url)
        wait_s = min(o.shard_wait_s, o.probation_s) if probation else o.shard_wait_s
        head_s = wait_s + (min(o.read_timeout_s, o.probation_s) if probation else o.read_timeout_s)
        path = routes.SC_SHARD.format(version=version, index=shard.index) + f"?wait_s={wait_s:g}"
        st.used.add(url)
        resp = self.conns.get(url, path, headers, head_timeout_s=head_s)
        complete = False
        try:
            code = resp.status
            if code == 404:
                complete = True
                raise _NotHere()
            if code == 503:
                complete = True
                raise _NotReady()
            if code == 416:
                complete = True
                raise _Restart(f"{url} refused range {st.pos}- of shard {shard.index}")
            if code not in (200, 206):
                complete = True
                raise TransferError(f"{url}: HTTP {code} for shard {shard.index}")
            if st.pos and code == 200:  # the source ignored the range: take the whole shard
                st.reset()
                st.used.add(url)
            length = resp.header("content-length")
            if length is None or not decimal(length) or int(length) != shard.size - st.pos:
                raise _Restart(f"{url} announced {short(length, 30)} bytes for the {shard.size - st.pos} "
                               f"left of shard {shard.index}")
            on_bytes = self.events.on_bytes
            # With an O_DIRECT fd, fill a whole block before writing (large aligned writes);
            # otherwise write what each read delivered (see shardcast.transfer.BUFFER).
            fill = target.dfd is not None
            view = self._buffer(DIRECT_BUFFER if fill else BUFFER)
            first = o.probation_s if probation else None
            rate = MinRate(o.min_rate_bps, o.rate_window_s, o.read_timeout_s, first_s=first)
            while st.pos < shard.size:
                want = min(len(view), shard.size - st.pos)
                got = 0
                while True:
                    if self.abort.is_set() or (stop is not None and stop.is_set()):
                        raise FetchFailed(f"download of version {version} was stopped")
                    try:
                        n = resp.readinto(view[got:want], rate.next_read_s(url))
                    except ReadTimeout:
                        rate.next_read_s(url)  # raises TooSlow when the bucket ran dry meanwhile
                        raise
                    if n == 0:
                        raise TransferError(f"{url} ended shard {shard.index} after "
                                            f"{st.pos + got} of {shard.size} bytes")
                    rate.received(n)
                    got += n
                    if on_bytes:
                        # per socket read, not per written block: an O_DIRECT block is a whole
                        # 1-4 MiB shard, so counting at the write hid when the first byte came
                        on_bytes(url, n)
                    if got == want or not fill:
                        break
                chunk = view[:got]
                self._write(target, chunk, target.base + st.pos)  # then hash: exactly these bytes
                st.hasher.update(chunk)
                st.pos += got
            complete = True
        finally:
            if not resp.finish(complete):
                self._error(url, f"the body of its HTTP {resp.status} answer for shard {shard.index} "
                                 f"did not arrive within {DRAIN_S:g} s")

    def _write_lock(self, fd: int) -> threading.Lock:
        """One lock per open file. The kernel serialises buffered writes to a file anyway
        (ext4 takes the inode lock); queueing on a Python lock first makes the other download
        threads sleep instead of spinning on that kernel lock, which measured as 13% of a
        client's CPU with four threads writing one file."""
        with self._locks_guard:
            lock = self._fd_locks.get(fd)
            if lock is None:
                lock = self._fd_locks[fd] = threading.Lock()
            return lock

    def _write(self, t: "_Target", chunk: memoryview, offset: int) -> None:
        """Write `chunk` at `offset`: its page-aligned part through the O_DIRECT fd when there
        is one (the buffer is page-aligned, so is every slice from its start), the rest
        buffered. Direct writes skip the page cache: on the reference VM a buffered write
        costs ~2.5 CPU-s per GiB (copying into fresh page-cache memory), a direct one ~0.1
        (measured with dd: 2 GiB in 4.95 s of kernel time buffered, 0.18 s direct), and the
        disk takes 1.7 GB/s. Pages written directly lie wholly inside this shard, so they
        never share a page with a buffered write of another shard."""
        if t.dfd is not None and offset % ALIGN == 0 and not self._no_direct:
            k = len(chunk) - len(chunk) % ALIGN
            try:
                if k and os.pwrite(t.dfd, chunk[:k], offset) != k:
                    raise OSError(f"short direct write at {offset}")
                chunk, offset = chunk[k:], offset + k
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.info("direct writes refused (%s); writing through the page cache", exc)
                self._no_direct = True
        if not len(chunk):
            return
        with self._write_lock(t.fd):
            done = 0
            while done < len(chunk):
                done += os.pwrite(t.fd, chunk[done:], offset + done)

    def _buffer(self, size: int) -> memoryview:
        """This thread's read buffer of `size` bytes, page-aligned (an anonymous mmap) as
        O_DIRECT writes require."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        if size not in bufs:
            bufs[size] = memoryview(mmap.mmap(-1, size))
        return bufs[size]

    def _wait_for_a_source(self, version: int, shard: ShardEntry, missing: set[str]) -> bool:
        """Wait until a source may be asked again; True when the ones that answered "not here"
        should be asked again: after RECHECK_MISSING_S when one of them is not hostile (a relay
        still catching up, e.g. one that had not heard of a version its client learned first
        from the swarm, holds it a moment later) and no other source is usable sooner. Waiting
        instead for the end of another source's bench (up to MAX_BENCH_S: a gzip-bomb relay's
        refused answers, four shards failing at once) held a verifier's first version for
        8-10 s in bench/hostile.py while the honest relay held it from 1.5 s on."""
        if set(self.sources.urls) <= missing:
            raise VersionUnavailable(f"no source holds version {version} (asked "
                                     f"{', '.join(self.sources.urls)})")
        wait = self.sources.next_usable_in(missing)
        recheck = any(not self.sources.is_hostile(u) for u in missing)
        if wait is None and not recheck:
            raise FetchFailed(f"every source of version {version} served corrupt data; "
                              f"no trusted source is left for shard {shard.index}")
        if recheck and (wait is None or wait >= RECHECK_MISSING_S):
            time.sleep(RECHECK_MISSING_S)
            return True
        time.sleep(min(max(wait, 0.05), 1.0))
        return False

    def _error(self, url: str, reason: str) -> None:
        log.info("source %s: %s", url, reason)
        self.sources.failure(url, reason)
        if self.events.on_error:
            self.events.on_error(url, reason)

    def _slow(self, url: str, exc: TooSlow) -> None:
        reason = str(exc)
        log.info("source %s: %s; dropped and ranked down", url, reason)
        self.sources.slow(url, exc.nbytes, exc.seconds, reason)
        if self.events.on_error:
            self.events.on_error(url, reason)

    def _corrupt(self, st: _ShardState, shard: ShardEntry) -> None:
        if len(st.used) == 1:
            (url,) = st.used
            log.warning("source %s served shard %d with a hash that does not match the signed "
                        "manifest; avoiding it", url, shard.index)
            self.sources.hostile(url, f"corrupt shard {shard.index}")
            if self.events.on_corrupt:
                self.events.on_corrupt(url, shard)
        else:
            for url in st.used:
                self._error(url, f"shard {shard.index} assembled from several sources failed "
                                 f"its hash")


