"""The simulated internet's arithmetic, without root: the link model (tests.wan.link), the
topology's addresses and round trips, and the broadcast bound (tests.wan.topology)."""

from __future__ import annotations

import pytest

from tests.wan.link import Direction, Faults, ipv4_dst
from tests.wan.topology import Site, Topology, broadcast_bound, standard

MiB = 1024 * 1024


def test_a_packet_is_serialised_at_the_link_rate_then_propagated():
    d = Direction(rate_bps=8_000_000, delay_s=0.05, buffer_bytes=10_000_000)   # 1 MB/s
    assert d.admit(now=10.0, size=1000, draw=0.5) == pytest.approx(10.0 + 0.001 + 0.05)
    # The next one queues behind it: it starts when the first finishes.
    assert d.admit(now=10.0, size=1000, draw=0.5) == pytest.approx(10.0 + 0.002 + 0.05)
    # After the queue drained, a packet starts at once.
    assert d.admit(now=20.0, size=2000, draw=0.5) == pytest.approx(20.0 + 0.002 + 0.05)
    assert d.stats()["bytes"] == 4000 and d.stats()["packets"] == 3


def test_the_buffer_drops_the_tail_and_loss_and_cuts_drop_what_they_say():
    d = Direction(rate_bps=8_000, delay_s=0.0, buffer_bytes=2500)             # 1 kB/s, 2.5 kB of buffer
    assert d.admit(0.0, 1000, 0.9) is not None
    assert d.admit(0.0, 1000, 0.9) is not None
    assert d.admit(0.0, 1000, 0.9) is None                                     # 3 kB would not fit
    assert d.dropped["queue"] == 1
    assert d.backlog_bytes(1.0) == pytest.approx(1000)                         # one left after a second
    assert d.admit(1.0, 1000, 0.9) is not None
    lossy = Direction(rate_bps=1e9, delay_s=0.0, loss=0.01)
    assert lossy.admit(0.0, 100, 0.005) is None and lossy.admit(0.0, 100, 0.02) is not None
    assert lossy.dropped["loss"] == 1
    lossy.up = False
    assert lossy.admit(0.0, 100, 0.99) is None and lossy.dropped["down"] == 1


def test_a_partition_blocks_both_directions_between_the_groups_only():
    f = Faults()
    f.partition(["operator"], ["region-a", "worker-1"])
    assert not f.allows("operator", "worker-1") and not f.allows("region-a", "operator")
    assert f.allows("region-a", "worker-1") and f.allows("operator", "region-b")
    f.heal()
    assert f.allows("operator", "worker-1")


def test_only_ipv4_packets_have_a_destination():
    pkt = bytes([0x45]) + bytes(15) + bytes([10, 77, 0, 9]) + bytes(20)
    assert ipv4_dst(pkt) == bytes([10, 77, 0, 9])
    assert ipv4_dst(bytes([0x60]) + bytes(39)) is None and ipv4_dst(b"\x45") is None


def test_the_standard_topology_places_workers_behind_their_own_nat_with_private_addresses():
    t = standard(workers=4, regions=2, nat_workers=2, rtt_ms=(20, 300))
    assert [s.name for s in t.workers] == ["worker-1", "worker-2", "worker-3", "worker-4"]
    assert t.site("worker-4").behind_nat and t.site("worker-4").address.startswith("192.168.")
    assert t.link_of("worker-4").kind == "nat" and t.link_of("worker-4").address.startswith("10.77.")
    public = [s.address for s in t.linked()]
    assert len(set(public)) == len(public) and all(a.startswith("10.77.0.") for a in public)
    assert t.rtt_ms("worker-1", "operator") == pytest.approx(20)
    assert t.rtt_ms("worker-4", "operator") == pytest.approx(300)
    with pytest.raises(ValueError, match="not a NAT site"):
        Topology([Site("operator", "operator"), Site("w", "worker", nat="nowhere")])


def test_the_broadcast_bound_is_the_slowest_constraint_and_peers_only_lower_it():
    t = Topology([Site("operator", "operator", up_mbps=1000, down_mbps=1000),
                  Site("region-a", "region", up_mbps=400, down_mbps=400),
                  Site("region-b", "region", up_mbps=400, down_mbps=400),
                  *[Site(f"worker-{i}", "worker", up_mbps=20, down_mbps=100) for i in range(16)]])
    size = 128 * MiB
    b = broadcast_bound(t, size)
    bits = size * 8
    # 16 copies through 800 Mbit/s of relay uplink beat one copy through a 100 Mbit/s downlink.
    assert b.limit == "relay uplinks" and b.seconds == pytest.approx(16 * bits / 800e6)
    assert b.terms["worker-0 downlink"] == pytest.approx(bits / 100e6)
    assert b.terms["origin uplink"] == pytest.approx(2 * bits / 1000e6)
    p = broadcast_bound(t, size, peers=True)
    # peers add their uplinks to the relays': the same 16 copies through 1,120 Mbit/s (a computed
    # bound, not a timing)
    assert p.limit == "relay uplinks + client uplinks"
    assert p.seconds == p.terms["relay uplinks + client uplinks"] == pytest.approx(16 * bits / 1120e6)
    # A slow downlink sets the bound when it is the slowest constraint.
    slow = broadcast_bound(standard(workers=4, regions=2, nat_workers=0, worker_mbps=(10, 10)), size)
    assert slow.limit.endswith("downlink") and slow.seconds == pytest.approx(bits / 10e6)
