"""An advert flood over real libp2p nodes on loopback: 128 throw-away keys publish 512 relay
adverts (tests/hostile/relays.flood_relay_adverts) and an honest relay advertises after them.
The endorsed relay is kept, the flood stays within the unendorsed budget, and an unendorsed
loopback relay is refused where private addresses are not allowed (the listener's default)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, wait_for  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p.announcements import endorse_relay  # noqa: E402
from tests.hostile.relays import flood_relay_adverts  # noqa: E402

RUN = "flood-run"
OP, COORD = KeyPair.from_seed(b"F" * 32), KeyPair.from_seed(b"G" * 32)
CFG = dict(advert_interval_s=0.5, bootstrap_interval_s=0.3, advert_ttl_s=60.0, rate_burst=8)


def public_url(i: int) -> str:
    return f"http://1.{i // 65536 % 256}.{i // 256 % 256}.{i % 256 + 1}:8800"


def test_an_endorsed_relay_is_kept_through_a_flood_of_128_keys_and_a_loopback_one_is_refused():
    node = Nodes(CFG, RUN, OP, COORD)
    try:
        listener = node(COORD)                                   # allow_private_addresses: off
        boot = {"bootstrap": listener.multiaddrs}
        attacker, relay = node(KeyPair.generate(), **boot), node(KeyPair.generate(), **boot)
        plain = node(KeyPair.generate(), **boot, allow_private_addresses=True)  # its own gate lets it publish
        for n in (attacker, relay, plain):
            wait_for(lambda n=n: listener.peer_id in n.connected_peers(), "connected to the listener")
        time.sleep(1.5)  # gossipsub meshes form on the heartbeat
        flood_relay_adverts(attacker, RUN, keys=128, url=public_url)
        wait_for(lambda: len(listener.relays()) == 8, "the flood filling the unendorsed budget")

        url = "http://127.0.0.1:18800"
        endorsement = endorse_relay(OP, run_id=RUN, relay_key=relay.key.public, url=url, valid_for_s=600)
        relay.advertise_relay(url, endorsement=endorsement)
        plain.advertise_relay("http://127.0.0.1:18801")
        wait_for(lambda: url in [r.url for r in listener.relays()], "the endorsed relay in the listener's view")
        wait_for(lambda: listener.counters.snapshot().get("rejected_address", 0) >= 1,
                 "the unendorsed loopback relay refused")
        relays = listener.relays()
        assert relays[0].url == url and relays[0].endorsed
        assert sum(not r.endorsed for r in relays) == 8
        assert "http://127.0.0.1:18801" not in [r.url for r in relays]
    finally:
        node.stop_all()
