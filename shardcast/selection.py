"""Choosing which source (relay, origin) to fetch the next shard from.

Pure decision logic: `choose` takes the per-source statistics, the clock and a random
generator as arguments, so the policy is unit-tested without a network. `Sources` wraps
the statistics of one client (or relay mirror) with a lock, for its download threads.

Policy:
- a source that served bytes or a manifest that failed verification is *hostile* and is
  not used again for `HOSTILE_COOLDOWN_S` (bad data is never an accident we can afford to
  retry soon);
- a source with transfer errors is benched for an exponential backoff (0.5 s doubling to
  10 s) after each consecutive failure; one success, or an answer to a long-poll, clears it;
- a source dropped for being too slow (shardcast.fetch's minimum rate) is benched the same
  way and its measured throughput takes the rate it managed, however few bytes that was, so
  it ranks behind every source that delivers once its bench ends; an answer to a long-poll
  does not end its bench (only a transfer that succeeds does);
- among usable sources, a source never measured, never failed and idle is tried first
  (exploration), then the one with the smallest expected time to deliver one more shard given
  the transfers already running on it: (inflight + 1) / (throughput x success rate), where a
  source not measured yet is taken to be as fast as the best source measured on a completed
  transfer. A source that failed is explored no more: one that never completes a transfer
  (a gzip-bomb relay's refused answers, a drip relay's dripped 404s) stayed unmeasured, was
  "new" again each time its bench ended, and took the next shard before every honest source;
- an *unvouched* source (a relay only an unendorsed libp2p advert names: anyone can make
  one, with throw-away keys, at any URL) is never explored first and, until it completes a
  transfer, counts as delivering 1 byte/s: it gets shards only when no other source is
  usable. Explored like the others, every new drip relay an advert flood named held one
  shard of each client for a whole minimum-rate window, and fresh URLs every advert round
  kept a whole swarm at a fraction of its speed (tests/integration/test_hostile_swarm.py).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

HOSTILE_COOLDOWN_S = 600.0
EWMA_ALPHA = 0.3
MAX_BENCH_S = 10.0


@dataclass
class SourceStats:
    url: str
    throughput_bps: float | None = None   # EWMA of bytes/s per transfer, None until measured
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    inflight: int = 0
    benched_until: float = 0.0
    hostile_until: float = 0.0
    last_error: str = ""
    vouched: bool = True                  # False: explored last, slow until proven (see the docstring)
    slow: bool = False                    # its last transfer was dropped as too slow (until one succeeds)

    def usable(self, now: float) -> bool:
        return now >= self.hostile_until and now >= self.benched_until


def expected_seconds(s: SourceStats, best_bps: float) -> float:
    bps = s.throughput_bps if s.throughput_bps is not None else best_bps if s.vouched else 1.0
    success = (s.successes + 1) / (s.successes + s.failures + 1)
    return (s.inflight + 1) / max(bps * success, 1.0)


def choose(stats: list[SourceStats], now: float, rng: random.Random,
           exclude: frozenset[str] | set[str] = frozenset()) -> SourceStats | None:
    """The source to use next, or None when none is usable now."""
    usable = [s for s in stats if s.url not in exclude and s.usable(now)]
    if not usable:
        return None
    fresh = [s for s in usable if s.throughput_bps is None and s.inflight == 0 and s.vouched and not s.failures]
    if fresh:
        return rng.choice(fresh)
    # An unmeasured source counts as fast as the best rate measured on a transfer that
    # completed. A rate taken from a transfer dropped as too slow (`record_slow`: a dripping
    # relay's bytes per second) says nothing about the others: used as "best", it made a busy
    # honest relay, unmeasured because its shards are small, look as slow as the drip, which
    # then got the next shard and held it for a whole rate window, every version (found by
    # tests/integration/test_hostile_swarm.py).
    known = [s.throughput_bps for s in usable if s.throughput_bps is not None and s.successes > 0]
    best = max(known) if known else 1e9
    costs = [(expected_seconds(s, best), rng.random(), s) for s in usable]
    return min(costs, key=lambda c: (c[0], c[1]))[2]


def record_success(s: SourceStats, nbytes: int, seconds: float) -> None:
    s.successes += 1
    s.consecutive_failures = 0
    s.benched_until = 0.0
    s.slow = False
    if nbytes >= 64 * 1024 and seconds > 0:  # tiny transfers measure latency, not throughput
        bps = nbytes / seconds
        s.throughput_bps = bps if s.throughput_bps is None else (
            EWMA_ALPHA * bps + (1 - EWMA_ALPHA) * s.throughput_bps)


def record_failure(s: SourceStats, now: float, reason: str) -> None:
    s.failures += 1
    s.consecutive_failures += 1
    s.benched_until = now + min(MAX_BENCH_S, 0.5 * 2 ** (s.consecutive_failures - 1))
    s.last_error = reason


def record_slow(s: SourceStats, now: float, nbytes: int, seconds: float, reason: str) -> None:
    record_failure(s, now, reason)
    s.throughput_bps = nbytes / max(seconds, 1e-3)  # not averaged in: what it does now counts
    s.slow = True


def record_hostile(s: SourceStats, now: float, reason: str) -> None:
    s.failures += 1
    s.hostile_until = now + HOSTILE_COOLDOWN_S
    s.last_error = reason


@dataclass
class Sources:
    """Thread-safe statistics of a set of source URLs (one per client or relay mirror)."""

    urls: list[str]
    rng: random.Random = field(default_factory=random.Random)
    clock: object = time.monotonic
    on_hostile: object = None   # optional callable(url, reason), e.g. a metrics counter

    def __post_init__(self) -> None:
        self.urls = [u.rstrip("/") for u in self.urls]
        self.stats = {u: SourceStats(u) for u in self.urls}
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def acquire(self, exclude: frozenset[str] | set[str] = frozenset()) -> str | None:
        """Choose a source and count a transfer in flight on it (release with `done`)."""
        with self._lock:
            s = choose(list(self.stats.values()), self.now(), self.rng, exclude)
            if s is None:
                return None
            s.inflight += 1
            return s.url

    # Sources may be added and removed while transfers run (relays learned from the libp2p
    # swarm layer come and go): `urls` is replaced, never mutated, and a report about a URL
    # removed meanwhile is ignored.
    def add(self, url: str, vouched: bool = True) -> bool:
        """Start using `url` (True when it is new); `vouched=False` for a source nobody the
        client trusts named (see the module docstring)."""
        url = url.rstrip("/")
        with self._lock:
            if url in self.stats:
                return False
            self.stats[url] = SourceStats(url, vouched=vouched)
            self.urls = [*self.urls, url]
            return True

    def remove(self, url: str) -> bool:
        """Stop using `url` (True when it was there); transfers already on it finish. A
        source found hostile stays (benched as such), so that leaving and coming back does
        not wipe its record."""
        url = url.rstrip("/")
        with self._lock:
            s = self.stats.get(url)
            if s is None or self.now() < s.hostile_until:
                return False
            del self.stats[url]
            self.urls = [u for u in self.urls if u != url]
            return True

    def done(self, url: str) -> None:
        with self._lock:
            s = self.stats.get(url)
            if s is not None:
                s.inflight = max(0, s.inflight - 1)

    def success(self, url: str, nbytes: int, seconds: float) -> None:
        with self._lock:
            s = self.stats.get(url)
            if s is not None:
                record_success(s, nbytes, seconds)

    def alive(self, url: str) -> None:
        """The source answered (e.g. a long-poll): end its bench, keep its statistics. Not for
        a source dropped as too slow: a drip relay answers long-polls at once (they are small),
        and un-benched by each answer it was usable again whenever the honest relay did not
        hold a new version yet, and held a shard of that version for the probation window: the
        verifier in bench/hostile.py lost 2 s on many versions. Its backoff goes on growing
        until a transfer from it succeeds."""
        with self._lock:
            s = self.stats.get(url)
            if s is not None and not s.slow:
                s.consecutive_failures = 0
                s.benched_until = 0.0

    def failure(self, url: str, reason: str) -> None:
        with self._lock:
            s = self.stats.get(url)
            if s is not None:
                record_failure(s, self.now(), reason)

    def slow(self, url: str, nbytes: int, seconds: float, reason: str) -> None:
        """`url` was dropped mid-transfer for delivering `nbytes` in `seconds` (too slow)."""
        with self._lock:
            s = self.stats.get(url)
            if s is not None:
                record_slow(s, self.now(), nbytes, seconds, reason)

    def hostile(self, url: str, reason: str) -> None:
        with self._lock:
            s = self.stats.get(url)
            if s is not None:
                record_hostile(s, self.now(), reason)
        if self.on_hostile is not None:
            self.on_hostile(url, reason)  # type: ignore[operator]

    def is_hostile(self, url: str) -> bool:
        with self._lock:
            s = self.stats.get(url)
            return s is not None and self.now() < s.hostile_until

    def usable(self, url: str, now: float | None = None) -> bool:
        """`url` is known, neither benched nor hostile at `now` (default: the clock)."""
        with self._lock:
            s = self.stats.get(url)
            return s is not None and s.usable(self.now() if now is None else now)

    def on_probation(self, url: str) -> bool:
        """`url` has not completed a transfer yet and another source is usable now: its
        transfers get a short first window (shardcast.fetch's `probation_s`)."""
        with self._lock:
            s = self.stats.get(url)
            now = self.now()
            return (s is not None and s.successes == 0
                    and any(o.url != url and o.usable(now) for o in self.stats.values()))

    def next_usable_in(self, exclude: frozenset[str] | set[str] = frozenset()) -> float | None:
        """Seconds until some source outside `exclude` becomes usable again (0 if one is
        usable now; None if every such source is hostile)."""
        with self._lock:
            now = self.now()
            waits = [max(0.0, s.benched_until - now) for s in self.stats.values()
                     if now >= s.hostile_until and s.url not in exclude]
            return min(waits) if waits else None

    def ranked(self) -> list[str]:
        """Sources not known hostile, for one-off requests such as manifests: usable ones
        best first, then benched ones in the order they come back."""
        with self._lock:
            now = self.now()
            usable = [s for s in self.stats.values() if s.usable(now)]
            benched = [s for s in self.stats.values()
                       if now >= s.hostile_until and not s.usable(now)]
            known = [s.throughput_bps for s in usable if s.throughput_bps is not None]
            best = max(known) if known else 1e9
            usable.sort(key=lambda s: expected_seconds(s, best))
            benched.sort(key=lambda s: s.benched_until)
            return [s.url for s in usable + benched]

    def snapshot(self) -> list[SourceStats]:
        with self._lock:
            return [SourceStats(**vars(s)) for s in self.stats.values()]
