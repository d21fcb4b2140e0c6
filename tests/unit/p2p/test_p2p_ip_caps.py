"""A holder's serving and waiting slots are shared among the peers' addresses as well as their
keys (`shardcast.p2p.slots`, `shardcast.p2p._host.remote_address`). Before, the cap was per
peer id alone: as many fresh keys from one machine as a table has slots, each holding one,
kept every other peer out ("busy") for as long as they kept it full.

The bookkeeping is tested pure; the host's part on real libp2p connections on loopback, the
attacker dialling from 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux; py-libp2p's TCP
transport binds a dial's source address with `dial_with_source`)."""

from __future__ import annotations

import functools
import time

import pytest

from shardcast.p2p.slots import Slots


class _Table:
    """A `Slots` table and the (peer, address) of each transfer it cancelled."""

    def __init__(self, total: int, per_peer: int = 2, per_address: int = 2):
        self.slots, self.cancelled = Slots(total, per_peer, per_address), []

    def take(self, peer: str, address: str, t: float):
        return self.slots.take(peer, address, t, lambda: self.cancelled.append((peer, address)))

    def held_by(self, address: str) -> int:
        return sum(1 for s in self.slots.live() if s.address == address)


def test_keys_of_one_address_holding_one_slot_each_yield_to_a_peer_of_another_address():
    table = _Table(4)
    assert all(table.take(f"sybil{i}", "6.6.6.6", float(i)) for i in range(4))  # free slots: no share applies
    assert table.take("honest", "1.1.1.1", 10.0) is not None
    assert table.cancelled == [("sybil0", "6.6.6.6")]       # the oldest of the address over its share
    assert table.take("sybil9", "6.6.6.6", 11.0) is None    # a fresh key of that address takes nothing back
    assert table.take("honest2", "1.1.1.1", 12.0) is not None  # its address holds 1, under its share of 2
    assert table.held_by("6.6.6.6") == 2 and table.held_by("1.1.1.1") == 2
    assert table.take("honest3", "1.1.1.1", 13.0) is None   # at its share, it takes nothing more
    assert len(table.slots.live()) == 4


def test_a_newcomer_address_takes_from_an_address_at_its_share_and_an_address_under_it_is_kept():
    table = _Table(4)
    for i, addr in enumerate(["6.6.6.6", "6.6.6.6", "1.1.1.1", "7.7.7.7"]):
        table.take(f"p{i}", addr, float(i))
    assert table.take("p9", "1.1.1.1", 9.0) is None   # every address at or under its share, its own holds one
    assert table.take("n", "2.2.2.2", 10.0) is not None
    assert table.cancelled == [("p0", "6.6.6.6")]     # the one address at its share
    assert table.take("m", "3.3.3.3", 11.0) is None   # nobody holds a share now: busy


def test_an_address_that_finished_a_transfer_here_is_taken_back_last():
    table = _Table(4)
    done = table.take("old", "6.6.6.6", 0.0)
    table.slots.release(done, finished=True)
    for i, peer in enumerate(["old", "s1", "s2", "s3"]):
        table.take(peer, "6.6.6.6", 1.0 + i)
    table.take("n", "1.1.1.1", 9.0)
    assert table.cancelled == [("s1", "6.6.6.6")]


def test_every_peer_of_a_local_swarm_on_one_address_is_served_while_slots_are_free():
    """127.0.0.1 (or a NAT) is one address: its share holds only against other addresses."""
    table = _Table(8)
    assert all(table.take(f"p{i}", "127.0.0.1", float(i)) for i in range(8))
    assert table.take("p9", "127.0.0.1", 9.0) is None  # full, its address over its share, every peer holds one
    assert table.cancelled == []


def test_the_peer_rule_still_holds_within_one_address():
    table = _Table(4, per_address=4)
    table.take("a", "127.0.0.1", 0.0), table.take("a", "127.0.0.1", 1.0)
    table.take("b", "127.0.0.1", 2.0), table.take("c", "127.0.0.1", 3.0)
    assert table.take("a", "127.0.0.1", 4.0) is None                 # its two, at most
    assert table.take("d", "127.0.0.1", 5.0) is not None and table.cancelled == [("a", "127.0.0.1")]


def test_an_unknown_address_is_one_address_like_any_other():
    table = _Table(2)
    table.take("x", None, 0.0), table.take("y", None, 1.0)
    assert table.take("z", "1.1.1.1", 2.0) is not None and table.cancelled == [("x", None)]


