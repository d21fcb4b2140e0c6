"""Workers behind NAT, across the simulated internet (issue 22, item 4).

One worker has a public address; the other sits behind a home router that masquerades
(nftables) and has a private address the core does not route. Both must register, take leases,
fetch every policy version through the region relays, have work accepted, and join the run's
libp2p topic (hear versions there) — the NAT'd one only ever dialling out. Nobody can dial it:
a connection from the operator's site to its private address fails. Runs on the namespace
harness (tests/wan/): root, `ip`, TUN and nftables, else skipped with the reason.
"""

from __future__ import annotations

import socket

import pytest

from swarmrl.procs import ProcessGroup
from tests.waiting import wait_until
from tests.wan.fixtures import SETTINGS, by_worker, tiny_model, wan_net, worker_status
from tests.wan.swarm import plan_wan_swarm
from tests.wan.topology import standard

pytestmark = pytest.mark.slow


def test_a_worker_behind_nat_leases_fetches_submits_and_joins_the_topic_without_being_dialled(tmp_path):
    topo = standard(workers=2, regions=2, nat_workers=1, rtt_ms=(40, 120), loss=0.0)
    net = wan_net(topo, tmp_path)
    model = tiny_model(tmp_path / "model")
    with net:
        wan = plan_wan_swarm(net, tmp_path / "run", model, SETTINGS)
        nat_name = "worker-2"
        assert topo.site(nat_name).behind_nat and not topo.site("worker-1").behind_nat
        try:
            with ProcessGroup(wan.plan.logs) as group:
                wan.start(group)

                def served():
                    st = wan.stats()
                    version = (st.get("policy") or {}).get("current_version") or 0
                    w = by_worker(wan, st)
                    ok = version >= 3 and all(w.get(n, {}).get("accepted", 0) > 0
                                              and (w.get(n, {}).get("policy_version") or 0) >= 2
                                              for n in wan.plan.worker_names)
                    return st if ok else None

                st = wait_until(served, 480, "versions >= 3 and both workers accepted on version >= 2",
                                every=2.0, group=group)
                workers = by_worker(wan, st)
                assert all(workers[n]["rejected"] == 0 and workers[n]["status"] == "active"
                           for n in wan.plan.worker_names)

                def heard_on_topic():
                    s = worker_status(wan, nat_name)
                    p2p = (s or {}).get("p2p") or {}
                    return p2p if p2p.get("connected", 0) > 0 and p2p.get("versions_heard") else None

                p2p = wait_until(heard_on_topic, 120, "the NAT'd worker connected and hearing versions on the topic",
                                 every=2.0, group=group)
                assert any(topo.site(nat_name).address in a for a in p2p["addrs"])  # it announces a private address

                # Nobody can dial it: its private address is not routed from the operator's site.
                def dial():
                    try:
                        socket.create_connection((topo.site(nat_name).address, 4001), timeout=3).close()
                        return True
                    except OSError:
                        return False

                assert wan.observer().call(dial) is False
                # ... while the public worker's libp2p port answers from the same place.
                assert wan.observer().call(
                    lambda: socket.create_connection((topo.site("worker-1").address, 4001), timeout=3).close()
                    or True)
                # The coordinator sees each worker at its public address: the NAT'd one at its router's.
                seen = by_worker(wan, wan.stats(operator=True))
                assert seen[nat_name]["address"] == topo.link_of(nat_name).address != topo.site(nat_name).address
                assert seen["worker-1"]["address"] == topo.site("worker-1").address
        finally:
            wan.close()
