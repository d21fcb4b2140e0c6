"""Standing adverts anyone may sign (have, relay) go out no faster than peers' gates admit
from one signer, however often the node is kicked; the newest state still goes out."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import signed_checkpoint, wait_for  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p import FolderStore, P2PConfig, P2PNode  # noqa: E402

RUN = "pacing-run"
OP, COORD = KeyPair.from_seed(b"P" * 32), KeyPair.from_seed(b"Q" * 32)
RATE = 2.0  # untrusted adverts per signer per second, on every node
CFG = {"advert_interval_s": 0.5, "bootstrap_interval_s": 0.3, "advert_ttl_s": 30.0, "rate_per_s": RATE, "rate_burst": 3,
       "allow_private_addresses": True}


def test_have_adverts_are_paced_to_the_rate_peers_admit(tmp_path):
    nodes = []

    def node(key, store=None, **cfg):
        n = P2PNode(P2PConfig(**{**CFG, **cfg}), key, RUN, OP.public, COORD.public, store=store)
        n.start()
        nodes.append(n)
        return n

    held = tmp_path / "holder"
    try:
        boot = node(COORD)
        signed_checkpoint(held, 1, run_id=RUN, operator=OP, size=1000)
        holder = node(KeyPair.generate(), FolderStore(held, OP.public), bootstrap=boot.multiaddrs)
        listener = node(KeyPair.generate(), bootstrap=boot.multiaddrs)
        wait_for(lambda: holder.peer_id in {p.peer_id for p in listener.peers_with(1)}, "version 1 is advertised")
        before = listener.counters.snapshot()
        t0 = time.monotonic()
        for v in range(2, 22):  # a new version every 0.1 s, each kicking the adverts
            signed_checkpoint(held, v, run_id=RUN, operator=OP, size=1000)
            holder.refresh_have()
            time.sleep(0.1)
        wait_for(lambda: holder.peer_id in {p.peer_id for p in listener.peers_with(21)},
                 "the newest version is advertised in the end")
        elapsed = time.monotonic() - t0
        after = listener.counters.snapshot()
    finally:
        for n in reversed(nodes):
            n.stop()
    # unpaced, 20 kicks in ~2 s would send 20 adverts and the listener's gate (burst 3,
    # 2 per second) would drop most of them after paying to receive and check each
    assert after.get("rejected_rate-limited", 0) == 0, after
    admitted = after.get("admitted", 0) - before.get("admitted", 0)
    assert 1 <= admitted <= 2 + elapsed * RATE, (admitted, elapsed)
