"""Network faults under a running swarm, across the simulated internet (issue 22, item 5).

- a region (its relay and a worker) partitioned from the operator for 60 s: the worker carries
  on with what it holds (its leases, its policy; finished work waits in its spool), and after
  the partition the relay and the worker catch up and every submission spooled is delivered;
- a worker's link flapping (down, up, every few seconds): its spool delivers every finished
  submission, each stored once;
- the coordinator moved to a new address behind the same name: the workers follow (they find
  it by name, `coordinator.wan`, in every namespace's /etc/hosts) without a restart.

(A relay's uplink cut mid-broadcast: tests/integration/test_wan_broadcast_faults.py.) Runs on
the namespace harness (tests/wan/): root, `ip`, TUN and nftables, else skipped with the reason.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from protocol.config import load_config
from swarmrl.procs import ProcessGroup, write_config
from tests.waiting import wait_until
from tests.wan.fixtures import (
    SETTINGS, by_worker, spooled_leases, stored_leases, tiny_model, wan_net, worker_status,
)
from tests.wan.swarm import COORDINATOR_NAME, RELAY_PORT, plan_wan_swarm
from tests.wan.topology import standard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@contextmanager
def running(tmp_path, topo, **overrides):
    """The test swarm (2 workers) on `topo`, warmed up: versions come and both have work accepted."""
    from dataclasses import replace

    net = wan_net(topo, tmp_path)
    model = tiny_model(tmp_path / "model")
    with net:
        wan = plan_wan_swarm(net, tmp_path / "run", model, replace(SETTINGS, overrides=overrides))
        try:
            with ProcessGroup(wan.plan.logs) as group:
                wan.start(group)
                wait_until(lambda: progress(wan, 2, 1), 480, "versions >= 2 and both workers accepted",
                           every=2.0, group=group)
                yield wan, group
        finally:
            wan.close()


def progress(wan, version: int, accepted: int, names=None) -> dict | None:
    """The per-worker stats once the policy reached `version` and each worker of `names`
    (default: all) has at least `accepted` groups accepted."""
    st = wan.stats()
    if ((st.get("policy") or {}).get("current_version") or 0) < version:
        return None
    w = by_worker(wan, st)
    names = names or wan.plan.worker_names
    return w if all(w.get(n, {}).get("accepted", 0) >= accepted for n in names) else None


class SpoolWatch:
    """Collects, every `every_s`, the lease ids that sit in a worker's spool/pending/ (finished,
    not yet acknowledged): every one of them must reach the coordinator."""

    def __init__(self, wan, name: str, every_s: float = 0.5):
        self.wan, self.name, self.every_s = wan, name, every_s
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _loop(self):
        while not self._stop.wait(self.every_s):
            self.seen |= spooled_leases(self.wan, self.name)


def delivered_once(wan, name: str, leases: set[str]):
    """The stored counts once none of `leases` is pending and each is stored exactly once by the
    coordinator; fails at once when the coordinator refused one for good (spool/rejected/)."""
    refused = leases & spooled_leases(wan, name, "rejected")
    if refused:
        import json

        why = {lid: json.loads((wan.plan.root / name / "spool" / "rejected" / f"{lid}.json").read_text())["reason"]
               for lid in sorted(refused)}
        raise AssertionError(f"the coordinator refused {len(refused)} of {len(leases)} spooled submissions: {why}")
    if leases & spooled_leases(wan, name):
        return None
    stored = stored_leases(wan, leases)
    return stored if all(n == 1 for n in stored.values()) else None


def test_a_region_partitioned_for_60_s_carries_on_and_catches_up_losing_nothing(tmp_path):
    """The coordinator's lease TTL and its patience with silent workers must outlast the
    partition: a submission for a lease that expired meanwhile (`lease_ttl_s`, 60 s by default)
    or that was returned because its worker missed `join.missed_heartbeats_gone` heartbeats (6 x
    5 s = 30 s by default) is refused (410 lease_expired / lease_closed; its task went back to
    the pool). With the defaults, a run of this test lost 1 of 229 spooled submissions that way;
    an operator whose swarm should ride out 60 s partitions sets both above 60 s, as here."""
    topo = standard(workers=2, regions=2, nat_workers=0, rtt_ms=(40, 120))
    cut_off = ["region-a", "worker-1"]
    rest = ["operator", "region-b", "worker-2"]
    with running(tmp_path, topo, coordinator={"lease_ttl_s": 180.0, "join": {"missed_heartbeats_gone": 30}}) as (wan, group):
        before = by_worker(wan, wan.stats())
        with SpoolWatch(wan, "worker-1") as spool:
            wan.net.control({"op": "partition", "a": cut_off, "b": rest})
            t0 = time.monotonic()
            time.sleep(50)
            # The cut-off side carries on with what it holds: its relay still serves it the
            # versions it has, and the worker has kept what it finished (its spool, if anything).
            held = _relay_versions(wan, "worker-1", "region-a")
            time.sleep(60 - (time.monotonic() - t0))
            status1 = worker_status(wan, "worker-1")
            during = by_worker(wan, wan.stats())
            v_during = wan.stats()["policy"]["current_version"]
            wan.net.control({"op": "heal"})
            # After: the worker's finished work arrives, and it catches up with the version.
            wait_until(lambda: progress(wan, v_during + 2, during["worker-1"]["accepted"] + 1, ["worker-1"]), 300,
                       "worker-1 has new work accepted and versions moved on", every=2.0, group=group)
            wait_until(lambda: delivered_once(wan, "worker-1", spool.seen), 120,
                       "every submission worker-1 spooled stored once", every=2.0, group=group)
        # While cut off: the worker knew it (and kept its finished work, delivered above), its
        # relay served the versions it held, and the other side went on training without them.
        assert status1["coordinator_up"] is False
        assert held["complete"] and max(held["complete"]) >= before["worker-1"]["policy_version"], held
        assert during["worker-2"]["accepted"] > before["worker-2"]["accepted"]
        assert not spooled_leases(wan, "worker-1", "rejected"), "a submission was refused after the partition"
        # The worker caught up with the version (the coordinator learns it from its heartbeats,
        # every 5 s: a worker that caught up within a second of the heal shows it at the next one).
        assert wait_until(lambda: by_worker(wan, wan.stats()).get("worker-1", {}).get("policy_version", -1) >= v_during,
                          30, "worker-1 reports a version at least as new as during the partition", every=1.0,
                          group=group)
        # The cut-off relay caught up: it serves the newest version the coordinator announced.
        newest = wan.stats()["policy"]["current_version"]
        assert wait_until(lambda: (wan.plan.root / "region-a" / "versions" / str(newest)).exists()
                          or (wan.plan.root / "relay" / "versions" / str(newest)).exists(), 120,
                          "region-a's relay holds the newest version", every=2.0, group=group)


def test_a_flapping_link_delivers_every_spooled_submission_once(tmp_path):
    topo = standard(workers=2, regions=2, nat_workers=0, rtt_ms=(40, 120))
    with running(tmp_path, topo) as (wan, group):
        accepted0 = by_worker(wan, wan.stats())["worker-2"]["accepted"]
        with SpoolWatch(wan, "worker-2", every_s=0.25) as spool:
            for _ in range(8):   # 48 s: 3 s down, 3 s up
                wan.net.control({"op": "link", "site": "worker-2", "up": False})
                time.sleep(3)
                wan.net.control({"op": "link", "site": "worker-2", "up": True})
                time.sleep(3)
            dropped = wan.net.stats()["links"]["worker-2"]["up"]["dropped"]["down"]
            stored = wait_until(lambda: delivered_once(wan, "worker-2", spool.seen), 180,
                                "every submission worker-2 spooled stored once", every=2.0, group=group)
        assert dropped > 0, "the flaps dropped nothing: the worker was not talking"
        assert len(stored) >= 2, f"too little went through the spool to show anything: {stored}"
        assert not spooled_leases(wan, "worker-2", "rejected"), "a submission was refused after the flaps"
        wait_until(lambda: progress(wan, 0, accepted0 + 1, ["worker-2"]), 120, "worker-2 accepted again",
                   every=2.0, group=group)


def test_workers_follow_the_coordinator_to_a_new_address_behind_the_same_name(tmp_path):
    from coordinator.config import CoordinatorConfig

    topo = standard(workers=2, regions=2, nat_workers=1, rtt_ms=(40, 120))
    new_address = "10.77.9.1"
    with running(tmp_path, topo) as (wan, group):
        net = wan.net
        old_address = net.hosts[COORDINATOR_NAME]
        path = wan.plan.configs["coordinator"]
        cfg = load_config(CoordinatorConfig, path)
        group.stop("coordinator")
        net.add_address("operator", new_address)
        write_config(path, cfg.model_copy(update={
            "host": new_address, "limits": cfg.limits.model_copy(update={
                "exempt_addresses": [*cfg.limits.exempt_addresses, new_address]})}))
        net.point_name(COORDINATOR_NAME, new_address)
        wan.start_role(group, "coordinator")
        moved = time.monotonic()
        v_moved = None

        def new_work():
            nonlocal v_moved
            st = wan.stats()   # observed_url follows net.hosts
            if not st:
                return None
            if v_moved is None:
                v_moved = st["policy"]["current_version"]
            return progress(wan, v_moved + 2, 0) and {n: w for n, w in by_worker(wan, st).items()}

        base = by_worker(wan, wan.stats()) if wan.stats() else {}
        wait_until(new_work, 300, "versions after the move", every=2.0, group=group,
                   may_exit=lambda n: n == "coordinator")
        before = {n: base.get(n, {}).get("accepted", 0) for n in wan.plan.worker_names}
        wait_until(lambda: progress(wan, 0, 0) and all(by_worker(wan, wan.stats())[n]["accepted"] > before[n]
                                                        for n in wan.plan.worker_names), 300,
                   "both workers accepted at the new address", every=2.0, group=group,
                   may_exit=lambda n: n == "coordinator")
        # Nothing answers at the old address any more; the workers were never restarted.
        assert wan.observer().call(lambda: _refused(old_address, cfg.port)), "the old address still answers"
        assert all(group.get(n).alive for n in wan.plan.worker_names)
        assert time.monotonic() - moved < 600


def _relay_versions(wan, site: str, region: str) -> dict:
    """GET /v1/versions of `region`'s relay, asked from `site`'s namespace."""
    import httpx

    from tests.wan.netns import InNamespace

    url = f"http://{wan.net.topo.site(region).address}:{RELAY_PORT}/v1/versions"
    probe = InNamespace(wan.net, site)
    try:
        r = probe.call(lambda: httpx.get(url, timeout=10))
        assert r.status_code == 200, r.text
        return r.json()
    finally:
        probe.close()


def _refused(address: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((address, port), timeout=3).close()
        return False
    except OSError:
        return True
