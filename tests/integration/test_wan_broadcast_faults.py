"""A relay's uplink cut in the middle of a broadcast, across the simulated internet (issue 22,
item 5): the clients that were downloading from it finish from the other region's relay, and
every one holds the verified version.

Runs on the namespace harness (tests/wan/): root, `ip`, TUN and nftables, else skipped with the
reason. Rates are a tenth of the issue's (origin 100 Mbit/s, relays 40, workers 5-20 down) and
the checkpoint is 12 MiB, so the broadcast takes seconds, not minutes, on this shared machine.
"""

from __future__ import annotations

import pytest

from tests.wan.broadcast import RELAY_PORT, run_broadcast
from tests.wan.fixtures import wan_net
from tests.wan.topology import standard

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def test_a_relay_cut_mid_broadcast_leaves_its_clients_to_finish_from_the_other_relay(tmp_path):
    topo = standard(workers=4, regions=2, nat_workers=1, rtt_ms=(40, 160)).scaled(0.1)
    net = wan_net(topo, tmp_path)
    cut = "region-a"
    cut_url = f"http://{topo.site(cut).address}:{RELAY_PORT}"
    other_url = f"http://{topo.site('region-b').address}:{RELAY_PORT}"

    def cut_uplink():
        net.control({"op": "link", "site": cut, "up": False, "dir": "up"})

    with net:
        result = run_broadcast(net, tmp_path / "bc", 12 * MiB, shard_mb=1, timeout_s=300,
                               during=[(1.5, cut_uplink)])
        stats = net.stats()
    # The cut happened while the relay was serving: it sent some shards, then nothing more.
    assert stats["links"][cut]["up"]["dropped"]["down"] > 0
    # Every client holds the verified version (run_broadcast waits for each one's fetch()).
    for c in result.clients:
        assert (tmp_path / "bc" / "clients" / c.name / "0").is_dir(), c.name
    by_source = [_sources(tmp_path / "bc", c.name) for c in result.clients]
    # Some took bytes from the cut relay before the cut, and all of them finished from the other.
    assert any(s.get(cut_url, 0) > 0 for s in by_source), by_source
    for s in by_source:
        assert s.get(other_url, 0) > 0 and sum(s.values()) >= 12 * MiB, by_source


def _sources(work, name: str) -> dict[str, int]:
    import json

    return json.loads((work / "clients" / f"{name}.json").read_text())["by_source"]
