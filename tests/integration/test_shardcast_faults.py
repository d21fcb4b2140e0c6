"""Shardcast under faults, on loopback: relays killed mid-transfer, relays serving corrupt
bytes or forged manifests, clients killed mid-download. Relays under test are `swarmrl relay`
processes; hostile relays are real HTTP servers in this process serving tampered data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from protocol.envelope import Envelope
from protocol.http import ServerThread
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from shardcast.client import ShardcastClient
from shardcast.config import OriginConfig
from shardcast.errors import FetchFailed
from shardcast.fetch import FetchOptions
from shardcast.metrics import NodeMetrics
from shardcast.origin import Origin
from shardcast.serving import ShardLocation, build_app
from shardcast.signal import Signal
from tests.integration.test_shardcast import SHARD, make_checkpoint, relay_starter, same_tree


@pytest.fixture
def operator():
    return KeyPair.generate()


@pytest.fixture
def relays():
    with relay_starter() as start:
        yield start


@pytest.fixture
def origin(tmp_path, operator):
    cfg = OriginConfig(data_dir=tmp_path / "origin", port=0, shard_size=SHARD)
    o = Origin(cfg, operator, "run-f")
    o.start()
    yield o
    o.stop()


class HostileRelay:
    """Serves the origin's versions through the real API, but tampered:
    mode "corrupt": every shard of model.safetensors has one byte flipped;
    mode "forge": announces a newer version signed by another key, and serves every
    manifest with its body edited (weights hash replaced) under the original signature."""

    role = "relay"

    def __init__(self, origin: Origin, mode: str, workdir: Path):
        self.origin, self.mode, self.workdir = origin, mode, workdir
        self.signal = Signal()
        self.metrics = NodeMetrics("relay")
        self.forger = KeyPair.generate()
        self.server = ServerThread(build_app(self, title="hostile")).start()
        self.url = self.server.url

    def versions(self):
        vs = self.origin.versions()
        return vs + [max(vs) + 5] if self.mode == "forge" and vs else vs

    def complete_versions(self):
        return self.versions()

    def manifest_bytes(self, version):
        if self.mode != "forge":
            return self.origin.manifest_bytes(version)
        real = self.origin.manifest(max(self.origin.versions()))
        if version not in self.origin.versions():   # the lure: a newer version, wrong key
            m = build_manifest(self.origin.shard(real.body["version"], 0).path.parent,
                               run_id="run-f", version=version, step=99, shard_size=SHARD)
            return sign_manifest(m, self.forger).model_dump_json().encode()
        env = self.origin.manifest(version)
        body = dict(env.body)
        body["files"] = [dict(f, sha256="0" * 64) for f in body["files"]]
        return Envelope(**{**env.model_dump(), "body": body}).model_dump_json().encode()

    def shard(self, version, index):
        loc = self.origin.shard(version, index)
        bad = self.workdir / str(version) / loc.path.name
        if not bad.exists():
            bad.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(loc.path, bad)
        if loc.path.name == "model.safetensors":
            with open(bad, "r+b") as fh:
                fh.seek(loc.offset + 7)
                b = fh.read(1)
                fh.seek(loc.offset + 7)
                fh.write(bytes([b[0] ^ 0xFF]) if b == self._orig_byte(loc) else b)
        return ShardLocation(bad, loc.offset, loc.size, loc.sha256)

    @staticmethod
    def _orig_byte(loc: ShardLocation) -> bytes:
        with open(loc.path, "rb") as fh:
            fh.seek(loc.offset + 7)
            return fh.read(1)

    def stop(self):
        self.server.stop()


@pytest.fixture
def hostile(tmp_path, origin):
    made = []

    def make(mode):
        h = HostileRelay(origin, mode, tmp_path / f"hostile-{mode}")
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def test_relay_killed_mid_transfer_client_finishes_from_the_other(tmp_path, operator, origin,
                                                                  relays):
    ck = make_checkpoint(tmp_path / "ck", 60 * SHARD, seed=3)
    origin.publish(ck, 0, 0)
    a = relays(tmp_path / "ra", [origin.url], operator)
    b = relays(tmp_path / "rb", [origin.url], operator)
    a.wait_complete(0)
    b.wait_complete(0)
    killed = []

    def progress(done, total):
        if not killed and done > total * 0.3:
            killed.append(done)
            a.kill()                           # SIGKILL while other transfers are in flight

    with ShardcastClient([a.url, b.url], operator.public, tmp_path / "cache",
                         options=FetchOptions(parallel=4)) as c:
        path = c.fetch(0, progress=progress)
        stats = {s.url: s for s in c.sources.snapshot()}
    assert killed and same_tree(ck, path)
    assert stats[a.url].successes >= 1           # a really served part of this version
    assert stats[a.url].failures >= 1            # ... then failed and was avoided
    assert stats[b.url].successes > stats[a.url].successes


def test_corrupt_relay_is_detected_on_first_bad_shard_and_avoided(tmp_path, operator, origin,
                                                                  relays, hostile):
    ck = make_checkpoint(tmp_path / "ck", 20 * SHARD, seed=4)
    origin.publish(ck, 0, 0)
    bad = hostile("corrupt")
    good = relays(tmp_path / "good", [origin.url], operator)
    good.wait_complete(0)  # else the bad relay is alone until the good one catches up (it answers 404)
    with ShardcastClient([bad.url, good.url], operator.public, tmp_path / "cache",
                         options=FetchOptions(parallel=2)) as c:
        path = c.fetch(0)
        assert c.sources.is_hostile(bad.url)
    assert same_tree(ck, path)
    served = bad.metrics.shard_requests.labels("ok")._value.get()
    assert 1 <= served <= 2           # only transfers already in flight when the first failed


def test_only_corrupt_sources_means_no_checkpoint_ever_appears(tmp_path, operator, origin, hostile):
    origin.publish(make_checkpoint(tmp_path / "ck", 4 * SHARD, seed=5), 0, 0)
    bad = hostile("corrupt")
    with ShardcastClient([bad.url], operator.public, tmp_path / "cache") as c:
        with pytest.raises(FetchFailed, match="corrupt"):
            c.fetch(0)
    assert not (tmp_path / "cache" / "0").exists()
    log = tmp_path / "cache" / ".partial" / "0" / ".verified"
    weights = {s["index"] for s in origin.manifest(0).body["shards"]
               if s["path"] == "model.safetensors"}
    logged = {int(x) for x in log.read_text().split()} if log.exists() else set()
    assert weights and not (logged & weights)      # no corrupt shard was ever counted


def test_forged_manifests_are_refused_and_their_relay_avoided(tmp_path, operator, origin, relays,
                                                              hostile):
    ck = make_checkpoint(tmp_path / "ck", 3 * SHARD, seed=6)
    origin.publish(ck, 0, 0)
    forger = hostile("forge")
    good = relays(tmp_path / "good", [origin.url], operator)
    good.wait_complete(0)
    ck1 = make_checkpoint(tmp_path / "ck1", SHARD, seed=7)
    threading.Timer(1.0, lambda: origin.publish(ck1, 1, 1)).start()
    with ShardcastClient([forger.url, good.url], operator.public, tmp_path / "cache") as c:
        # the forger answers the long-poll at once with "version 5", signed by another key;
        # the client ignores it and keeps waiting for the real version 1
        assert c.wait_for_version(0, timeout_s=20) == 1
        assert c.sources.is_hostile(forger.url)
    with ShardcastClient([forger.url, good.url], operator.public, tmp_path / "cache2") as c:
        c.sources.stats[forger.url].throughput_bps = 1e12   # make the forger look best: asked first
        c.sources.stats[good.url].throughput_bps = 1.0
        assert same_tree(ck, c.fetch(0))            # its edited manifest fails the signature
        assert c.sources.is_hostile(forger.url)


def test_relay_refuses_corrupt_upstream_and_serves_only_verified_bytes(tmp_path, operator, origin,
                                                                       relays, hostile):
    ck = make_checkpoint(tmp_path / "ck", 12 * SHARD, seed=7)
    origin.publish(ck, 0, 0)
    bad = hostile("corrupt")
    relay = relays(tmp_path / "relay", [bad.url, origin.url], operator)
    relay.wait_complete(0)
    assert relay.metric("shardcast_verify_failures_total") >= 1
    with ShardcastClient([relay.url], operator.public, tmp_path / "cache") as c:
        assert same_tree(ck, c.fetch(0))
    for p in (tmp_path / "relay" / "versions" / "0" / "shards").iterdir():
        assert not p.name.startswith(".")          # no unverified leftovers


CLIENT_SCRIPT = textwrap.dedent("""
    import sys, time
    from shardcast.client import ShardcastClient
    from shardcast.fetch import FetchOptions
    url, key, cache = sys.argv[1:4]
    c = ShardcastClient([url], key, cache, options=FetchOptions(parallel=1))
    c.fetch(0, progress=lambda done, total: time.sleep(0.05))
    print("finished")
