"""Red-team findings against what throw-away keys can make a node do to honest peers (real
libp2p hosts on loopback; each test failed before its fix):

- have adverts of throw-away keys that name an honest holder's address: each dial of such a
  "holder" reaches the honest peer, whose handshake proves another key, and was counted
  against that address's dial budget (2 per 60 s), so two of them kept every node from
  dialling the honest holder itself for a minute. Dials are now made one address at a
  time, each counted against that address alone, and a handshake that proves who listens at
  an address is remembered: the owner is dialled there without a budget, other keys naming
  it are not dialled at all.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, signed_checkpoint, wait_for  # noqa: E402

from protocol.envelope import AUDIENCE_SWARM, seal  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p.announcements import KIND_HAVE, HaveAdvert  # noqa: E402

RUN = "sybil-run"
OP, COORD = KeyPair.from_seed(b"Y" * 32), KeyPair.from_seed(b"Z" * 32)
FAST = dict(advert_interval_s=0.3, bootstrap_interval_s=0.3, allow_private_addresses=True, rate_per_s=5.0)


def _publish_sybils(attacker, keys, addrs_of) -> None:
    for k in keys:
        body = HaveAdvert(run_id=RUN, versions=[1], ttl_s=600.0, addrs=addrs_of(k))
        attacker.publish_envelope(seal(KIND_HAVE, body, k, run_id=RUN, audience=AUDIENCE_SWARM))


@pytest.mark.parametrize("shape", ["same-address", "dead-address-first"])
def test_sybil_adverts_naming_an_honest_holders_address_do_not_delay_dialling_it(tmp_path, shape):
    """Before: both shapes kept the worker from the honest holder for 60 s (the address's dial
    budget spent by two sybil dials; with a dead address first, py-libp2p dialled only that
    one, and every address the advert named was charged all the same)."""
    from shardcast.p2p import FolderStore, PeerShards

    signed_checkpoint(tmp_path / "held", 1, run_id=RUN, operator=OP, size=1000)
    node = Nodes(FAST, RUN, OP, COORD)
    try:
        boot = node(COORD, max_dial_peers=0)
        b = {"bootstrap": boot.multiaddrs}
        holder = node(KeyPair.generate(), FolderStore(tmp_path / "held", OP.public), max_dial_peers=0, **b)
        worker = node(KeyPair.generate(), max_dial_peers=0, **b)   # dials advertised peers only when asking
        attacker = node(KeyPair.generate(), max_dial_peers=0, **b)
        for n in (worker, attacker):
            wait_for(lambda n=n: boot.peer_id in n.connected_peers(), "connected to the bootstrap peer")
        time.sleep(1.0)  # the gossipsub mesh forms on the heartbeat
        honest_addr = holder.multiaddrs[0].split("/p2p/")[0]
        dead = "/ip4/127.0.0.1/tcp/9"  # discard: nothing listens on loopback's port 9
        sybils = [KeyPair.generate() for _ in range(6)]
        _publish_sybils(attacker, sybils, lambda k: ([honest_addr] if shape == "same-address"
                                                     else [dead, honest_addr]))
        wait_for(lambda: len(worker.peers_with(1)) >= 7, "the worker hearing the holder and every sybil")
        peers = PeerShards(worker, OP.public)
        for k in sybils:  # the sybils are asked first (as if they had delivered before)
            peers._credit(k.peer_id)
            peers._credit(k.peer_id)
        t0, got, errors = time.monotonic(), None, []
        while got is None and time.monotonic() - t0 < 8.0:
            try:
                got = peers.fetch_shard(1, 0)
            except Exception as exc:  # noqa: BLE001 - FetchFailed while the budget is spent
                errors.append(type(exc).__name__)
                time.sleep(0.2)
        took = time.monotonic() - t0
        assert got is not None, f"no shard from the honest holder in {took:.1f} s ({len(errors)} failed tries: {errors[:3]})"
        assert took < 5.0, f"took {took:.1f} s"
    finally:
        node.stop_all()
