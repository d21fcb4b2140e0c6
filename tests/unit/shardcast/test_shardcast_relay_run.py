"""A relay serves one run: the configured one, else the first it holds. Manifests of another run,
even signed by the same operator key, are neither mirrored nor served. In-process relays
mirroring in-process origins over loopback HTTP."""

from __future__ import annotations

import time

import pytest

from protocol.identity import KeyPair
from shardcast.config import OriginConfig, RelayConfig
from shardcast.origin import Origin
from shardcast.relay import Relay


@pytest.fixture
def op():
    return KeyPair.generate()


def origin_of(tmp_path, op, run_id: str, version: int) -> Origin:
    o = Origin(OriginConfig(data_dir=tmp_path / f"origin-{run_id}", port=0, shard_size=4096), op, run_id)
    o.start()
    ck = tmp_path / f"ck-{run_id}"
    ck.mkdir()
    (ck / "config.json").write_text('{"run": "%s"}' % run_id)
    (ck / "w.bin").write_bytes(bytes(range(256)) * 40)
    o.publish(ck, version, version)
    return o


def relay_of(tmp_path, op, upstream: str, run_id: str = "") -> Relay:
    r = Relay(RelayConfig(upstreams=[upstream], operator_key=op.public.hex, port=0, data_dir=tmp_path / "relay",
                          run_id=run_id))
    r.start()
    return r


def wait(cond, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_relay_for_run_a_does_not_mirror_run_b_and_avoids_the_upstream_that_offers_it(tmp_path, op):
    b = origin_of(tmp_path, op, "run-b", 3)
    relay = relay_of(tmp_path, op, b.url, run_id="run-a")
    try:
        assert wait(lambda: relay.sources.is_hostile(b.url))
        assert relay.versions() == [] and relay.manifest_bytes(3) is None
    finally:
        relay.stop()
        b.stop()


def test_a_relay_without_a_run_pins_the_first_it_holds_across_restarts(tmp_path, op):
    a = origin_of(tmp_path, op, "run-a", 0)
    relay = relay_of(tmp_path, op, a.url)
    try:
        assert wait(lambda: relay.complete_versions() == [0])
        assert relay.run_id == "run-a"
    finally:
        relay.stop()
        a.stop()
    b = origin_of(tmp_path, op, "run-b", 5)     # a newer version number, same operator key
    again = relay_of(tmp_path, op, b.url)       # restarted on the same data_dir
    try:
        assert again.run_id == "run-a" and again.versions() == [0]
        assert wait(lambda: again.sources.is_hostile(b.url))
        assert again.versions() == [0] and again.manifest_bytes(5) is None
    finally:
        again.stop()
        b.stop()
