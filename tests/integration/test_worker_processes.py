"""The worker daemon as a contributor runs it (`python -m swarmrl worker --config FILE`)
against the real coordinator process, with weights from a real shardcast origin.

State transitions covered: coordinator down 30 s and back; SIGTERM in the middle of a
batch; a crash with finished work in the spool, then a restart; a new policy version
announced mid-run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from worker_swarm import MiniSwarm, worker_status

from tests.waiting import wait_until


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from swarmrl.modelkit import init_tiny_model

    d = tmp_path_factory.mktemp("model") / "tiny"
    init_tiny_model(d, hidden_size=64, num_layers=2, seed=0)
    return d


@pytest.fixture
def make_swarm(tmp_path, tiny_model):
    made: list[MiniSwarm] = []

    def make(**kw) -> MiniSwarm:
        s = MiniSwarm(tmp_path, tiny_model, **kw)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


def submitted(s: MiniSwarm) -> int:
    return sum(s.stats()["submissions"].values())


def batch_in_progress(cfg) -> bool:
    return (worker_status(cfg) or {}).get("phase", "").startswith("generating")


def crash_coordinator_mid_batch(s: MiniSwarm):
    """Coordinator up with version 0, one worker that has submitted; the coordinator is then
    killed (no goodbye to anyone) while the worker is generating. Returns the worker and its config."""
    s.start_coordinator()
    s.publish(0)
    w, cfg = s.start_worker()
    wait_until(lambda: submitted(s) >= 1, what="first submissions")
    wait_until(lambda: batch_in_progress(cfg), every=0.02, what="a batch in progress")
    s.coordinator.kill()
    return w, cfg


def test_coordinator_down_30s_then_back_worker_recovers_and_loses_nothing(make_swarm):
    # Default heartbeat settings (6 x 5 s): the restarted coordinator measures silence from
    # its own start, so an outage of 30 s must not make the workers "gone".
    s = make_swarm(group_size=8, max_tokens=100)
    w, cfg = crash_coordinator_mid_batch(s)
    wait_until(lambda: (worker_status(cfg) or {}).get("coordinator_up") is False, what="worker sees the outage")
    # while it is down the worker finishes its leases into the spool
    wait_until(lambda: (worker_status(cfg) or {}).get("spool_pending", 0) >= 1, what="work spooled")
    time.sleep(30)
    assert w.alive, w.tail()
    st = worker_status(cfg)
    assert st["coordinator_up"] is False and st["spool_pending"] >= 1
    s.start_coordinator()
    before = submitted(s)
    wait_until(lambda: submitted(s) >= before + 3, timeout=120, what="work after the outage")
    wait_until(lambda: (worker_status(cfg) or {}).get("coordinator_up") is True, what="worker sees it back")
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0, w.tail()
    stats = s.stats()
    # every finished submission reached the coordinator: nothing pending, nothing set aside
    spool = s.root / "worker" / "spool"
    assert not list((spool / "pending").glob("*.json")), "finished work left unsent"
    assert not list((spool / "rejected").glob("*.json")), [p.read_text()[:300] for p in (spool / "rejected").glob("*")]
    assert stats["leases"].get("active", 0) == 0
    assert stats["leases"].get("submitted", 0) == sum(stats["submissions"].values())


def test_sigterm_mid_batch_finishes_the_batch_releases_the_rest_and_exits_0(make_swarm):
    s = make_swarm(group_size=8, max_tokens=60)
    s.start_coordinator()
    s.publish(0)
    w, cfg = s.start_worker(max_tasks=4)
    wait_until(lambda: batch_in_progress(cfg), every=0.02, what="a batch in progress")
    w.signal(signal.SIGTERM)
    assert w.wait(120) == 0, w.tail()
    leases = s.stats()["leases"]
    assert leases.get("active", 0) == 0, leases            # nothing left hanging
    assert leases.get("submitted", 0) >= 1, leases          # the batch in progress was finished and sent
    assert leases.get("submitted", 0) + leases.get("released", 0) == sum(leases.values())
    lines = [json.loads(x) for x in w.log.read_text().splitlines() if x.startswith("{")]
    assert any("stopping" in x["msg"] for x in lines) and any(x["msg"] == "worker stopped" for x in lines)


def test_restart_with_spooled_submissions_sends_each_exactly_once(make_swarm):
    s = make_swarm(group_size=8, max_tokens=100)
    w, cfg = crash_coordinator_mid_batch(s)
    wait_until(lambda: (worker_status(cfg) or {}).get("spool_pending", 0) >= 2, what="work spooled")
    w.kill()                                   # the worker crashes with finished work on disk
    spooled = sorted(p.stem for p in (s.root / "worker" / "spool" / "pending").glob("*.json"))
    assert len(spooled) >= 2
    s.start_coordinator()
    w2, cfg = s.start_worker()
    wait_until(lambda: not list((s.root / "worker" / "spool" / "pending").glob("*.json")), timeout=120,
               what="the spool to drain")
    w2.signal(signal.SIGTERM)
    assert w2.wait(60) == 0, w2.tail()
    stats = s.stats()
    assert stats["leases"].get("submitted", 0) == sum(stats["submissions"].values())
    # no lease was sent twice: the coordinator never saw a duplicate
    assert s.metric("swarmrl_coordinator_rejections_total", reason="duplicate_submission") == 0
    assert not list((s.root / "worker" / "spool" / "rejected").glob("*.json"))


def test_new_policy_version_mid_run_is_picked_up_within_the_async_window(make_swarm):
    s = make_swarm(async_window=1)
    s.start_coordinator()
    s.publish(0)
    w, cfg = s.start_worker()
    wait_until(lambda: submitted(s) >= 1, what="work on v0")
    s.publish(1)
    s.publish(2)        # v0 is now outside the window: leases allow only 1..2
    wait_until(lambda: (worker_status(cfg) or {}).get("policy_version") == 2, timeout=120, what="v2 loaded")
    n = submitted(s)
    wait_until(lambda: submitted(s) >= n + 2, what="work on v2")
    # `swarmrl worker status` prints what the running worker's /status says
    out = subprocess.run([sys.executable, "-m", "swarmrl", "worker", "--config", str(s.root / "worker.toml"),
                          "--json", "status"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["policy_version"] == 2 and shown["run_id"] == "itest" and shown["submitted"] >= 2
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0, w.tail()
    by_version = {r["policy_version"]: r["submissions"] for r in s.stats()["rewards_by_version"]}
    assert by_version.get(2, 0) >= 2, by_version
    assert s.metric("swarmrl_coordinator_rejections_total", reason="bad_version") == 0
