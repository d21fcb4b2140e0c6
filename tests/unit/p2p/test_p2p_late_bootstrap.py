"""A node started before its bootstrap peer reaches it at the next redial (py-libp2p's own
60 s block of a peer whose dial failed must not delay the swarm layer's redials)."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p import P2PConfig, P2PNode, bootstrap_multiaddr  # noqa: E402

OP, COORD = KeyPair.from_seed(b"B" * 32), KeyPair.from_seed(b"D" * 32)


def test_a_bootstrap_peer_that_starts_later_is_reached():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    boot = bootstrap_multiaddr("127.0.0.1", port, COORD.peer_id)
    early = P2PNode(P2PConfig(bootstrap=[boot], bootstrap_interval_s=0.3), KeyPair.generate(), "r", OP.public,
                    COORD.public, role="early")
    late = None
    early.start()
    try:
        deadline = time.monotonic() + 30
        while early.counters.snapshot() == {} and time.monotonic() < deadline and not early.connected_peers():
            time.sleep(0.3)  # let at least one dial fail
        time.sleep(1.0)
        late = P2PNode(P2PConfig(listen_port=port), COORD, "r", OP.public, COORD.public, role="bootstrap")
        late.start()
        deadline = time.monotonic() + 30
        while not early.connected_peers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert early.connected_peers() == [COORD.peer_id]
    finally:
        early.stop()
        if late is not None:
            late.stop()