""")


def test_client_killed_mid_download_resumes_only_unverified_shards(tmp_path, operator, origin):
    ck = make_checkpoint(tmp_path / "ck", 40 * SHARD, seed=8)
    origin.publish(ck, 0, 0)
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, origin.url, operator.public.hex,
                             str(cache)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = cache / ".partial" / "0" / ".verified"
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().split()) >= 10):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (cache / "0").exists()
    kept = set(int(x) for x in log.read_text().split())
    total = len(origin.manifest(0).body["shards"])
    assert 10 <= len(kept) < total
    # damage one kept shard on disk: it must be detected and fetched again
    shards = origin.manifest(0).body["shards"]
    damaged = min(i for i in kept if shards[i]["path"] == "model.safetensors")
    entry = origin.manifest(0).body["shards"][damaged]
    with open(cache / ".partial" / "0" / "model.safetensors", "r+b") as fh:
        fh.seek(entry["offset"])
        fh.write(b"\x00" * 16)
    before = origin.metrics.shard_requests.labels("ok")._value.get()
    with ShardcastClient([origin.url], operator.public, cache) as c:
        assert same_tree(ck, c.fetch(0))
    fetched = origin.metrics.shard_requests.labels("ok")._value.get() - before
    assert fetched == total - len(kept) + 1
    assert not (cache / ".partial" / "0").exists()


class GatedUpstream:
    """The origin's versions, but shards from `gate_at` on are held until `gate` is set:
    a slow upstream, to watch a relay serve the shards it has while it still mirrors."""

    role = "origin"

    def __init__(self, origin: Origin, gate_at: int):
        self.origin, self.gate_at = origin, gate_at
        self.gate = threading.Event()
        self.signal = Signal()
        self.metrics = NodeMetrics("origin")
        self.server = ServerThread(build_app(self, title="gated")).start()
        self.url = self.server.url

    def versions(self):
        return self.origin.versions()

    complete_versions = versions

    def manifest_bytes(self, version):
        return self.origin.manifest_bytes(version)

    def shard(self, version, index):
        if index >= self.gate_at and not self.gate.is_set():
            return None
        return self.origin.shard(version, index)

    def open(self):
        self.gate.set()
        self.signal.notify()

    def stop(self):
        self.signal.close()
        self.server.stop()


def test_relay_serves_verified_shards_while_it_still_mirrors_the_version(tmp_path, operator,
                                                                         origin, relays):
    ck = make_checkpoint(tmp_path / "ck", 12 * SHARD, seed=9)
    origin.publish(ck, 0, 0)
    upstream = GatedUpstream(origin, gate_at=6)
    try:
        relay = relays(tmp_path / "relay", [upstream.url], operator)
        got = []
        with ShardcastClient([relay.url], operator.public, tmp_path / "cache",
                             options=FetchOptions(parallel=1)) as c:
            def progress(done, total):
                if not got:
                    # the client holds a verified shard, and the relay is not done mirroring
                    got.append(relay.get("/v1/versions").json())
                    upstream.open()
            path = c.fetch(0, progress=progress)
        assert got == [{"versions": [0], "complete": []}]
        assert same_tree(ck, path)
    finally:
        upstream.stop()


def test_relay_restart_reverifies_its_disk_and_refetches_only_what_is_bad(tmp_path, operator,
                                                                          origin, relays):
    ck = make_checkpoint(tmp_path / "ck", 10 * SHARD, seed=10)
    origin.publish(ck, 0, 0)
    relay = relays(tmp_path / "relay", [origin.url], operator)
    relay.wait_complete(0)
    relay.kill()
    shards = tmp_path / "relay" / "versions" / "0" / "shards"
    victim = shards / "3"
    victim.write_bytes(b"\x00" * victim.stat().st_size)         # rotted while it was down
    (shards / ".7.part").write_bytes(b"junk")                    # an interrupted transfer
    relay2 = relays(tmp_path / "relay", [origin.url], operator)
    relay2.wait_complete(0)
    assert relay2.metric("shardcast_shards_verified_total") == 1  # only shard 3 came again
    assert not (shards / ".7.part").exists()
    with ShardcastClient([relay2.url], operator.public, tmp_path / "cache") as c:
        assert same_tree(ck, c.fetch(0))
