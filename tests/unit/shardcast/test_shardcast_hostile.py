"""Downloads against hostile relays (tests/hostile/relays.py) on loopback: every request has a
deadline and a byte cap, a relay that drips, stalls, bombs or lies is dropped and ranked down,
and the fetch completes from an honest source. Short limits (FetchOptions) keep this fast."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import tracemalloc

import pytest

from coordinator.dashboard.relays import RelayPoller
from protocol.errors import MessageError
from protocol.identity import KeyPair
from shardcast.client import ShardcastClient
from shardcast.config import OriginConfig
from shardcast.errors import VersionUnavailable
from shardcast.fetch import MISSING_GRACE_S, FetchOptions
from shardcast.origin import Origin
from shardcast.selection import Sources
from shardcast.watch import fetch_manifest, verify_manifest_bytes
from tests.hostile.relays import DripRelay, GzipBombRelay, HeadDripRelay, HostileRelay, LyingRelay, SilentRelay

SHARD = 64 * 1024
QUICK = dict(parallel=2, shard_wait_s=1.0, read_timeout_s=2.0, min_rate_bps=256 * 1024, rate_window_s=1.0,
             manifest_wait_s=2.0, control_timeout_s=2.0)


@pytest.fixture(scope="module")
def op():
    return KeyPair.generate()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, op):
    root = tmp_path_factory.mktemp("origin")
    o = Origin(OriginConfig(data_dir=root / "o", port=0, shard_size=SHARD), op, "run-h")
    o.start()
    ck = root / "ck"
    ck.mkdir()  # whole shards only: a drip relay could deliver a shard of a few bytes in time
    (ck / "model.safetensors").write_bytes(random.Random(7).randbytes(8 * SHARD))
    o.publish(ck, 0, 0)
    yield o
    o.stop()


def fetch_in_time(client: ShardcastClient, version: int, limit_s: float):
    """client.fetch(version) in a thread: (the folder or the error, seconds); fails the test
    instead of hanging when it takes longer than `limit_s`."""
    out: list = []
    t0 = time.monotonic()

    def run() -> None:
        try:
            out.append(client.fetch(version))
        except Exception as exc:  # handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"fetch still running after {limit_s} s"
    return out[0], time.monotonic() - t0


def test_a_drip_relay_is_dropped_and_ranked_down_and_the_fetch_completes_from_the_honest_one(
        tmp_path, op, origin):
    with DripRelay(origin.url, every_s=0.3) as drip:
        c = ShardcastClient([drip.url, origin.url], op.public, tmp_path / "cache", run_id="run-h",
                            options=FetchOptions(**QUICK))
        try:
            got, took = fetch_in_time(c, 0, 30)
            assert not isinstance(got, Exception), got
            assert (got / "model.safetensors").read_bytes() == random.Random(7).randbytes(8 * SHARD)
            assert drip.hits.get("shard", 0) >= 1                       # it was tried ...
            stats = {s.url: s for s in c.sources.snapshot()}
            assert stats[drip.url].failures >= 1 and "below the minimum" in stats[drip.url].last_error
            assert c.sources.ranked()[-1] == drip.url                   # ... and ranked last
            assert took < 15
        finally:
            c.close()


def test_a_drip_relay_tried_first_holds_a_shard_for_its_probation_not_a_whole_rate_window(
        tmp_path, op, origin):
    """Two download threads explore both relays at once, so the drip relay always gets a shard.
    A source that has not completed a transfer, while another is usable, starts with
    `probation_s` of credit: the drip held that shard a whole `rate_window_s` (10 s per client
    in bench/hostile.py) before."""
    opts = FetchOptions(**{**QUICK, "rate_window_s": 10.0, "read_timeout_s": 10.0, "probation_s": 1.0})
    with DripRelay(origin.url, every_s=0.3) as drip:
        c = ShardcastClient([drip.url, origin.url], op.public, tmp_path / "cache", run_id="run-h", options=opts)
        try:
            got, took = fetch_in_time(c, 0, 30)
            assert not isinstance(got, Exception), got
            assert drip.hits.get("shard", 0) == 1
            assert "below the minimum" in {s.url: s for s in c.sources.snapshot()}[drip.url].last_error
            assert took < 5, took
        finally:
            c.close()


def test_a_relay_that_drips_its_error_answers_holds_no_download_and_is_not_explored_again(
        tmp_path, op, origin):
    """A drip relay in front of a source that lacks the version answers each shard request
    404 at once and then drips the 404's body. Draining that body held a download thread 5 s,
    uncharged, and the relay stayed "new", so it took the next shard again (bench/hostile.py)."""
    empty = Origin(OriginConfig(data_dir=tmp_path / "empty", port=0, shard_size=SHARD), op, "run-h")
    empty.start()
    try:
        with DripRelay(empty.url, every_s=1.0) as drip:
            c = ShardcastClient([drip.url, origin.url], op.public, tmp_path / "cache", run_id="run-h",
                                options=FetchOptions(**QUICK))
            try:
                got, took = fetch_in_time(c, 0, 60)
                assert not isinstance(got, Exception), got
                assert drip.hits.get("shard", 0) == 1, drip.hits          # asked once, then avoided
                stats = {s.url: s for s in c.sources.snapshot()}
                assert stats[drip.url].failures >= 1 and "did not arrive" in stats[drip.url].last_error
                assert took < 3, took
            finally:
                c.close()
    finally:
        empty.stop()


@pytest.mark.parametrize("make", [
    lambda origin: SilentRelay(),                        # accepts, never answers
    lambda origin: HeadDripRelay(every_s=0.3),           # a response head, a byte at a time
    lambda origin: DripRelay(origin.url, every_s=0.3, control=True),  # a manifest, a byte at a time
], ids=["silent", "head-drip", "body-drip"])
def test_wait_for_version_returns_in_time_whatever_the_relay_does(tmp_path, op, origin, make):
    with make(origin) as relay:
        c = ShardcastClient([relay.url], op.public, tmp_path / "cache", run_id="run-h")
        try:
            t0 = time.monotonic()
            assert c.wait_for_version(None, timeout_s=3) is None
            assert time.monotonic() - t0 < 5
            assert c.sources.snapshot()[0].failures >= 1      # late: ranked down
        finally:
            c.close()


def test_a_version_a_drip_relay_announces_slowly_still_arrives_from_the_honest_one(tmp_path, op, origin):
    with DripRelay(origin.url, every_s=0.3, control=True) as drip:
        c = ShardcastClient([drip.url, origin.url], op.public, tmp_path / "cache", run_id="run-h")
        try:
            t0 = time.monotonic()
            assert c.wait_for_version(None, timeout_s=3) == 0
            assert time.monotonic() - t0 < 3
        finally:
            c.close()


def test_a_gzip_bomb_is_refused_unread_memory_stays_bounded_and_logs_stay_short(op, caplog):
    caplog.set_level(logging.DEBUG)
    with GzipBombRelay(inflated_mib=256) as bomb:
        sources = Sources([bomb.url])
        tracemalloc.start()
        try:
            with pytest.raises(VersionUnavailable):
                fetch_manifest(sources, op.public, 0, "run-h", timeout_s=5)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert bomb.hits.get("/v1/versions/0/manifest") == 1
        assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB traced while refusing a 256 MiB bomb"
        assert "compressed" in sources.snapshot()[0].last_error
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


class LateRelay(HostileRelay):
    """An honest relay that has not heard of the version yet: its shards are 404 until
    `after_s` from start, then `upstream`'s (a client that learned the version from the swarm
    asks before the relay's mirror holds it)."""

    def __init__(self, upstream: str, after_s: float):
        super().__init__()
        self.upstream, self.ready_at = upstream, time.monotonic() + after_s

    def answer(self, h, kind: str) -> None:
        if kind == "shard" and time.monotonic() < self.ready_at:
            status, headers, body = 404, {}, b'{"detail": "version 0 is not held here"}'
        else:
            status, headers, body = self.upstream_get(self.upstream, h)
        keep = {k: v for k, v in headers.items() if k in ("content-type", "content-range")}
        self.head(h, status, {**keep, "content-length": str(len(body))})
        h.wfile.write(body)


