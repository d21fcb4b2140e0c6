"""Pure pieces of shardcast: range parsing, source selection, pruning, the signal."""

import asyncio
import random
import threading

import pytest

from shardcast.layout import versions_to_prune
from shardcast.selection import (
    SourceStats, Sources, choose, record_failure, record_hostile, record_slow, record_success,
)
from shardcast.serving import RangeNotSatisfiable, parse_range
from shardcast.signal import Signal


def test_parse_range_forms():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=10-", 100) == (10, 100)
    assert parse_range("bytes=10-19", 100) == (10, 20)
    assert parse_range("bytes=90-500", 100) == (90, 100)
    assert parse_range("bytes=-5", 100) == (95, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None      # several ranges: whole resource
    assert parse_range("items=0-1", 100) is None
    assert parse_range("bytes=abc", 100) is None
    for bad in ("bytes=100-", "bytes=50-40", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad, 100)


def test_choose_tries_unmeasured_sources_first_then_the_fastest():
    rng = random.Random(0)
    a, b = SourceStats("a"), SourceStats("b")
    record_success(a, 10_000_000, 1.0)           # 10 MB/s measured
    assert choose([a, b], 0.0, rng) is b        # b never tried: explore it
    record_success(b, 10_000_000, 0.1)           # 100 MB/s
    assert choose([a, b], 0.0, rng) is b
    b.inflight = 20                              # b is busy: a finishes one more shard sooner
    assert choose([a, b], 0.0, rng) is a


def test_a_dripping_source_does_not_make_a_busy_unmeasured_one_look_as_slow():
    """A relay dropped for dripping is measured at the rate it managed (0.5 B/s); an honest
    relay that served only small shards (never measured) and has a transfer running must
    still get the next shard, also once a long-poll answer has ended the drip's bench."""
    rng = random.Random(0)
    honest, drip = SourceStats("honest"), SourceStats("drip")
    for _ in range(4):
        record_success(honest, 1000, 0.01)          # shards under 64 KiB: no rate measured
    record_slow(drip, 0.0, 5, 10.0, "sent 5 bytes in 10 s")
    drip.benched_until, drip.consecutive_failures = 0.0, 0   # Sources.alive after a long-poll
    honest.inflight = 1
    assert all(choose([honest, drip], 100.0, rng) is honest for _ in range(50))
    honest.inflight = 3
    assert choose([honest, drip], 100.0, rng) is honest


def test_a_source_that_failed_is_not_explored_again_when_its_bench_ends():
    """A relay that never completes a transfer (a gzip bomb's refused answers, a drip relay's
    dripped 404s) stays unmeasured; it must not count as new, and take the next shard before
    the honest relay, each time its bench ends."""
    rng = random.Random(0)
    honest, bomb = SourceStats("honest"), SourceStats("bomb")
    record_success(honest, 1_000_000, 0.1)               # 10 MB/s
    record_failure(bomb, 0.0, "announced 262144 bytes for the 65536 left of shard 0")
    assert all(choose([bomb, honest], 100.0, rng) is honest for _ in range(50))   # bench over
    record_failure(honest, 100.0, "connection reset")    # only when the honest one is benched
    assert choose([bomb, honest], 100.1, rng) is bomb


def test_failures_bench_a_source_with_backoff_and_success_clears_it():
    s = SourceStats("a")
    record_failure(s, 100.0, "boom")
    assert not s.usable(100.2) and s.usable(100.6)
    record_failure(s, 100.6, "boom")
    assert not s.usable(101.5) and s.usable(101.7)
    record_success(s, 1, 0.1)
    assert s.usable(0.0) and s.consecutive_failures == 0


def test_hostile_source_is_never_chosen_while_others_exist():
    rng = random.Random(1)
    good, bad = SourceStats("good"), SourceStats("bad")
    record_hostile(bad, 0.0, "corrupt shard")
    assert all(choose([good, bad], 1.0, rng) is good for _ in range(50))
    assert choose([bad], 1.0, rng) is None
    assert choose([good, bad], 1.0, rng, exclude={"good"}) is None


def test_sources_count_inflight_and_report_when_usable_again():
    t = [0.0]
    src = Sources(["http://a/", "http://b"], rng=random.Random(0), clock=lambda: t[0])
    assert src.urls == ["http://a", "http://b"]
    u = src.acquire()
    assert src.stats[u].inflight == 1
    src.done(u)
    src.failure("http://a", "x")
    src.hostile("http://b", "y")
    assert src.acquire() is None
    assert src.next_usable_in() == pytest.approx(0.5)
    assert src.next_usable_in(exclude={"http://a"}) is None
    t[0] = 1.0
    assert src.acquire() == "http://a"


def test_versions_to_prune_keeps_the_newest():
    assert versions_to_prune([3, 1, 2, 5], 2) == [1, 2]
    assert versions_to_prune([1, 2], 3) == []
    assert versions_to_prune([1, 2], None) == []


def test_signal_wakes_an_async_waiter_from_another_thread():
    sig = Signal()

    async def main():
        seen = sig.generation
        threading.Timer(0.05, sig.notify).start()
        return await sig.wait(seen, 5.0)

    assert asyncio.run(main()) is True

    async def missed():
        seen = sig.generation
        sig.notify()                     # happened between check and wait: not lost
        return await sig.wait(seen, 0.0)

    assert asyncio.run(missed()) is True

    async def nothing():
        return await sig.wait(sig.generation, 0.05)

    assert asyncio.run(nothing()) is False


def test_a_signed_manifest_with_hidden_paths_is_refused(tmp_path):
    from protocol.errors import MessageError
    from protocol.identity import KeyPair
    from protocol.manifest import build_manifest, sign_manifest
    from shardcast.watch import verify_manifest_bytes

    op = KeyPair.generate()
    (tmp_path / "config.json").write_text("{}")
    m = build_manifest(tmp_path, run_id="r", version=0, step=0, shard_size=1024)
    bad = m.model_copy(update={
        "files": [m.files[0].model_copy(update={"path": ".manifest.json"})],
        "shards": [m.shards[0].model_copy(update={"path": ".manifest.json"})]})
    with pytest.raises(MessageError, match="hidden"):
        verify_manifest_bytes(sign_manifest(bad, op).model_dump_json().encode(), op.public, None)
    env, got = verify_manifest_bytes(sign_manifest(m, op).model_dump_json().encode(), op.public, "r")
    assert got == m


def test_an_unvouched_source_is_not_explored_and_gets_shards_only_when_nothing_else_is_usable():
    """Relays only an unendorsed libp2p advert names cost an attacker nothing to make: they are
    not explored with a shard (a drip relay held each one for a whole rate window) and serve
    only as the last resort; once one completes a transfer it ranks by what it delivered."""
    rng = random.Random(2)
    honest = SourceStats("honest")
    learned = [SourceStats(f"advert-{i}", vouched=False) for i in range(8)]
    assert all(choose([*learned, honest], 0.0, rng) is honest for _ in range(50))
    record_success(honest, 1000, 0.01)          # honest served small shards: still unmeasured
    honest.inflight = 3
    assert all(choose([*learned, honest], 0.0, rng) is honest for _ in range(50))
    record_failure(honest, 0.0, "connection refused")      # benched: the learned ones fill in
    assert choose([*learned, honest], 0.1, rng) in learned
    record_success(learned[0], 10_000_000, 0.1)            # proven at 100 MB/s: ranks as measured
    honest.benched_until, honest.inflight = 0.0, 0
    record_success(honest, 1_000_000, 1.0)                 # 1 MB/s
    assert choose([*learned, honest], 0.0, rng) is learned[0]
    s = Sources(["configured"])
    assert s.add("http://advert", vouched=False) and not s.stats["http://advert"].vouched


def test_a_long_poll_answer_does_not_end_the_bench_of_a_source_dropped_as_too_slow():
    """A drip relay answers long-polls at once; un-benched by each answer, it was usable again
    whenever the honest relay did not hold a new version yet. Its backoff goes on growing until
    a transfer from it succeeds; a source that merely failed is still un-benched by an answer."""
    t = [0.0]
    src = Sources(["honest", "drip"], rng=random.Random(0), clock=lambda: t[0])
    src.slow("drip", 2, 2.0, "sent 2 bytes in 2.0 s")
    src.alive("drip")
    assert not src.stats["drip"].usable(0.1)
    t[0] = 1.0
    src.slow("drip", 1, 2.0, "sent 1 byte in 2.0 s")    # the second drop: benched longer
    src.alive("drip")
    assert not src.stats["drip"].usable(1.9) and src.stats["drip"].usable(2.1)
    src.success("drip", 1_000_000, 0.1)                  # a transfer that succeeds clears it
    src.failure("drip", "connection reset")
    src.alive("drip")
    assert src.stats["drip"].usable(t[0])
    src.failure("honest", "connection reset")
    src.alive("honest")
    assert src.stats["honest"].usable(t[0])
