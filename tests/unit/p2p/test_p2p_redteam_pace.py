"""Red-team findings against the shard exchange's time and dial budgets (hostile peers with free
keys, real libp2p hosts on loopback; each test failed before its fix):

- a peer that sends a shard reply's head and then drips its bytes held the asking worker for
  the whole request deadline (60 s) before the next peer was asked: the body must keep up a
  minimum rate (P2PConfig.min_rate_bps, judged over rate_window_s) like a relay's.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, signed_checkpoint, wait_for  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402

RUN = "pace-run"
OP, COORD = KeyPair.from_seed(b"P" * 32), KeyPair.from_seed(b"Q" * 32)
FAST = dict(advert_interval_s=0.3, bootstrap_interval_s=0.3, allow_private_addresses=True)


def _drip_server(host, every_s: float):
    """A `_serve_one` for `host` that answers a shard request with the right head, then sends
    the body one byte every `every_s` s (manifests are served at once)."""
    import trio
    from libp2p.network.stream.exceptions import StreamEOF

    from shardcast.p2p import wire

    async def serve_one(stream) -> None:
        try:
            req = wire.decode_request(await wire.read_frame(stream, StreamEOF))
            data = await host._lookup(req)
            if isinstance(data, str):
                await host._reply_error(stream, data)
                return
            await wire.write_frame(stream, wire.encode_model(wire.ShardReply(ok=True, size=len(data))))
            if req.op == "manifest":  # manifests at once: shards are what it drips
                await wire.write_body(stream, data)
                await stream.close()
                return
            for i in range(len(data)):
                await stream.write(data[i:i + 1])
                await trio.sleep(every_s)
        except Exception:  # noqa: BLE001 - the asker left: what a drip is for
            pass

    return serve_one


def test_a_peer_that_drips_a_shard_is_dropped_at_the_minimum_rate_and_the_shard_comes_from_another(tmp_path):
    from shardcast.p2p import FolderStore, PeerShards

    signed_checkpoint(tmp_path / "held", 1, run_id=RUN, operator=OP, size=100_000)
    node = Nodes({**FAST, "min_rate_bps": 64 * 1024, "rate_window_s": 1.0}, RUN, OP, COORD)
    try:
        boot = node(COORD)
        b = {"bootstrap": boot.multiaddrs}
        honest = node(KeyPair.generate(), FolderStore(tmp_path / "held", OP.public), **b)
        drip = node(KeyPair.generate(), FolderStore(tmp_path / "held", OP.public), **b)
        drip._host._serve_one = _drip_server(drip._host, 0.2)
        worker = node(KeyPair.generate(), **b)
        wait_for(lambda: {honest.peer_id, drip.peer_id} <= {p.peer_id for p in worker.peers_with(1)},
                 "both holders advertised")
        peers = PeerShards(worker, OP.public)
        peers._credit(drip.peer_id)  # it served before: asked first
        big = max(peers.manifest(1).shards, key=lambda s: s.size)  # 32 KiB: 2.7 hours at 5 B/s
        out: list = []
        t0 = time.monotonic()
        t = threading.Thread(target=lambda: out.append(peers.fetch_shard(1, big.index)), daemon=True)
        t.start()
        t.join(6.0)
        took = time.monotonic() - t0
        assert out, f"no shard after {took:.1f} s (the drip peer holds it until the request deadline)"
        assert took < 4.0, f"took {took:.1f} s"
        assert peers._strikes.get(drip.peer_id, 0) >= 1
    finally:
        node.stop_all()
