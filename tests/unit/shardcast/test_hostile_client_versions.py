"""Versions a worker is sent after that no source holds (a lease for version 10**9, a burst of
leases each naming another future version): each failed fetch must leave nothing behind in the
client's cache. A real origin on loopback holds version 0 only."""

from __future__ import annotations

import random

import pytest

from protocol.identity import KeyPair
from shardcast.client import PARTIAL_DIR, ShardcastClient
from shardcast.config import OriginConfig
from shardcast.errors import VersionUnavailable
from shardcast.fetch import FetchOptions
from shardcast.origin import Origin

SHARD = 64 * 1024
QUICK = FetchOptions(parallel=2, shard_wait_s=1.0, read_timeout_s=2.0, manifest_wait_s=0.3, control_timeout_s=1.0)


@pytest.fixture(scope="module")
def op():
    return KeyPair.generate()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, op):
    root = tmp_path_factory.mktemp("origin")
    o = Origin(OriginConfig(data_dir=root / "o", port=0, shard_size=SHARD), op, "run-v")
    o.start()
    ck = root / "ck"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(random.Random(3).randbytes(2 * SHARD))
    o.publish(ck, 0, 0)
    yield o
    o.stop()


def test_fetches_of_versions_nobody_holds_leave_no_file_behind(tmp_path, op, origin):
    """Each fetch of a version no source holds created `.partial/<version>.lock` before asking for
    its manifest, and lock files are never removed: one file per version a (hostile) coordinator's
    leases named, for ever, each listed again by every later fetch's partial-folder prune. A lock
    is now taken only for a version whose signed manifest was found."""
    cache = tmp_path / "cache"
    with ShardcastClient([origin.url], op.public, cache, run_id="run-v", options=QUICK, keep_versions=2) as client:
        for v in range(10**9, 10**9 + 10):
            with pytest.raises(VersionUnavailable):
                client.fetch(v)
        assert sorted(p.name for p in (cache / PARTIAL_DIR).iterdir()) == []
        assert (client.fetch(0) / "model.safetensors").stat().st_size == 2 * SHARD
    assert sorted(p.name for p in (cache / PARTIAL_DIR).iterdir()) == ["0.lock"]
