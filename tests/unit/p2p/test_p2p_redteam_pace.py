"""Red-team findings against the shard exchange's time and dial budgets (hostile peers with free
keys, real libp2p hosts on loopback; each test failed before its fix):

- a peer that sends a shard reply's head and then drips its bytes held the asking worker for
  the whole request deadline (60 s) before the next peer was asked: the body must keep up a
  minimum rate (P2PConfig.min_rate_bps, judged over rate_window_s) like a relay's;
- have adverts from many throw-away keys that all name one victim's address made every
  honest node dial the victim once per key (up to max_dial_peers at a time, each key then
  backed off 60 s, the next keys dialled the round after), and each shard or manifest request
  to those "holders" dialled it again: dials to one host are now budgeted across peer ids.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, signed_checkpoint, wait_for  # noqa: E402

from protocol.envelope import AUDIENCE_SWARM, seal  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p.announcements import KIND_HAVE, HaveAdvert  # noqa: E402

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
        except Exception:  # noqa: BLE001, S110 - the asker left: what a drip is for
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


class CountingListener:
    """A victim: a TCP port that accepts connections, counts them and never says a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_have_adverts_of_many_keys_naming_one_address_do_not_make_a_node_dial_it_once_per_key(tmp_path):
    from shardcast.errors import ShardcastError
    from shardcast.p2p import PeerShards, _host

    victim = CountingListener()
    cfg = {**FAST, "request_timeout_s": 1.0, "max_dial_peers": 8, "rate_per_s": 5.0}
    node = Nodes(cfg, RUN, OP, COORD)
    try:
        boot = node(COORD, max_dial_peers=0)  # the worker alone dials advertised peers: its dials are counted
        b = {"bootstrap": boot.multiaddrs}
        worker, attacker = node(KeyPair.generate(), **b), node(KeyPair.generate(), max_dial_peers=0, **b)
        for n in (worker, attacker):
            wait_for(lambda n=n: boot.peer_id in n.connected_peers(), "connected to the bootstrap peer")
        time.sleep(1.0)  # the gossipsub mesh forms on the heartbeat
        sybils = [KeyPair.generate() for _ in range(16)]
        for k in sybils:
            body = HaveAdvert(run_id=RUN, versions=[1], ttl_s=600.0,
                              addrs=[f"/ip4/127.0.0.1/tcp/{victim.port}/p2p/{k.peer_id}"])
            attacker.publish_envelope(seal(KIND_HAVE, body, k, run_id=RUN, audience=AUDIENCE_SWARM))
        wait_for(lambda: len(worker.peers_with(1)) >= 16, "the worker hearing every sybil's advert")
        time.sleep(3.0)  # ten rounds of dialling advertised peers
        budget = getattr(_host, "DIALS_PER_ADDRESS", 2)
        dialled = len(victim.accepted)
        assert dialled <= budget, f"the victim was dialled {dialled} times in 3 s (budget {budget} per address)"
        # asking the sybils for version 1 dials nobody more: the host's budget is spent
        peers = PeerShards(worker, OP.public)
        with pytest.raises(ShardcastError):  # no peer supplied a manifest
            peers.manifest(1)
        assert len(victim.accepted) <= budget, f"requests dialled the victim {len(victim.accepted) - dialled} more times"
    finally:
        node.stop_all()
        victim.close()


def test_the_dial_budget_counts_each_address_and_each_host_across_peer_ids():
    from collections import OrderedDict

    from shardcast.p2p import _host

    h = _host.SwarmHost.__new__(_host.SwarmHost)
    h._dials = OrderedDict()
    one = _host._dial_targets(["/ip4/203.0.113.7/tcp/4001/p2p/x"])
    assert [h._spend_dial(one) for _ in range(3)] == [True] * _host.DIALS_PER_ADDRESS + [False]
    h._refund_dial(one)  # a dial that reached its peer is not counted
    assert h._spend_dial(one) and not h._spend_dial(one)
    # other ports of the same host: until the host's own budget is spent
    ports = [_host._dial_targets([f"/ip4/203.0.113.7/tcp/{5000 + i}"]) for i in range(_host.DIALS_PER_HOST)]
    spent = [h._spend_dial(t) for t in ports]
    assert spent.count(True) == _host.DIALS_PER_HOST - _host.DIALS_PER_ADDRESS and not spent[-1]
    assert h._spend_dial(_host._dial_targets(["/ip4/203.0.113.8/tcp/4001"]))  # another host is not affected
