"""Red-team findings on the time one hostile relay can cost a shardcast client or relay per
round of learning versions (real servers on 127.0.0.1; each test failed before its fix):

- a relay that answers every long-poll at once with the next genuine (signed) version walked a
  client forward one version per call, while a farther honest relay already announced the
  newest: `wait_for_newer` returned the first newer manifest it verified, not the newest;
- a relay ranked first in a relay's catch-up that lists made-up versions and drips its
  manifest answers held the catch-up (and so the relay's long-poll watch) up to ~45 s a round.
"""

from __future__ import annotations

import random
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from protocol.identity import KeyPair
from shardcast.config import OriginConfig
from shardcast.origin import Origin
from shardcast.selection import Sources
from shardcast.watch import wait_for_newer
from tests.hostile.relays import HostileRelay

RUN = "run-rounds"
SHARD = 4096


@pytest.fixture(scope="module")
def op():
    return KeyPair.generate()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, op):
    """An origin holding versions 0..3 (all kept)."""
    root = tmp_path_factory.mktemp("origin")
    o = Origin(OriginConfig(data_dir=root / "o", port=0, shard_size=SHARD, keep_versions=8), op, RUN)
    o.start()
    rng = random.Random(11)
    for v in range(4):
        ck = root / f"ck{v}"
        ck.mkdir()
        (ck / "w.bin").write_bytes(rng.randbytes(2 * SHARD))
        o.publish(ck, v, v)
    yield o
    o.stop()


class DelayedRelay(HostileRelay):
    """An honest relay farther away: `upstream`'s answers, each `delay_s` late."""

    def __init__(self, upstream: str, delay_s: float):
        super().__init__()
        self.upstream, self.delay_s = upstream, delay_s

    def answer(self, h, kind: str) -> None:
        if self.stopped.wait(self.delay_s):
            return
        status, headers, body = self.upstream_get(self.upstream, h)
        self.head(h, status, {"content-type": headers.get("content-type", "application/json"),
                              "content-length": str(len(body))})
        h.wfile.write(body)


class WalkingRelay(HostileRelay):
    """Answers a long-poll for versions > N at once with the genuine manifest of N + 1 (taken
    from `upstream`), whatever newer versions exist: it walks its clients forward one
    version at a time."""

    def __init__(self, upstream: str):
        super().__init__()
        self.upstream = upstream

    def answer(self, h, kind: str) -> None:
        if kind == "/v1/versions/latest":
            after = int(parse_qs(urlsplit(h.path).query).get("after", ["-1"])[0])
            h.path = f"/v1/versions/{after + 1}/manifest"
        status, _headers, body = self.upstream_get(self.upstream, h)
        self.head(h, status, {"content-type": "application/json", "content-length": str(len(body))})
        h.wfile.write(body)


def test_a_fast_relay_cannot_walk_a_client_forward_one_genuine_version_at_a_time(op, origin):
    with WalkingRelay(origin.url) as walk, DelayedRelay(origin.url, 0.15) as far:
        sources = Sources([walk.url, far.url])
        t0 = time.monotonic()
        found = wait_for_newer(sources, op.public, 0, 5.0, RUN)
        took = time.monotonic() - t0
        assert found is not None
        assert found.version == 3, f"moved to version {found.version} (from {found.source}), not the newest, 3"
        assert took < 2.0, f"took {took:.1f} s"
        # the newest from the start, too (a client that holds nothing yet)
        assert wait_for_newer(sources, op.public, None, 5.0, RUN).version == 3


def test_waiting_for_the_newest_costs_nothing_when_every_usable_source_answered(op, origin):
    """The settle window ends as soon as no usable source is left to answer (a dead one is
    benched by its first refused poll, and not waited for)."""
    for urls in ([origin.url], [origin.url, "http://127.0.0.1:9"]):
        sources = Sources(urls)
        t0 = time.monotonic()
        assert wait_for_newer(sources, op.public, 1, 5.0, RUN).version == 3
        assert time.monotonic() - t0 < 0.4, urls
