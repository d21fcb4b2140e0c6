"""Inbound connections are counted from what is live and shared among remote addresses
(`shardcast.p2p.inbound`). Before, py-libp2p's limiter spent a token for good on every inbound
connection accepted (its handler waits for the swarm to stop), so a node took 250 inbound
connections in its life and refused every later one; and nothing stopped one machine's keys
from holding all of them."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, wait_for  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402
from shardcast.p2p.inbound import admit  # noqa: E402

RUN = "inbound-run"
OP, COORD = KeyPair.from_seed(b"K" * 32), KeyPair.from_seed(b"L" * 32)
LONE = dict(allow_private_addresses=True, max_dial_peers=0)  # no bootstrap, dials nobody itself
ELSEWHERE = "127.0.0.2"


def test_an_address_gets_any_room_below_half_the_cap_and_its_share_above():
    live = Counter({"6.6.6.6": 9})
    assert admit("6.6.6.6", live, limit=20, per_address=4)        # 9 of 20: room nobody else wants
    live["6.6.6.6"] = 10
    assert not admit("6.6.6.6", live, limit=20, per_address=4)    # half full: past its share
    assert admit("1.1.1.1", live, limit=20, per_address=4)
    live["1.1.1.1"] = 4
    assert not admit("1.1.1.1", live, limit=20, per_address=4)
    assert admit(None, live, limit=20, per_address=4)             # an unknown address is one address
    assert not admit("2.2.2.2", Counter({"a": 10, "b": 10}), limit=20, per_address=4)  # full


def _dial_from(node, source_ip: str) -> None:
    import functools

    for t in node._host.host.get_network().transport_manager.get_transports():
        if callable(getattr(t, "dial_with_source", None)):
            t.dial = functools.partial(t.dial_with_source, source=(source_ip, 0))


def _connect(node, target, then_disconnect: bool = False) -> bool:
    """Whether `node` gets a connection to `target` (closed again if `then_disconnect`)."""
    import trio
    from libp2p.peer.id import ID

    from shardcast.p2p._host import NET_ERRORS, _peer_info

    async def go() -> bool:
        host, pid = node._host.host, ID.from_base58(target.peer_id)
        try:
            await host.connect(_peer_info(target.peer_id, tuple(target.multiaddrs)))
            await trio.sleep(0.2)  # a refused connection is closed by the target right after accept
        except NET_ERRORS:
            return False
        ok = pid in host.get_connected_peers()
        if then_disconnect:
            await host.disconnect(pid)
        return ok

    return node._call(go)


def _inbound_at(node) -> int:
    async def count() -> int:
        return len(node._host.host.get_network().get_connections())

    return node._call(count)


def _connection_handlers(node) -> int:
    """Tasks of `node`'s trio thread handling one inbound TCP connection each."""
    import trio

    async def count() -> int:
        n, stack = 0, [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            n += task.name.endswith("serve_listeners._run_handler")
            stack.extend(t for nursery in task.child_nurseries for t in nursery.child_tasks)
        return n

    return node._call(count)


def test_an_inbound_connection_closed_leaves_no_task_behind():
    """py-libp2p's handler of an inbound connection waits for the swarm to stop: a task and its
    connection's objects kept for the node's life per connection ever accepted."""
    node = Nodes(LONE, RUN, OP, COORD)
    try:
        target = node(KeyPair.generate())
        for _ in range(3):
            assert _connect(node(KeyPair.generate()), target, then_disconnect=True)
        wait_for(lambda: _connection_handlers(target) == 0, "the closed connections' handlers ended", timeout=5.0)
        peer = node(KeyPair.generate())
        assert _connect(peer, target) and _connection_handlers(target) == 1  # a live one keeps its handler
    finally:
        node.stop_all()


def test_a_node_takes_inbound_connections_after_more_have_come_and_gone_than_its_cap():
    node = Nodes(LONE, RUN, OP, COORD)
    try:
        target = node(KeyPair.generate())
        target._host.host.get_network()._inbound_limiter.total_tokens = 2
        for _ in range(3):
            peer = node(KeyPair.generate())
            assert _connect(peer, target, then_disconnect=True)
            wait_for(lambda: _inbound_at(target) == 0, "the connection gone at the target")
        assert _connect(node(KeyPair.generate()), target)
    finally:
        node.stop_all()


def test_keys_of_one_address_cannot_take_every_inbound_connection():
    node = Nodes(LONE, RUN, OP, COORD)
    try:
        target = node(KeyPair.generate())
        limiter = target._host.host.get_network()._inbound_limiter
        limiter.total_tokens, limiter.per_address = 4, 1
        sybils = [node(KeyPair.generate()) for _ in range(4)]
        for s in sybils:
            _dial_from(s, ELSEWHERE)
        took = [_connect(s, target) for s in sybils]
        assert took == [True, True, False, False]  # any room below half the cap, then its share (1)
        assert _connect(node(KeyPair.generate()), target)  # from 127.0.0.1
    finally:
        node.stop_all()