def test_an_address_share_below_the_peer_cap_is_refused():
    with pytest.raises(ValueError):
        Slots(4, 2, 1)


def test_remote_address_is_keyed_as_the_http_limits_key_it():
    from shardcast.p2p._host import remote_address

    class _Stream:
        def __init__(self, remote):
            self.remote = remote

        def get_remote_address(self):
            if isinstance(self.remote, Exception):
                raise self.remote
            return self.remote

    assert remote_address(_Stream(("203.0.113.7", 4001))) == "203.0.113.7"
    assert remote_address(_Stream(("2001:db8:1:2:3:4:5:6", 4001))) == "2001:db8:1:2::/64"
    assert remote_address(_Stream(("::ffff:203.0.113.7", 4001))) == "203.0.113.7"
    assert remote_address(_Stream(None)) is None
    assert remote_address(_Stream(OSError("gone"))) is None
    assert remote_address(object()) is None


# -- on real libp2p connections -------------------------------------------------------------

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from p2p_harness import Nodes, signed_checkpoint, wait_for  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402

RUN = "ipcap-run"
OP, COORD = KeyPair.from_seed(b"I" * 32), KeyPair.from_seed(b"J" * 32)
FAST = dict(advert_interval_s=0.3, bootstrap_interval_s=0.3, allow_private_addresses=True, rate_per_s=5.0)
ELSEWHERE = "127.0.0.2"


def _dial_from(node, source_ip: str) -> None:
    """Every TCP dial of `node` leaves from `source_ip` (another loopback address)."""
    for t in node._host.host.get_network().transport_manager.get_transports():
        if callable(getattr(t, "dial_with_source", None)):
            t.dial = functools.partial(t.dial_with_source, source=(source_ip, 0))


def _silent_stream(attacker, target) -> None:
    """One shard-exchange stream from `attacker` to `target` that never sends its request."""
    from libp2p.peer.id import ID

    from shardcast.p2p import wire
    from shardcast.p2p._host import _peer_info

    async def go():
        host = attacker._host.host
        await host.connect(_peer_info(target.peer_id, tuple(target.multiaddrs)))
        await host.new_stream(ID.from_base58(target.peer_id), [wire.PROTOCOL_ID])

    attacker._call(go)


def test_keys_from_one_address_holding_one_waiting_slot_each_do_not_keep_another_address_out(tmp_path):
    """A holder with one serving slot waits for 4 requests at once. Four throw-away keys from
    127.0.0.2, one silent stream each, filled that table for the 5 s request read deadline,
    again and again: the worker (127.0.0.1) got "busy". Now its stream takes the oldest of
    that address's, which holds more than its share against an address holding none."""
    from shardcast.p2p import FolderStore, PeerShards

    signed_checkpoint(tmp_path / "held", 1, run_id=RUN, operator=OP, size=1000)
    node = Nodes({**FAST, "max_concurrent_serves": 1}, RUN, OP, COORD)
    try:
        boot = node(COORD, max_dial_peers=0)
        b = {"bootstrap": boot.multiaddrs}
        holder = node(KeyPair.generate(), FolderStore(tmp_path / "held", OP.public), **b)
        worker = node(KeyPair.generate(), **b)
        attackers = [node(KeyPair.generate(), max_dial_peers=0) for _ in range(4)]
        wait_for(lambda: holder.peer_id in {p.peer_id for p in worker.peers_with(1)}, "the holder advertised")
        for a in attackers:
            _dial_from(a, ELSEWHERE)
            _silent_stream(a, holder)
        wait_for(lambda: len(holder._host._waiting.live()) == 4, "the waiting table filled")
        held = {(s.peer, s.address) for s in holder._host._waiting.live()}
        assert held == {(a.peer_id, ELSEWHERE) for a in attackers}  # read off the TCP connection
        t0 = time.monotonic()
        assert PeerShards(worker, OP.public, attempts=1).manifest(1).version == 1
        assert time.monotonic() - t0 < 3.0  # not after the attackers' read deadline
        # the holder counts a reply once it has written it: the worker may read it first
        wait_for(lambda: holder.counters.snapshot().get("served", 0) >= 1, "the holder counted the reply", timeout=5.0)
    finally:
        node.stop_all()
