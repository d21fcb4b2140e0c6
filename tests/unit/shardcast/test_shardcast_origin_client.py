"""Origin publishing rules, the parallel manifest builder, partial downloads and the client
cache, against an in-process origin served over real HTTP on loopback."""

import os
import random
import threading
import time

import pytest

from protocol.errors import SignatureError
from protocol.identity import KeyPair
from protocol.manifest import build_manifest
from shardcast.client import ShardcastClient
from shardcast.config import OriginConfig
from shardcast.fetch import FetchOptions
from shardcast.errors import CorruptData, PublishError, ShardcastError, VersionUnavailable
from shardcast.hashing import build_manifest_parallel
from shardcast.origin import Origin
from shardcast.partial import PartialCheckpoint

SHARD = 4096


def ckpt(folder, size=5 * SHARD + 17, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"x": %d}' % seed)
    (folder / "model.safetensors").write_bytes(random.Random(seed).randbytes(size))
    (folder / "empty.bin").write_bytes(b"")
    (folder / ".hidden").write_text("never published")
    (folder / "nested").mkdir(exist_ok=True)
    (folder / "nested" / "t.json").write_text("{}")
    return folder


@pytest.fixture
def op():
    return KeyPair.generate()


@pytest.fixture
def origin(tmp_path, op):
    cfg = OriginConfig(data_dir=tmp_path / "o", port=0, shard_size=SHARD, keep_versions=2)
    o = Origin(cfg, op, "r")
    o.start()
    yield o
    o.stop()


def test_parallel_manifest_equals_the_protocol_builder(tmp_path):
    d = ckpt(tmp_path / "c")
    a = build_manifest(d, run_id="r", version=1, step=2, shard_size=SHARD, created_at=5.0)
    b = build_manifest_parallel(d, run_id="r", version=1, step=2, shard_size=SHARD, created_at=5.0)
    assert a == b
    assert any(s.size == 0 for s in b.shards)          # the empty file has one empty shard


def test_publish_links_files_signs_and_refuses_bad_versions(tmp_path, origin, op):
    d = ckpt(tmp_path / "c")
    env = origin.publish(d, 3, 7)
    folder = tmp_path / "o" / "versions" / "3"
    assert (folder / ".manifest.json").exists() and not (folder / ".hidden").exists()
    assert os.stat(folder / "model.safetensors").st_ino == os.stat(d / "model.safetensors").st_ino
    assert env.signer == op.public.hex and env.body["version"] == 3 and env.body["step"] == 7
    with pytest.raises(PublishError, match="older"):
        origin.publish(d, 2, 7)
    with pytest.raises(PublishError, match="does not exist"):
        origin.publish(tmp_path / "missing", 4, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PublishError, match="no files"):
        origin.publish(tmp_path / "empty", 4, 0)
    assert not [p for p in (tmp_path / "o" / "versions").iterdir() if p.name.startswith(".")]
    assert origin.versions() == [3]


def test_client_fetches_verifies_and_assembles_atomically(tmp_path, origin, op):
    d = ckpt(tmp_path / "c")
    origin.publish(d, 0, 0)
    with ShardcastClient([origin.url], op.public.hex, tmp_path / "cache", run_id="r",
                         options=FetchOptions(manifest_wait_s=1.0)) as c:
        assert c.wait_for_version(None, 5) == 0
        assert c.wait_for_version(0, 0.3) is None        # nothing newer: the long-poll times out
        path = c.fetch(0)
        for rel in ("config.json", "model.safetensors", "empty.bin", "nested/t.json"):
            assert (path / rel).read_bytes() == (d / rel).read_bytes()
        assert not (path / ".verified").exists()
        assert c.cached_versions() == [0]
        with pytest.raises(VersionUnavailable):
            c.fetch(9)
        assert not (tmp_path / "cache" / "9").exists()


def test_fetch_waits_for_a_version_its_sources_learn_of_shortly(tmp_path, origin, op):
    origin.publish(ckpt(tmp_path / "c0"), 0, 0)
    # the worker heard of version 1 from the coordinator before its source has it
    threading.Timer(0.5, lambda: origin.publish(ckpt(tmp_path / "c1", seed=1), 1, 1)).start()
    with ShardcastClient([origin.url], op.public, tmp_path / "cache",
                         options=FetchOptions(manifest_wait_s=60)) as c:
        assert (c.fetch(1) / "config.json").read_text() == '{"x": 1}'
        origin.publish(ckpt(tmp_path / "c2", seed=2), 2, 2)     # keep 2: version 0 is pruned
        with pytest.raises(VersionUnavailable):  # sources hold newer versions: gives up early
            c.fetch(0)
        with pytest.raises(VersionUnavailable):
            c.fetch(-1)
        assert c.cached_versions() == [1]


def test_client_refuses_a_manifest_of_another_run(tmp_path, origin, op):
    origin.publish(ckpt(tmp_path / "c"), 0, 0)
    with ShardcastClient([origin.url], op.public, tmp_path / "cache", run_id="other-run") as c:
        with pytest.raises(VersionUnavailable):
            c.fetch(0)
        assert c.sources.is_hostile(origin.url)


