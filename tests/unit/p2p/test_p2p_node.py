"""P2PNode and PeerShards on loopback: real libp2p hosts, each in its own trio thread."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import T, signed_checkpoint, wait_for  # noqa: E402

from protocol.envelope import AUDIENCE_SWARM, seal  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from shardcast.errors import CorruptData, VersionUnavailable  # noqa: E402
from shardcast.p2p import (  # noqa: E402
    KIND_NOTICE,
    KIND_VERSION,
    FolderStore,
    P2PConfig,
    P2PError,
    P2PNode,
    P2PStopped,
    P2PUnavailable,
    PeerRequestFailed,
    PeerShards,
    VersionAnnouncement,
    bootstrap_multiaddr,
    manifest_digest,
    wire,  # noqa: E402
)

RUN = "unit-run"
OP, COORD = KeyPair.from_seed(b"O" * 32), KeyPair.from_seed(b"C" * 32)
FAST = dict(advert_interval_s=0.5, bootstrap_interval_s=0.3, advert_ttl_s=30.0, allow_private_addresses=True)


def checkpoint(root: Path, version: int) -> Path:
    return signed_checkpoint(root, version, run_id=RUN, operator=OP, size=200_000)


def held_by(swarm, version: int) -> Path:
    """The holder's copy of `version` (created on first use, so tests run in any order)."""
    folder = swarm["root"] / "holder" / str(version)
    return folder if folder.exists() else checkpoint(swarm["root"] / "holder", version)


class FlippingStore(FolderStore):
    """A dishonest peer: serves shards with one byte changed."""

    def read_shard(self, version, index):
        data = super().read_shard(version, index)
        return None if data is None else bytes([data[0] ^ 1]) + data[1:]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("p2p")
    nodes = []

    def node(key, store=None, **cfg):
        n = P2PNode(P2PConfig(**{**FAST, **cfg}), key, RUN, OP.public, COORD.public, store=store)
        n.start()
        nodes.append(n)
        return n

    try:
        boot = node(COORD)
        b = {"bootstrap": boot.multiaddrs}
        holder = node(KeyPair.generate(), FolderStore(root / "holder", OP.public), **b)
        liar = node(KeyPair.generate(), FlippingStore(root / "liar", OP.public), **b)
        worker = node(KeyPair.generate(), **b)
        for n in (holder, liar, worker):
            wait_for(lambda n=n: boot.peer_id in n.connected_peers(), "connected to the bootstrap peer")
        yield dict(root=root, boot=boot, holder=holder, liar=liar, worker=worker, node=node)
    finally:
        for n in reversed(nodes):
            n.stop()


def test_the_host_id_is_the_protocol_identity(swarm):
    boot, worker = swarm["boot"], swarm["worker"]
    assert boot.peer_id == COORD.peer_id and boot.peer_id.startswith("12D3KooW")
    port = int(boot.multiaddrs[0].split("/tcp/")[1].split("/")[0])
    assert boot.multiaddrs == [bootstrap_multiaddr("127.0.0.1", port, COORD.peer_id)]
    # the id the remote side authenticated over Noise is the one protocol.identity derives
    assert worker.peer_id in boot.connected_peers()


def test_a_version_announcement_reaches_sync_and_asyncio_subscribers(swarm):
    boot, worker = swarm["boot"], swarm["worker"]
    folder = held_by(swarm, 1)
    sub = worker.subscribe({KIND_VERSION})

    async def hear_async():
        asub = worker.subscribe({KIND_VERSION}, loop=asyncio.get_running_loop())
        boot.announce_version(_manifest(folder))
        return await asyncio.wait_for(asub.aget(), T)

    got = asyncio.run(hear_async())
    assert got.body.version == 1 and got.signer_id == COORD.peer_id
    assert sub.get(timeout=T).body.version == 1
    assert worker.wait_for_version(None, T) == 1
    assert worker.view.version(1).manifest == _manifest(folder)


def test_only_operator_or_coordinator_nodes_may_announce_versions(swarm):
    folder = held_by(swarm, 1)
    with pytest.raises(P2PError, match="operator or the coordinator"):
        swarm["worker"].announce_version(_manifest(folder))


