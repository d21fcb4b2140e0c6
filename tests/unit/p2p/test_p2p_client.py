"""ShardcastClient with libp2p peers (shardcast.client + shardcast.p2p on loopback).

Real libp2p hosts in this process: a bootstrap node with the coordinator's key (it announces
versions), a holder serving a checkpoint folder, and the client's node; relays are real
shardcast relay APIs where one is needed (an Origin). The client is built exactly as the
worker and the verifier build it (`peers=PeerShards(node, operator)`).
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import T, signed_checkpoint, wait_for  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402
from protocol.messages import RunInfo  # noqa: E402
from shardcast.client import ShardcastClient  # noqa: E402
from shardcast.config import OriginConfig  # noqa: E402
from shardcast.errors import ShardcastError  # noqa: E402
from shardcast.layout import read_manifest  # noqa: E402
from shardcast.origin import Origin  # noqa: E402
from shardcast.p2p import FolderStore, P2PConfig, P2PNode, PeerShards  # noqa: E402
from shardcast.p2p.roles import join_run, key_of_peer, node_status  # noqa: E402

RUN = "client-run"
OP, COORD = KeyPair.from_seed(b"P" * 32), KeyPair.from_seed(b"Q" * 32)
FAST = dict(advert_interval_s=0.5, bootstrap_interval_s=0.3, advert_ttl_s=30.0, allow_private_addresses=True)


def checkpoint(root: Path, version: int) -> Path:
    return signed_checkpoint(root, version, run_id=RUN, operator=OP, size=150_000)


@pytest.fixture
def swarm(tmp_path):
    nodes: list[P2PNode] = []

    def node(key: KeyPair, *, boot: list[str] = (), store: Path | None = None, role: str = "peer") -> P2PNode:
        n = P2PNode(P2PConfig(**FAST, bootstrap=list(boot)), key, RUN, OP.public, COORD.public,
                    FolderStore(store, OP.public) if store is not None else None, role=role)
        n.start()
        nodes.append(n)
        return n

    try:
        boot = node(COORD, role="coordinator")
        yield {"root": tmp_path, "boot": boot, "node": node}
    finally:
        for n in reversed(nodes):
            n.stop()


def info(boot: list[str]) -> RunInfo:
    return RunInfo(run_id=RUN, coordinator_key=COORD.public.hex, operator_key=OP.public.hex, verifier_keys=[],
                   relays=[], current_policy_version=None, async_window=1, p2p_bootstrap=boot)


def test_without_relays_a_version_is_heard_on_the_topic_and_fetched_from_a_peer(swarm):
    root, boot = swarm["root"], swarm["boot"]
    holder_dir = root / "holder"
    folder = checkpoint(holder_dir, 3)
    holder = swarm["node"](KeyPair.generate(), boot=boot.multiaddrs, store=holder_dir)
    me = join_run(P2PConfig(**FAST), KeyPair.generate(), info(boot.multiaddrs), store_dir=root / "cache",
                  role="worker")
    assert me is not None
    try:
        client = ShardcastClient([], OP.public, root / "cache", run_id=RUN, peers=PeerShards(me, OP.public))
        assert client.wait_for_version(None, 0.2) is None  # nothing announced yet (and no relay to ask)
        wait_for(lambda: me.peers_with(3), "the client hears that the holder has version 3")
        boot.announce_version(read_manifest(folder))
        assert client.wait_for_version(None, T) == 3
        got = client.fetch(3)
        for name in ("config.json", "w.bin"):
            assert filecmp.cmp(got / name, folder / name, shallow=False)
        assert holder.counters.snapshot().get("served", 0) >= 1
        # the client's node now serves the version itself
        wait_for(lambda: 3 in (node_status(holder)["peers_holding"].get(me.peer_id) or []),
                 "the client advertises version 3")
        client.close()
    finally:
        me.stop()


def test_relays_advertised_on_the_topic_are_used_and_dropped_when_withdrawn(swarm, tmp_path):
    boot = swarm["boot"]
    origin = Origin(OriginConfig(port=0, data_dir=tmp_path / "origin", shard_size=32 * 1024), OP, RUN)
    url = origin.start()
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "w.bin").write_bytes(os.urandom(100_000))
        origin.publish(src, 0, step=0)
        relay_node = swarm["node"](KeyPair.generate(), boot=boot.multiaddrs, role="relay")
        me = swarm["node"](KeyPair.generate(), boot=boot.multiaddrs, store=tmp_path / "cache")
        client = ShardcastClient([], OP.public, tmp_path / "cache", run_id=RUN, peers=PeerShards(me, OP.public))
        relay_node.advertise_relay(url, region="eu", capacity_mbps=10)
        wait_for(lambda: [r for r in me.relays() if r.url == url], "the client's node hears the relay")
        assert client.wait_for_version(None, T) == 0  # from the relay's long-poll: no version was announced
        assert (client.fetch(0) / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
        assert url in client.sources.urls
        relay_node.withdraw_relay(url)
        wait_for(lambda: not me.relays(), "the withdrawal arrives")
        client.wait_for_version(0, 0.1)
        assert url not in client.sources.urls
        client.close()
    finally:
        origin.stop()


def test_join_run_is_http_only_when_disabled_or_without_bootstrap(tmp_path):
    key = KeyPair.generate()
    assert join_run(P2PConfig(enabled=False), key, info(["/ip4/127.0.0.1/tcp/1/p2p/" + COORD.peer_id])) is None
    assert join_run(P2PConfig(), key, info([])) is None
    assert join_run(P2PConfig(), key, info(["not-a-multiaddr"])) is None
    with pytest.raises(ShardcastError, match="no shardcast relays"):
        ShardcastClient([], OP.public, tmp_path / "c")


def test_key_of_peer_reads_the_key_a_multiaddr_names():
    k = KeyPair.generate()
    assert key_of_peer(f"/ip4/10.0.0.1/tcp/4001/p2p/{k.peer_id}") == k.public
    assert key_of_peer("/ip4/10.0.0.1/tcp/4001") is None
    assert key_of_peer("/ip4/10.0.0.1/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N") is None
    assert key_of_peer("/ip4/10.0.0.1/tcp/4001/p2p/12D3KooW0OIl") is None