def test_a_relay_still_catching_up_is_asked_again_soon_not_after_a_benched_bombs_backoff(tmp_path, op, origin):
    """The relay that 404s at first holds the version 1 s later; the other source (a gzip
    bomb) is benched for 8 s. The fetch asks the relay again every RECHECK_MISSING_S instead
    of waiting for the bomb's bench to end (it took 8-10 s in bench/hostile.py)."""
    with GzipBombRelay(inflated_mib=16) as bomb, LateRelay(origin.url, after_s=1.0) as late:
        c = ShardcastClient([bomb.url, late.url], op.public, tmp_path / "cache", run_id="run-h",
                            options=FetchOptions(**QUICK))
        try:
            for _ in range(5):
                c.sources.failure(bomb.url, "a refused compressed body")  # benched 0.5 * 2**4 = 8 s
            got, took = fetch_in_time(c, 0, 30)
            assert not isinstance(got, Exception), got
            assert (got / "model.safetensors").read_bytes() == random.Random(7).randbytes(8 * SHARD)
            assert late.hits.get("shard", 0) > 8   # 404s, then the 8 shards
            assert took < 5.0, f"{took:.1f} s: waited for the bomb's bench"
        finally:
            c.close()


def test_a_version_pruned_at_the_only_honest_relay_is_given_up_soon_beside_failing_sources(tmp_path, op, origin):
    """The honest relay answers 404 for good (pruned: a worker that fell behind asks for an old
    version) and the other source fails every transfer (a gzip bomb): the fetch gives up
    (VersionUnavailable, so the caller moves on) MISSING_GRACE_S after the first 404, instead of
    going on until its 16 attempts are spent on the bomb's growing bench (10 s and more)."""
    with GzipBombRelay(inflated_mib=16) as bomb, LateRelay(origin.url, after_s=1e9) as gone:
        c = ShardcastClient([bomb.url, gone.url], op.public, tmp_path / "cache", run_id="run-h",
                            options=FetchOptions(**QUICK))
        try:
            got, took = fetch_in_time(c, 0, 60)
            assert isinstance(got, VersionUnavailable), got
            assert "no source that works holds it" in str(got)
            assert bomb.hits.get("shard", 0) >= 1 and gone.hits.get("shard", 0) >= 1
            assert took < MISSING_GRACE_S + 3.0, f"{took:.1f} s"
        finally:
            c.close()