def test_a_late_joiner_learns_the_standing_version_and_relays(swarm):
    swarm["holder"].advertise_relay("http://127.0.0.1:9", region="eu", capacity_mbps=5)
    wait_for(lambda: swarm["boot"].latest_version() is not None, "the bootstrap peer announced a version")
    late = swarm["node"](KeyPair.generate(), bootstrap=swarm["boot"].multiaddrs)
    assert late.wait_for_version(None, T) == swarm["boot"].latest_version()
    wait_for(lambda: [r.url for r in late.relays()] == ["http://127.0.0.1:9"], "the late node knows the relay")
    swarm["holder"].withdraw_relay("http://127.0.0.1:9")
    wait_for(lambda: late.relays() == [], "the withdrawal reached the late node")


def test_a_coordinator_notice_is_delivered(swarm):
    sub = swarm["worker"].subscribe({KIND_NOTICE})
    swarm["boot"].notice("pausing leases", level="warning")
    got = sub.get(timeout=T)
    assert got.body.text == "pausing leases" and got.body.level == "warning"


def test_peer_shards_fetches_verified_shards_and_avoids_a_liar(swarm):
    holder, liar, worker = swarm["holder"], swarm["liar"], swarm["worker"]
    src = held_by(swarm, 1)
    # the liar holds the same version (a copy) but flips a byte of every shard it serves
    liar_copy = swarm["root"] / "liar" / "1"
    liar_copy.mkdir(parents=True)
    for f in ("config.json", "w.bin", ".manifest.json"):
        (liar_copy / f).write_bytes((src / f).read_bytes())
    holder.refresh_have()
    liar.refresh_have()
    wait_for(lambda: {holder.peer_id, liar.peer_id} <= {p.peer_id for p in worker.peers_with(1)},
             "both peers advertise version 1")
    class LiarFirst:  # the order peers are tried in: the liar first, so it is surely asked
        def shuffle(self, items):
            items.sort(key=lambda p: p.peer_id != liar.peer_id)

    peers = PeerShards(worker, OP.public, rng=LiarFirst())
    m = peers.manifest(1)
    data = b"".join(peers.fetch_shard(1, s.index) for s in m.shards if s.path == "w.bin")
    assert data == (src / "w.bin").read_bytes()
    assert peers.peers_with(1) == [holder.peer_id]  # the liar was struck out after one bad shard


def test_all_peers_corrupt_is_corrupt_data(swarm):
    peers = PeerShards(swarm["worker"], OP.public)
    wait_for(lambda: swarm["liar"].peer_id in {p.peer_id for p in swarm["worker"].peers_with(1)}, "liar advertises")
    peers._candidates = lambda v: [p for p in swarm["worker"].peers_with(v) if p.peer_id == swarm["liar"].peer_id]
    with pytest.raises(CorruptData):
        peers.fetch_shard(1, 1)


def test_manifest_is_asked_of_a_peer_when_only_its_hash_was_announced(swarm):
    boot, holder, worker = swarm["boot"], swarm["holder"], swarm["worker"]
    folder = checkpoint(swarm["root"] / "holder", 2)
    env = _manifest(folder)
    body = VersionAnnouncement(run_id=RUN, version=2, step=2, manifest_sha256=manifest_digest(env))
    boot.publish_envelope(seal(KIND_VERSION, body, COORD, run_id=RUN, audience=AUDIENCE_SWARM))
    assert worker.wait_for_version(1, T) == 2
    assert worker.view.version(2).manifest is None
    holder.refresh_have()
    wait_for(lambda: holder.peer_id in {p.peer_id for p in worker.peers_with(2)}, "holder advertises version 2")
    peers = PeerShards(worker, OP.public)
    assert peers.manifest_envelope(2) == env
    assert peers.fetch_shard(2, 0) == (folder / "config.json").read_bytes()


