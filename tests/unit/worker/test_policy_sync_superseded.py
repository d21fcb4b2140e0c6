"""PolicySync drops wants that a newer ready version superseded (found on the simulated internet,
issue 22: a worker on a slow link finished version 13, then spent its download thread on
version 2, which a lease had wanted long before and the relays had already pruned). A caller
that still needs the older version asks again through `wait_any`, which still fetches it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from protocol.errors import ProtocolError
from worker.policy_sync import PolicySync


class FakeClient:
    """A shardcast client's two calls. Holds the versions `held` accepts (by default >= 10, older
    ones pruned, and 5); each fetch waits for `gate` (set by the test; already set with
    `gated=False`), then `delay_s`; the long-poll reports `newest` once (None: nothing new)."""

    def __init__(self, root: Path, held=lambda v: v >= 10 or v == 5, delay_s: float = 0.0,
                 newest: int | None = None, gated: bool = True):
        self.root, self.held, self.delay_s, self.newest = root, held, delay_s, newest
        self.calls: list[int] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def fetch(self, version: int, progress=None) -> Path:
        self.calls.append(version)
        self.gate.wait(5)
        time.sleep(self.delay_s)
        if not self.held(version):
            raise ProtocolError(f"no source holds version {version}")
        d = self.root / str(version)
        d.mkdir(exist_ok=True)
        return d

    def wait_for_version(self, after, timeout_s):
        time.sleep(0.05)
        if self.newest is not None and (after is None or after < self.newest):
            return self.newest
        return None


def test_a_newer_ready_version_supersedes_older_wants_and_an_old_one_is_still_fetched_on_demand(tmp_path):
    client = FakeClient(tmp_path)
    stop = threading.Event()
    sync = PolicySync(client, stop)
    sync.want([13])
    sync.want([2])           # a lease's version from long ago, still wanted
    sync.start()
    try:
        client.gate.set()
        deadline = time.time() + 5
        while 13 not in sync.ready() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)      # room for the download thread to pick a next target
        assert client.calls == [13]
        # A lease that allows only older versions still gets one.
        assert sync.wait_any([5, 4], time.time() + 5)[0] == 5
        assert client.calls == [13, 5]
    finally:
        stop.set()
        sync.join(5)


def gone_client(root: Path, newest: int | None = None) -> FakeClient:
    """Versions below 20 are gone everywhere (each failed fetch takes 0.1 s); 20 and up are held."""
    return FakeClient(root, held=lambda v: v >= 20, delay_s=0.1, newest=newest, gated=False)


def test_a_version_gone_everywhere_does_not_hold_the_thread_back_from_a_newer_want(tmp_path):
    """Four gone versions wanted, then a new lease's version: it is fetched at once, not after
    the retry backoff that four failures in a row would have started (0.5 s doubling, up to
    15 s: about 4 s after the fourth; the old code waited it)."""
    client = gone_client(tmp_path)
    stop = threading.Event()
    sync = PolicySync(client, stop)
    for v in (14, 13, 12, 11):
        sync.want([v])
    sync.start()
    try:
        deadline = time.time() + 10
        while len(client.calls) < 4 and time.time() < deadline:
            time.sleep(0.01)
        assert client.calls[:4] == [14, 13, 12, 11]
        t0 = time.monotonic()
        sync.want([25])
        assert sync.wait_any([25], time.time() + 20)[0] == 25
        assert time.monotonic() - t0 < 1.5, "the new want waited for a backoff"
        assert all(client.calls.count(v) == 1 for v in (14, 13, 12, 11))  # each retried only after 5 s
    finally:
        stop.set()
        sync.join(5)


def test_leases_that_allow_only_gone_versions_are_given_up_once_a_newer_version_is_known(tmp_path):
    """Every version the leases allow failed and version 25 is out: `wait_any` raises at once
    (the worker gives the leases back) instead of waiting for their deadline; without a newer
    version known (relays down) it waits as before."""
    from worker.errors import PolicyUnavailable

    stop = threading.Event()
    sync = PolicySync(gone_client(tmp_path, newest=25), stop)
    sync.start()
    try:
        t0 = time.monotonic()
        try:
            sync.wait_any([12, 11], time.time() + 30)
            raise AssertionError("wait_any returned a gone version")
        except PolicyUnavailable as exc:
            assert "gone" in str(exc)
        assert time.monotonic() - t0 < 10, "waited for the deadline"
    finally:
        stop.set()
        sync.join(5)
    stop = threading.Event()
    sync = PolicySync(gone_client(tmp_path), stop)   # nothing newer known: waits until the deadline
    sync.start()
    try:
        t0 = time.monotonic()
        try:
            sync.wait_any([12, 11], time.time() + 2)
        except PolicyUnavailable as exc:
            assert "in time" in str(exc)
        assert time.monotonic() - t0 >= 1.9
    finally:
        stop.set()
        sync.join(5)


def test_no_allowed_version_waits_for_the_deadline_and_does_not_crash(tmp_path):
    """An empty list (no version allowed) ends as PolicyUnavailable at the deadline, as before
    the gone-version rule (which must not take max() of nothing)."""
    from worker.errors import PolicyUnavailable

    stop = threading.Event()
    sync = PolicySync(gone_client(tmp_path, newest=25), stop)
    sync.start()
    try:
        try:
            sync.wait_any([], time.time() + 1)
            raise AssertionError("wait_any returned without a version")
        except PolicyUnavailable as exc:
            assert "in time" in str(exc)
    finally:
        stop.set()
        sync.join(5)


def test_wanted_and_failed_versions_stay_bounded_however_many_versions_leases_name(tmp_path):
    """A hostile coordinator names a new far-future version in every lease (or a long run asks
    for many): each was added to the wanted set and, once it failed, to the failed set, and
    neither was ever pruned above every fetched version (a fetch drops only older wants): both
    grew by one per version named, for the life of the process. Now both are bounded
    (MAX_TRACKED_VERSIONS, the least recently wanted / oldest failure goes first), and what
    the newest leases want is still fetched."""
    from worker.policy_sync import MAX_TRACKED_VERSIONS

    client = FakeClient(tmp_path, held=lambda v: v < 1000, gated=False)
    stop = threading.Event()
    sync = PolicySync(client, stop)
    sync.start()
    try:
        for v in range(10**6, 10**6 + 2000):
            sync.want([v])
            assert len(sync._wanted) <= MAX_TRACKED_VERSIONS and len(sync._failed_at) <= MAX_TRACKED_VERSIONS
        for v in range(2 * 10**6, 2 * 10**6 + 3 * MAX_TRACKED_VERSIONS):   # each tried and failed
            sync.want([v])
            deadline = time.time() + 5
            while v not in client.calls and time.time() < deadline:
                time.sleep(0.002)
        time.sleep(0.2)
        assert len(set(client.calls)) > 3 * MAX_TRACKED_VERSIONS   # more versions failed than are remembered
        assert len(sync._wanted) <= MAX_TRACKED_VERSIONS and len(sync._failed_at) <= MAX_TRACKED_VERSIONS
        sync.want([7])
        assert sync.wait_any([7], time.time() + 10)[0] == 7
    finally:
        stop.set()
        sync.join(5)


class SlowClient(FakeClient):
    """Version 3 downloads in 2 s, reporting progress every 0.1 s; the others do not exist."""

    def fetch(self, version: int, progress=None) -> Path:
        self.calls.append(version)
        if version != 3:
            raise ProtocolError(f"no source holds version {version}")
        for i in range(20):
            time.sleep(0.1)
            if progress:
                progress(i + 1, 20)
        d = self.root / "3"
        d.mkdir(exist_ok=True)
        return d


def test_a_wait_gives_up_when_no_download_starts_but_not_while_one_makes_progress(tmp_path):
    """`give_up_s` bounds a wait in which no version asked for makes download progress (a version
    no relay serves: before, the wait lasted until the deadline, a hostile lease's expiry); a
    slow download that keeps making progress is waited for past it, up to the deadline."""
    from worker.errors import PolicyUnavailable

    stop = threading.Event()
    sync = PolicySync(SlowClient(tmp_path, gated=False), stop)
    sync.start()
    try:
        t0 = time.monotonic()
        try:
            sync.wait_any([10**9], time.time() + 3600, give_up_s=0.5)
            raise AssertionError("wait_any returned a version no relay serves")
        except PolicyUnavailable as exc:
            assert "no relay serves" in str(exc)
        assert time.monotonic() - t0 < 3
        sync.unwant([10**9])
        assert sync.wait_any([3], time.time() + 30, give_up_s=0.5)[0] == 3   # 2 s of progress
    finally:
        stop.set()
        sync.join(5)


class TrickleClient(FakeClient):
    """Version 4 at a relay that sends one verified shard, then trickles the next one for ever
    (fast enough for no transfer timeout, never finished): one progress report, then none."""

    def __init__(self, root: Path, stop: threading.Event):
        super().__init__(root, gated=False)
        self.stop = stop

    def fetch(self, version: int, progress=None) -> Path:
        self.calls.append(version)
        if version != 4:
            raise ProtocolError(f"no source holds version {version}")
        if progress:
            progress(1, 20)
        self.stop.wait(30)
        raise ProtocolError("stopped")


def test_a_wait_gives_up_once_progress_stops_for_give_up_s(tmp_path):
    """One progress report at the start of a wait held it to the deadline (a hostile lease's
    expiry, a day): any progress since the wait began counted, however long ago. `give_up_s`
    now counts from the last progress: a download that stopped making progress for that long
    is given up like one that never started."""
    from worker.errors import PolicyUnavailable

    stop = threading.Event()
    sync = PolicySync(TrickleClient(tmp_path, stop), stop)
    sync.start()
    try:
        t0 = time.monotonic()
        try:
            sync.wait_any([4], time.time() + 8, give_up_s=0.5)
            raise AssertionError("wait_any returned a version that never finished")
        except PolicyUnavailable as exc:
            waited = time.monotonic() - t0
            assert waited < 4, f"waited {waited:.1f} s for a download that stopped making progress ({exc})"
    finally:
        stop.set()
        sync.join(5)