def test_a_garbage_manifest_is_reported_without_quoting_it():
    with pytest.raises(MessageError) as info:
        verify_manifest_bytes(b'{"kind": "' + b"A" * 5_000_000 + b'"}', KeyPair.generate().public, None)
    assert len(str(info.value)) < 500
    with pytest.raises(MessageError, match="over"):
        verify_manifest_bytes(b" " * (17 * 2**20), KeyPair.generate().public, None)


@pytest.mark.parametrize("mode", ["short", "long", "flip"])
def test_a_relay_that_lies_about_bytes_is_avoided_and_the_fetch_completes(tmp_path, op, origin, mode):
    with LyingRelay(origin.url, mode) as liar:
        c = ShardcastClient([liar.url, origin.url], op.public, tmp_path / "cache", run_id="run-h",
                            options=FetchOptions(**QUICK))
        try:
            got, _ = fetch_in_time(c, 0, 30)
            assert not isinstance(got, Exception), got
            assert liar.hits.get("shard", 0) >= 1
            stats = {s.url: s for s in c.sources.snapshot()}
            assert stats[liar.url].failures >= 1
            if mode == "flip":
                assert c.sources.is_hostile(liar.url)
        finally:
            c.close()


def test_the_dashboard_poll_of_hostile_relays_is_bounded_in_time_memory_and_words(origin):
    relays = [GzipBombRelay(inflated_mib=256).start(), HeadDripRelay(every_s=0.3).start(), SilentRelay().start()]
    try:
        poller = RelayPoller([r.url for r in relays] + [origin.url], timeout_s=1.0)
        tracemalloc.start()
        try:
            t0 = time.monotonic()
            states = {s["url"]: s for s in asyncio.run(poller.refresh())}
            took = time.monotonic() - t0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert took < 2.5
        assert peak < 16 * 2**20
        assert states[origin.url]["reachable"] and states[origin.url]["complete"] == [0]
        for r in relays:
            s = states[r.url]
            assert not s["reachable"] and 0 < len(s["error"]) <= 300
        assert "compressed" in states[relays[0].url]["error"]
        t1 = time.monotonic()
        asyncio.run(poller.refresh())  # within min_interval_s: the states kept, nobody asked
        assert time.monotonic() - t1 < 0.1 and relays[0].hits.get("/v1/versions") == 1
    finally:
        for r in relays:
            r.stop()


def test_long_polls_that_run_to_the_deadline_are_no_failure_of_an_honest_source(tmp_path, op, origin):
    c = ShardcastClient([origin.url], op.public, tmp_path / "cache", run_id="run-h")
    try:
        for timeout_s in (0.5, 1.0, 2.0):
            assert c.wait_for_version(0, timeout_s=timeout_s) is None   # nothing newer than 0
        (stats,) = c.sources.snapshot()
        assert stats.failures == 0 and stats.benched_until == 0.0
    finally:
        c.close()