def test_client_with_wrong_operator_key_never_accepts_anything(tmp_path, origin):
    origin.publish(ckpt(tmp_path / "c"), 0, 0)
    with ShardcastClient([origin.url], KeyPair.generate().public, tmp_path / "cache") as c:
        assert c.wait_for_version(None, 1.0) is None
        with pytest.raises(ShardcastError):
            c.fetch(0)
    assert not (tmp_path / "cache" / "0").exists()


def test_client_keeps_only_newest_versions_when_asked(tmp_path, origin, op):
    with ShardcastClient([origin.url], op.public, tmp_path / "cache", keep_versions=1) as c:
        for v in range(2):
            origin.publish(ckpt(tmp_path / f"c{v}", seed=v), v, v)
            c.fetch(v)
        assert c.cached_versions() == [0, 1]     # 0 was handed out a moment ago: spared
        old = time.time() - 3600
        os.utime(tmp_path / "cache" / "0", (old, old))
        origin.publish(ckpt(tmp_path / "c2", seed=2), 2, 2)
        c.fetch(2)
        assert c.cached_versions() == [1, 2]
        for v in (3, 4):                         # versions every moment: all handed out recently,
            origin.publish(ckpt(tmp_path / f"c{v}", seed=v), v, v)
            c.fetch(v)
        assert c.cached_versions() == [3, 4]     # but at most keep_versions of them are spared
        # The one spared is the one written last, not the newest: a worker whose leases allow
        # only an older version fetches it after newer ones and must still find it to load it.
        now = time.time()
        os.utime(tmp_path / "cache" / "3", (now, now))
        os.utime(tmp_path / "cache" / "4", (now - 10, now - 10))
        origin.publish(ckpt(tmp_path / "c5", seed=5), 5, 5)
        c.fetch(5)
        assert c.cached_versions() == [3, 5]


def test_partial_resume_rehashes_logged_shards_and_whole_files(tmp_path, origin, op):
    d = ckpt(tmp_path / "c")
    env = origin.publish(d, 0, 0)
    m = origin._versions[0].manifest
    folder = tmp_path / "partial"
    folder.mkdir()
    p = PartialCheckpoint(folder, m)
    data = {f.path: (d / f.path).read_bytes() for f in m.files}
    for s in m.shards[:4]:                      # "download" four shards, then crash
        fd, base = p.begin(s)
        os.pwrite(fd, data[s.path][s.offset:s.offset + s.size], base)
        p.commit(s)
    p.close()
    weights = [s for s in m.shards[:4] if s.path == "model.safetensors"]
    with open(folder / "model.safetensors", "r+b") as fh:   # a torn write in one of them
        fh.seek(weights[0].offset)
        fh.write(b"\xff" * 8)
    p2 = PartialCheckpoint(folder, m)
    todo = p2.resume()
    done = {s.index for s in m.shards} - {s.index for s in todo}
    assert weights[0].index not in done and len(done) >= 3
    for s in todo:
        fd, base = p2.begin(s)
        os.pwrite(fd, data[s.path][s.offset:s.offset + s.size], base)
        p2.commit(s)
    p2.finish(durable=False)
    assert env.body["version"] == 0


def test_whole_file_check_catches_bytes_changed_after_their_shard_verified(tmp_path, origin, op):
    d = ckpt(tmp_path / "c")
    origin.publish(d, 0, 0)
    m = origin._versions[0].manifest
    folder = tmp_path / "partial"
    folder.mkdir()
    p = PartialCheckpoint(folder, m)
    data = {f.path: (d / f.path).read_bytes() for f in m.files}
    # the last weight shard arrives first; it is hashed into the file only once the shards
    # before it are in place, so a change in between must be caught
    victim = max((s for s in m.shards if s.path == "model.safetensors"), key=lambda s: s.index)
    for s in sorted(m.shards, key=lambda s: -s.index):  # out of order, like parallel downloads
        fd, base = p.begin(s)
        os.pwrite(fd, data[s.path][s.offset:s.offset + s.size], base)
        p.commit(s)
        if s is victim:
            os.pwrite(fd, b"\x00\x01", base)            # changed after its shard was verified
    with pytest.raises(CorruptData, match="model.safetensors"):
        p.finish(durable=False)
    p.close()


