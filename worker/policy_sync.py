"""Policy versions on this machine: one background thread downloads, the main loop loads.

`PolicySync` owns the shardcast client (only its thread uses it) and keeps the set of
versions that are fully fetched and verified (`ready`). The main loop says which versions
it wants (`want`, from its leases) and either goes on with a version already ready or waits
(`wait_any`) for one its leases allow. When nothing is wanted, the thread long-polls the
relays for a newer version and prefetches it, so a new version is usually on disk before
the first lease that allows it arrives: it is picked up within the async window without
stalling generation.

A download that fails (relays down, version pruned, corrupt bytes everywhere) is retried
with backoff (`protocol.retry.retry_call`); a version that keeps failing is skipped in favour
of the next one a lease allows. What is remembered as wanted and as failed is bounded
(MAX_TRACKED_VERSIONS each), whatever versions leases name. Pruning old versions from the cache is the shardcast client's job (`keep_versions`);
a version whose folder has gone is simply no longer `ready`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from protocol.errors import ProtocolError, Stopped
from protocol.retry import log_failures, retry_call
from worker.errors import PolicyUnavailable

log = logging.getLogger(__name__)

# Versions remembered as wanted, and as failed, at most (the least recently wanted / the oldest
# failure goes first). Unbounded, a coordinator naming a new far-future version in each lease
# (or a long run) grew both by one per version for the life of the process: a fetch prunes only
# the wants below it. A daemon's leases want a few versions at a time (MAX_FALLBACK_VERSIONS each).
MAX_TRACKED_VERSIONS = 64
POLL_S = 2.0            # long-poll length when idle (also bounds how fast a `want` is noticed)
RETRY_AFTER_FAIL_S = 5.0


class PolicySync:
    def __init__(self, client: Any, stop: threading.Event, *,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 on_newest: Callable[[int], None] | None = None):
        self.client = client
        self.stop = stop
        self.on_progress = on_progress
        self.on_newest = on_newest
        self._cv = threading.Condition()
        self._ready: dict[int, Path] = {}
        self._wanted: dict[int, None] = {}     # an ordered set: least recently wanted first
        self._failed_at: dict[int, float] = {}  # oldest failure first
        self._newest_known: int | None = None
        self._progress: tuple[int, float] | None = None   # (version, time.monotonic()) of the last download progress
        self._thread = threading.Thread(target=self._loop, daemon=True, name="policy-sync")

    # -- main loop side ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._cv.notify_all()
        self._thread.join(timeout)

    def ready(self) -> dict[int, Path]:
        with self._cv:
            for v in [v for v, p in self._ready.items() if not p.exists()]:
                del self._ready[v]  # pruned by the shardcast client's cache policy
            return dict(self._ready)

    def want(self, versions: list[int]) -> None:
        with self._cv:
            new = [v for v in dict.fromkeys(versions) if v not in self._ready]
            if any(v not in self._wanted for v in new):
                self._cv.notify_all()
            self._add_wants(new)

    def _add_wants(self, versions: list[int]) -> None:
        """Want `versions` (again: they become the most recently wanted), within MAX_TRACKED_VERSIONS."""
        for v in versions:
            self._wanted.pop(v, None)
            self._wanted[v] = None
        for v in list(self._wanted)[:max(0, len(self._wanted) - MAX_TRACKED_VERSIONS)]:
            del self._wanted[v]

    def _add_failure(self, version: int) -> None:
        """Note that `version` failed now, within MAX_TRACKED_VERSIONS (oldest failure forgotten first)."""
        self._failed_at.pop(version, None)
        self._failed_at[version] = time.monotonic()
        for v in list(self._failed_at)[:max(0, len(self._failed_at) - MAX_TRACKED_VERSIONS)]:
            del self._failed_at[v]

    def unwant(self, versions: list[int]) -> None:
        """No longer fetch `versions` (their leases were given back)."""
        with self._cv:
            for v in versions:
                self._wanted.pop(v, None)

    def wait_any(self, versions: list[int], deadline: float, give_up_s: float | None = None) -> tuple[int, Path]:
        """Block until one of `versions` is ready (newest preferred) or `deadline` (time.time()).
        `give_up_s`: also give up (PolicyUnavailable) once that long has passed without a download
        of any of them making progress: no relay serves them (a lease for a version no relay will
        ever have, from a hostile or broken coordinator, with a far expiry held the worker's loop
        until it expired). A download that goes on making progress (a verified shard at least every
        `give_up_s`) waits for `deadline`, however slow; one that stopped is given up `give_up_s`
        after its last progress (before, one shard at the start of the wait held it to `deadline`:
        a relay that sent one shard, then trickled the next for ever, held a far lease's worker)."""
        started = time.monotonic()
        self.want(versions[:1] or versions)
        with self._cv:
            while True:
                have = [v for v in versions if v in self._ready]
                if have:
                    v = max(have)
                    return v, self._ready[v]
                if self.stop.is_set():
                    raise Stopped("stopped while waiting for a policy version")
                if versions and all(v in self._failed_at for v in versions) and self._newest_known is not None \
                        and self._newest_known > max(versions):
                    # Every version the caller allows failed, and newer ones are out: they were
                    # pruned everywhere and will not come back (waiting held the leases, and the
                    # worker's loop, until they expired). Not in an outage: nothing newer is known.
                    raise PolicyUnavailable(f"policy versions {versions} could not be fetched and version "
                                            f"{self._newest_known} is out: they are gone")
                left = deadline - time.time()
                if left <= 0:
                    raise PolicyUnavailable(f"none of policy versions {versions} could be fetched in time")
                at = time.monotonic()
                if give_up_s is not None and at - started >= give_up_s and not (
                        self._progress is not None and self._progress[0] in versions
                        and self._progress[1] >= at - give_up_s):
                    raise PolicyUnavailable(f"no download of policy versions {versions} made progress in the last "
                                            f"{give_up_s:.0f} s: no relay serves them")
                # A version that failed recently: ask for the next older one the caller allows.
                for v in versions:
                    if v not in self._ready and v not in self._wanted and v not in self._failed_at:
                        if all(u in self._failed_at for u in versions if u > v):
                            self._add_wants([v])
                            self._cv.notify_all()
                self._cv.wait(min(left, 0.5))

    # -- download thread --------------------------------------------------------------------
    def _next_target(self) -> int | None:
        now = time.monotonic()
        with self._cv:
            todo = [v for v in self._wanted if v not in self._ready
                    and now - self._failed_at.get(v, -1e9) > RETRY_AFTER_FAIL_S]
            return max(todo) if todo else None

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                retry_call(self._round, "policy sync", self.stop, retry_on=(ProtocolError, OSError), cap_s=15.0,
                           on_retry=log_failures(log, "policy sync"))
            except Stopped:
                return

    def _round(self) -> None:
        """Fetch the newest wanted version, or long-poll for a newer one when nothing is wanted.
        A failed fetch is remembered, so the next round may pick an older allowed version.

        The failure of one version sends the thread into `retry_call`'s backoff only when no
        other version is wanted: a version that is gone (pruned at every relay while the worker
        was busy) held the thread in a backoff of up to 15 s, and each round of it went on
        fetching the next gone version, not the one a new lease wanted (bench/hostile.py: a
        victim of the drip relay fetched nothing for a minute). Each failed version waits
        RETRY_AFTER_FAIL_S before it is tried again whatever the backoff."""
        target = self._next_target()
        if target is None:
            self._poll_newest()
            return
        try:
            self._fetch(target)
        except ProtocolError as exc:
            with self._cv:
                self._add_failure(target)
                self._cv.notify_all()
            if self._next_target() is None:
                raise
            log.warning("policy version %d could not be fetched (%s); going on with the next wanted one",
                        target, exc)

    def _poll_newest(self) -> None:
        with self._cv:
            after = max([*self._ready, *([self._newest_known] if self._newest_known is not None else [])],
                        default=None)
        v = self.client.wait_for_version(after, POLL_S)
        if v is not None and (self._newest_known is None or v > self._newest_known):
            self._newest_known = v
            if self.on_newest:
                self.on_newest(v)
            self.want([v])

    def _fetch(self, version: int) -> None:
        started = time.monotonic()
        log.info("fetching policy version %d", version)

        def progress(done_bytes: int, total_bytes: int) -> None:
            self._progress = (version, time.monotonic())
            if self.on_progress:
                self.on_progress(version, done_bytes, total_bytes)

        path = Path(self.client.fetch(version, progress=progress))
        with self._cv:
            self._ready[version] = path
            # A ready version supersedes older wants: the main loop prefers the newest allowed
            # version, and one that still needs an older one asks again through `wait_any`. Kept,
            # they sent the thread after versions the relays had pruned long ago (seen on slow
            # links: tests/integration/test_wan_*, issue 22).
            self._wanted = {v: None for v in self._wanted if v > version}
            self._failed_at.pop(version, None)
            if self._newest_known is None or version > self._newest_known:
                self._newest_known = version
            self._cv.notify_all()
        log.info("policy version %d ready (%.1f s)", version, time.monotonic() - started)

