"""The coordinator as the swarm layer's bootstrap peer (coordinator.p2p), over its real HTTP API
and a real libp2p listener node on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from coordinator import p2p
from protocol.messages import RunInfo

FAST = {"advert_interval_s": 0.5, "bootstrap_interval_s": 0.3}
T = 30.0


def run_info(s) -> RunInfo:
    r = s.http.get("/v1/run")
    assert r.status_code == 200, r.text
    return RunInfo.model_validate_json(r.content)


def test_other_server_processes_advertise_the_leaders_node_from_its_file(make_swarm):
    s = make_swarm(workers=2, p2p={"bootstrap": []})
    assert run_info(s).p2p_bootstrap == []
    addr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGghtmHTavgHWYNuQzr54QNcVk8Zwb9HY5WAsArQuzR1V"
    (s.cfg.data_dir / p2p.ADDR_FILE).write_text(json.dumps([addr]))
    assert run_info(s).p2p_bootstrap == [addr]
    (s.cfg.data_dir / p2p.ADDR_FILE).write_text("not json")
    assert run_info(s).p2p_bootstrap == []


def test_disabled_p2p_starts_nothing_and_advertises_nothing(make_swarm):
    s = make_swarm(p2p={"enabled": False})
    p2p.start(s.ctx)
    assert s.ctx.p2p is None and run_info(s).p2p_bootstrap == []
    assert s.publish(0).status_code == 200  # and the policy route works as before


def test_the_coordinator_node_is_advertised_and_announces_versions(make_swarm):
    pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")
    from shardcast.p2p import P2PConfig, P2PNode

    s = make_swarm(p2p=FAST)
    assert s.publish(0).status_code == 200  # before the node starts: announced by the catch-up
    p2p.start(s.ctx)
    listener = None
    try:
        node = s.ctx.p2p.node
        boot = run_info(s).p2p_bootstrap
        assert boot == node.multiaddrs and boot[0].endswith("/p2p/" + s.ctx.key.peer_id)
        assert json.loads((s.cfg.data_dir / p2p.ADDR_FILE).read_text()) == boot
        listener = P2PNode(P2PConfig(**FAST, bootstrap=boot), s.workers[0] if s.workers else s.new_worker(),
                           s.cfg.run_id, s.operator.public, s.ctx.key.public, role="listener")
        listener.start()
        deadline = time.monotonic() + T
        while not listener.connected_peers() and time.monotonic() < deadline:
            time.sleep(0.05)
        asyncio.run(p2p.catch_up(s.ctx))
        assert listener.wait_for_version(None, T) == 0
        assert s.publish(1).status_code == 200  # the route announces at once
        assert listener.wait_for_version(0, T) == 1
        assert listener.view.version(1).manifest is not None  # the operator-signed manifest travels along
        port = boot[0].split("/tcp/")[1].split("/")[0]
    finally:
        if listener is not None:
            listener.stop()
        p2p.stop(s.ctx)
    assert s.ctx.p2p is None and not (s.cfg.data_dir / p2p.ADDR_FILE).exists()
    # a restart with listen_port 0 asks for the same port again, so learned multiaddrs stay valid
    p2p.start(s.ctx)
    try:
        assert s.ctx.p2p.node.multiaddrs[0].split("/tcp/")[1].split("/")[0] == port
    finally:
        p2p.stop(s.ctx)