def test_whole_file_check_catches_a_file_longer_than_the_manifest(tmp_path, origin, op):
    d = ckpt(tmp_path / "c")
    origin.publish(d, 0, 0)
    m = origin._versions[0].manifest
    folder = tmp_path / "partial"
    folder.mkdir()
    p = PartialCheckpoint(folder, m)
    data = {f.path: (d / f.path).read_bytes() for f in m.files}
    for s in m.shards:
        fd, base = p.begin(s)
        os.pwrite(fd, data[s.path][s.offset:s.offset + s.size], base)
        p.commit(s)
    with open(folder / "empty.bin", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(CorruptData, match="empty.bin"):
        p.finish(durable=False)
    p.close()


def test_serving_caps_concurrent_transfers_and_supports_ranges(tmp_path, op):
    from protocol.http import ServerThread
    from shardcast.metrics import NodeMetrics
    from shardcast.serving import ShardLocation, build_app
    from shardcast.signal import Signal
    import httpx

    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(1).randbytes(32 * 1024 * 1024))

    class One:
        role, signal, metrics = "relay", Signal(), NodeMetrics("relay")

        def versions(self):
            return [0]

        complete_versions = versions

        def manifest_bytes(self, v):
            return None

        def shard(self, v, i):
            if (v, i) != (0, 0):
                raise LookupError("no such shard")
            return ShardLocation(blob, 1000, 30 * 1024 * 1024, "0" * 64)

    srv = ServerThread(build_app(One(), title="t", max_transfers=1)).start()
    try:
        url = srv.url + "/v1/versions/0/shards/0"
        with httpx.Client(timeout=10) as a, httpx.Client(timeout=10) as b:
            with a.stream("GET", url) as first:            # its body is not read: it stays open
                assert first.status_code == 200
                busy = b.get(url)
                assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            deadline = time.monotonic() + 30                # the server notices the hang-up
            while "shardcast_transfers_active 0.0" not in b.get(srv.url + "/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = b.get(url, headers={"range": "bytes=10-19"})
            assert r.status_code == 206 and r.content == blob.read_bytes()[1010:1020]
            assert r.headers["content-range"] == f"bytes 10-19/{30 * 1024 * 1024}"
            assert b.get(url, headers={"range": f"bytes={40 * 1024 * 1024}-"}).status_code == 416
            assert b.get(srv.url + "/v1/versions/0/shards/1").status_code == 404
            assert b.get(srv.url + "/v1/versions/x/shards/1").status_code == 422
            assert b.get(srv.url + "/v1/versions/0/manifest").status_code == 404
            assert b.get(srv.url + "/v1/versions/latest", params={"wait_s": 0}).status_code == 204
            assert "shardcast_bytes_served_total" in b.get(srv.url + "/metrics").text
    finally:
        srv.stop()


def test_offered_manifest_and_fallback_source_cover_for_dead_relays(tmp_path, origin, op):
    from shardcast.fetch import Downloader
    from shardcast.selection import Sources

    d = ckpt(tmp_path / "c")
    env = origin.publish(d, 0, 0)

    class ViaOrigin:                      # stands in for peers over libp2p
        asked: list[int] = []

        def fetch_into(self, version, shards, sink):
            self.asked.extend(s.index for s in shards)
            Downloader(Sources([origin.url])).fetch_all(version, shards, sink)

    dead = "http://127.0.0.1:9"           # nothing listens there
    fb = ViaOrigin()
    with ShardcastClient([dead], op.public, tmp_path / "cache", run_id="r", fallback=fb,
                         options=FetchOptions(max_attempts_per_shard=2)) as c:
        assert c.offer_manifest(env) == 0
        forged = env.model_copy(update={"body": {**env.body, "step": 99}})
        with pytest.raises(SignatureError):
            c.offer_manifest(forged)
        path = c.fetch(0)
    assert sorted(fb.asked) == [s["index"] for s in env.body["shards"] if s["size"] > 0]
    assert (path / "model.safetensors").read_bytes() == (d / "model.safetensors").read_bytes()


def test_unfinished_downloads_older_than_the_cache_are_removed_unless_being_fetched(tmp_path, origin, op):
    """A failed fetch leaves `.partial/N/` for a retry to resume; it was never removed, so a
    client that failed version after version kept a checkpoint's worth of disk per failure.
    Once every cached version is newer, the folder goes, unless someone holds its version lock
    (a fetch in progress); a partial newer than the cache (a retry may still resume it) stays."""
    import fcntl

    cache = tmp_path / "cache"
    with ShardcastClient([origin.url], op.public, cache, keep_versions=1) as c:
        origin.publish(ckpt(tmp_path / "c0", seed=0), 0, 0)
        c.fetch(0)
        partial = cache / ".partial"
        for v in (1, 2, 9):                      # what failed downloads of 1, 2 and 9 leave
            (partial / str(v)).mkdir(parents=True)
            (partial / str(v) / "model.safetensors").write_bytes(b"\0" * SHARD)
            (partial / f"{v}.lock").touch()
        fd = os.open(partial / "2.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)           # version 2 is being fetched by another client
        try:
            for v in (3, 4):
                origin.publish(ckpt(tmp_path / f"c{v}", seed=v), v, v)
                c.fetch(v)
        finally:
            os.close(fd)
        left = sorted(p.name for p in partial.iterdir() if p.is_dir())
        assert left == ["2", "9"], left          # 1 removed; 2 in use; 9 newer than the cache
        origin.publish(ckpt(tmp_path / "c5", seed=5), 5, 5)
        c.fetch(5)                               # 2's lock is free now
        assert sorted(p.name for p in partial.iterdir() if p.is_dir()) == ["9"]