def test_fetch_into_writes_verified_shards_through_a_sink(swarm, tmp_path):
    src = held_by(swarm, 1)
    swarm["holder"].refresh_have()
    wait_for(lambda: swarm["holder"].peer_id in {p.peer_id for p in swarm["worker"].peers_with(1)}, "holder")

    class FileSink:  # one file per checkpoint file, as the client's partial checkpoint does
        def __init__(self):
            self.committed = []

        def begin(self, shard):
            return os.open(tmp_path / shard.path, os.O_WRONLY | os.O_CREAT, 0o644), shard.offset

        def end(self, shard, fd):
            os.close(fd)

        def commit(self, shard):
            self.committed.append(shard.index)

    peers = PeerShards(swarm["worker"], OP.public)
    m = peers.manifest(1)
    sink = FileSink()
    assert peers.fetch_into(1, list(reversed(m.shards)), sink) == m.total_bytes
    assert sorted(sink.committed) == [s.index for s in m.shards]
    for f in ("config.json", "w.bin"):
        assert (tmp_path / f).read_bytes() == (src / f).read_bytes()


def test_nobody_holding_a_version_is_version_unavailable(swarm):
    with pytest.raises(VersionUnavailable):
        PeerShards(swarm["worker"], OP.public).manifest(77)


def test_a_peer_refuses_requests_for_another_run(swarm):
    held_by(swarm, 1)
    swarm["holder"].refresh_have()
    holder = wait_for(lambda: [p for p in swarm["worker"].peers_with(1)
                               if p.peer_id == swarm["holder"].peer_id], "holder advertises version 1")[0]
    req = wire.ShardRequest(run_id="other-run", op="shard", version=1, index=0)
    with pytest.raises(PeerRequestFailed, match="other-run"):
        swarm["worker"].request(holder, req, 1 << 20)
    big = wire.ShardRequest(run_id=RUN, op="shard", version=1, index=1)
    with pytest.raises(PeerRequestFailed, match="at most 10 expected"):
        swarm["worker"].request(holder, big, 10)


def test_garbage_on_the_shard_protocol_does_not_hurt_the_server(swarm):
    from shardcast.p2p._host import _peer_info

    worker, holder = swarm["worker"], swarm["holder"]
    held_by(swarm, 1)
    holder.refresh_have()
    peer = wait_for(lambda: [p for p in worker.peers_with(1) if p.peer_id == holder.peer_id], "holder")[0]

    async def send_garbage():
        info = _peer_info(peer.peer_id, peer.addrs)
        await worker._host.host.connect(info)
        stream = await worker._host.host.new_stream(info.peer_id, [wire.PROTOCOL_ID])
        await stream.write(b"\xff\xff\xff\xffnot a frame")
        try:
            return await stream.read(100)
        except Exception as exc:  # the server resets the stream: that is the expected answer
            return type(exc).__name__

    assert worker._call(send_garbage) in (b"", "StreamReset", "StreamEOF", "StreamError")
    req = wire.ShardRequest(run_id=RUN, op="shard", version=1, index=0)
    assert worker.request(peer, req, 1 << 20) == (swarm["root"] / "holder" / "1" / "config.json").read_bytes()


def test_an_unreachable_bootstrap_peer_is_one_warning_and_the_node_keeps_running(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = bootstrap_multiaddr("127.0.0.1", s.getsockname()[1], KeyPair.generate().peer_id)
    node = P2PNode(P2PConfig(**{**FAST, "bootstrap": [dead]}), KeyPair.generate(), RUN, OP.public)
    with caplog.at_level(logging.INFO, logger="shardcast.p2p"):
        node.start()
        try:
            wait_for(lambda: [r for r in caplog.records if "cannot reach bootstrap peer" in r.getMessage()],
                     "the warning")
            time.sleep(1.0)  # several retry rounds (every 0.3 s)
            assert node.running
            assert len([r for r in caplog.records if "cannot reach" in r.getMessage()]) == 1
        finally:
            node.stop()


def test_start_fails_cleanly_when_the_port_is_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        node = P2PNode(P2PConfig(listen_port=s.getsockname()[1]), KeyPair.generate(), RUN, OP.public)
        with pytest.raises(P2PUnavailable, match="did not start"):
            node.start(timeout_s=T)
        assert not node.running


def test_calls_after_stop_raise_and_stop_is_idempotent():
    node = P2PNode(P2PConfig(**FAST), KeyPair.generate(), RUN, OP.public)
    node.start()
    with pytest.raises(P2PError, match="already started"):
        node.start()
    node.stop()
    node.stop()
    with pytest.raises(P2PStopped):
        node.connected_peers()


def _manifest(folder: Path):
    from shardcast.layout import read_manifest

    return read_manifest(folder)
