"""The daemon against a fake coordinator in this process: the whole loop, its failure modes.

Real HTTP on loopback, the real engine on a tiny model, real proofs; only the coordinator is
a stand-in (tests/integration/test_worker*.py use the real one in separate processes).
"""

from __future__ import annotations

import base64
import time

import pytest
import torch

from protocol.lm import completion_outputs, load_model
from protocol.proof import verify_proof
from tests.waiting import wait_until


def test_daemon_joins_leases_generates_and_submits_verifiable_rollouts(fake, versions, start_daemon, tiny_model):
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 3, what="three submissions")
    r.stop()
    assert r.error is None
    wid = r.daemon.worker_id
    assert fake.workers[wid]["hardware"].cpu_count >= 1
    model = load_model(str(tiny_model))
    for s in list(fake.submissions.values())[:3]:
        body = s["body"]
        lease = fake.leases[body.lease_id]
        assert body.policy_version == 0 and len(body.completions) == len(lease.seeds)
        outs = completion_outputs(model, lease.prompt_token_ids, [c.token_ids for c in body.completions])
        for c, (hidden, _) in zip(body.completions, outs):
            assert 1 <= len(c.token_ids) <= 6
            assert (c.finish_reason == "eos") == (c.token_ids[-1] == 1)
            stats = verify_proof(hidden, base64.b64decode(c.proof))
            assert all(st.exp_mismatches <= 8 for st in stats)
    # every acknowledged submission left pending/; verdicts were polled into credit
    assert r.daemon.spool.pending() == []
    snap = r.daemon.state.snapshot()
    assert snap["submitted"] == len(fake.submissions) and snap["policy_version"] == 0
    # nothing is held after a clean stop: unstarted leases were released
    assert set(fake.leases) == set(fake.by_lease) | set(fake.released)


def test_key_file_is_created_with_mode_0600_and_reused(fake, versions, start_daemon, tmp_path):
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1)
    r.stop()
    key = tmp_path / "worker.key"
    assert key.stat().st_mode & 0o777 == 0o600
    r2 = start_daemon()
    wait_until(lambda: r2.daemon.state.get("run_id") == "run")
    r2.stop()
    assert r2.daemon.worker_id == r.daemon.worker_id


def test_coordinator_down_pauses_the_daemon_and_nothing_finished_is_lost(fake, versions, start_daemon):
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1)
    fake.down_for(3.0)
    wait_until(lambda: not r.daemon.state.get("coordinator_up"), what="coordinator seen as down")
    wait_until(lambda: r.daemon.state.get("coordinator_up") and len(fake.submissions) >= 4,
               what="recovery after the outage")
    r.stop()
    assert r.error is None
    # every lease the daemon finished reached the coordinator exactly once
    assert len(fake.by_lease) == len(fake.submissions)
    assert r.daemon.spool.pending() == []


def test_spooled_submissions_are_resent_after_a_restart_each_exactly_once(fake, versions, start_daemon):
    versions.publish(0)
    fake.refuse_submissions = 503  # finished work piles up in the spool
    r = start_daemon()
    wait_until(lambda: len(r.daemon.spool.pending()) >= 2, what="spooled submissions")
    r.daemon.abort.set()  # do not try to send on the way out
    r.stop()
    spooled = {e.lease_id for e in r.daemon.spool.pending()}
    assert spooled and not fake.submissions
    # one of them arrived after all (the answer was lost): the resend must count as acknowledged
    first = sorted(spooled)[0]
    fake.refuse_submissions = None
    fake.by_lease[first] = "sub-earlier"
    fake.submissions["sub-earlier"] = {"lease_id": first, "worker": r.daemon.worker_id,
                                       "body": r.daemon.spool.pending()[0].submission, "status": "queued"}
    fake.tasks_left = 0  # the second run only resends
    r2 = start_daemon()
    wait_until(lambda: r2.daemon.spool.pending() == [] and spooled <= set(fake.by_lease), what="resend")
    r2.stop()
    assert r2.error is None
    assert len(fake.submissions) == len(spooled)                        # stored once each
    assert sorted(s["lease_id"] for s in fake.submissions.values()) == sorted(spooled)
    assert r2.daemon.spool.rejected() == []


def test_a_refused_submission_is_set_aside_with_its_reason(fake, versions, start_daemon):
    versions.publish(0)
    fake.refuse_submissions = 422
    r = start_daemon()
    wait_until(lambda: len(r.daemon.spool.rejected()) >= 1)
    r.stop()
    assert r.daemon.state.get("rejected") >= 1
    assert r.daemon.spool.pending() == []


def test_a_new_policy_version_is_used_once_leases_allow_it(fake, versions, start_daemon):
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1)
    versions.publish(1)
    fake.version = 1
    wait_until(lambda: any(s["body"].policy_version == 1 for s in fake.submissions.values()),
               what="a submission with version 1")
    r.stop()
    # after the switch, versions never go back
    seen = [s["body"].policy_version for s in fake.submissions.values()]
    assert seen == sorted(seen)
    assert r.daemon.engine.version == 1


def test_leases_that_need_an_unpublished_version_wait_and_are_released_on_stop(fake, versions, start_daemon):
    versions.publish(0)
    fake.version, fake.window = 2, 0   # the coordinator already requires v2, which no relay has
    r = start_daemon()
    wait_until(lambda: "syncing" in r.daemon.state.get("phase"), what="waiting for v2")
    r.stop()
    assert not fake.submissions
    assert fake.released and set(fake.released) == set(fake.leases)


def test_a_ban_stops_the_daemon_with_the_reason(fake, versions, start_daemon):
    from worker.errors import Banned

    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1)
    fake.banned[r.daemon.worker_id] = "proof mismatch on lease-1"
    r.thread.join(60)
    assert isinstance(r.error, Banned) and "proof mismatch" in str(r.error)


def test_a_forgotten_worker_registers_again(fake, versions, start_daemon):
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1)
    fake.forget_workers()
    n = len(fake.submissions)
    wait_until(lambda: len(fake.submissions) >= n + 2, what="work after re-registration")
    r.stop()
    assert fake.workers[r.daemon.worker_id]["registrations"] == 1  # re-created after forget


def test_status_endpoint_reports_the_snapshot(fake, versions, start_daemon, tmp_path):
    import httpx

    from worker.main import fetch_status

    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 1)
    cfg = r.daemon.cfg
    wait_until(lambda: fetch_status(cfg)["submitted"] >= 1, what="status shows a submission")
    snap = fetch_status(cfg)
    assert snap["peer_id"] == r.daemon.worker_id and snap["run_id"] == "run"
    port = int((tmp_path / "worker" / "status.port").read_text())
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "swarmrl_worker_submitted_total" in metrics and "swarmrl_worker_policy_version 0.0" in metrics
    assert httpx.get(f"http://127.0.0.1:{port}/health").json()["ok"] is True
    r.stop()
    torch.set_num_threads(torch.get_num_threads())  # (the engine set threads; keep the suite stable)


def test_weights_unavailable_for_a_while_then_back_the_daemon_recovers(fake, versions, start_daemon):
    versions.publish(0)
    fake.version, fake.window = 1, 0     # leases need v1, which no relay serves yet
    r = start_daemon()
    wait_until(lambda: "syncing" in r.daemon.state.get("phase"), what="waiting for v1")
    wait_until(lambda: versions.weights.fetches.count(1) >= 2, what="retries of the failed download")
    assert not fake.submissions
    versions.publish(1)                  # the relay is back / has caught up
    wait_until(lambda: len(fake.submissions) >= 2, what="work once v1 is fetched")
    r.stop()
    assert r.error is None
    assert all(s["body"].policy_version == 1 for s in fake.submissions.values())


@pytest.mark.parametrize("statuses_route", [True, False], ids=["one-request", "older-coordinator"])
def test_verdicts_are_polled_into_credit(fake, versions, start_daemon, statuses_route):
    """Awaited submissions are asked for in one request per poll (GET /v1/submission-statuses);
    against a coordinator without that route, one request each. Either way every accepted
    submission is credited once and leaves spool/awaiting/."""
    fake.statuses_route = statuses_route
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 4, what="four submissions")
    wait_until(lambda: r.daemon.state.snapshot()["accepted"] >= 4, what="four verdicts polled", timeout=30)
    r.stop()
    snap = r.daemon.state.snapshot()
    assert 4 <= snap["accepted"] <= len(fake.submissions)
    assert snap["credits_tokens"] == sum(sum(len(c.token_ids) for c in s["body"].completions)
                                         for s in fake.submissions.values() if s["status"] == "accepted")
    if statuses_route:
        assert fake.status_calls["batch"] >= 1 and fake.status_calls["single"] == 0
    else:
        assert fake.status_calls["single"] >= 4


def test_a_worker_with_pins_refuses_a_coordinator_serving_other_keys_before_registering(fake, versions,
                                                                                        start_daemon):
    """GET /v1/run over plain HTTP names the keys; pinned, a worker whose coordinator (or anyone
    on the path) serves other keys stops at start with the mismatch named, and never registers,
    leases or downloads anything. Pinned to the keys served, it runs as usual."""
    from protocol.errors import PinError
    from protocol.identity import KeyPair

    versions.publish(0)
    other = KeyPair.generate().public.hex
    r = start_daemon(pins={"coordinator": other, "operator": fake.operator.public.hex})
    r.thread.join(60)
    assert isinstance(r.error, PinError), r.error
    assert f"coordinator key {fake.key.public.hex[:16]}" in str(r.error) and other[:16] in str(r.error)
    assert fake.workers == {} and fake.leases == {}
    ok = start_daemon(pins={"coordinator": fake.key.public.hex, "operator": fake.operator.public.hex})
    wait_until(lambda: len(fake.submissions) >= 1, what="a submission")
    ok.stop()
    assert ok.error is None


def test_a_version_pruned_while_it_is_loaded_is_planned_again_not_a_crash(fake, versions, start_daemon):
    """New versions every second prune old ones from the cache; one that goes between the
    daemon's check and the engine's read made the honest worker exit with an OSError (seen in
    tests/integration/test_swarm.py). Here the folder vanishes during the first load and is
    fetched again: the daemon plans again and goes on."""
    from worker.engines.transformers_engine import TransformersEngine

    folder = versions.publish(0)
    away = folder.with_name("away")
    pruned = []
    fetch = versions.weights.fetch

    def fetch_again(version, progress=None):
        if away.exists():
            away.rename(folder)                     # ...and fetched again
        return fetch(version, progress)

    versions.weights.fetch = fetch_again

    class PrunedOnce(TransformersEngine):
        def load(self, checkpoint_dir, version):
            if not pruned:
                pruned.append(version)
                folder.rename(away)                 # pruned under the reader...
            return super().load(checkpoint_dir, version)

    r = start_daemon(engine=PrunedOnce(device="cpu", dtype="float32", threads=1))
    wait_until(lambda: len(fake.submissions) >= 2 or not r.thread.is_alive(), what="submissions after the prune")
    r.stop()
    assert r.error is None and pruned == [0]
    assert len(fake.submissions) >= 2 and r.daemon.engine.version == 0


def test_over_a_slow_link_the_next_leases_and_the_submissions_travel_while_the_engine_works(fake, versions,
                                                                                           start_daemon):
    """Every answer takes 0.2 s: the worker asks for its next batch while it still holds the
    current one (leased ahead), and sends submissions from the background (a lease request
    arrives while a submission is in flight); everything is still delivered or released."""
    versions.publish(0)
    fake.delay_s = 0.2
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 6, what="six submissions over the slow link", timeout=60)
    r.stop()
    assert r.error is None
    log = list(fake.lease_log)
    assert any(held > 0 for held, _ in log), f"no lease request was sent ahead: {log}"
    assert any(sending > 0 for _, sending in log), f"lease requests waited for submissions: {log}"
    assert r.daemon.spool.pending() == []
    assert set(fake.leases) == set(fake.by_lease) | set(fake.released)


def test_while_the_leases_asked_ahead_are_awaited_the_phase_says_leasing_not_generating(fake, versions,
                                                                                       start_daemon):
    """A batch is spooled and sent, the lease requested ahead has no answer yet: the status must
    not still say "generating" (a stale phase sent the coordinator-down integration test into
    an outage when no batch was in progress, so nothing could reach the spool)."""
    versions.publish(0)
    r = start_daemon()
    wait_until(lambda: len(fake.submissions) >= 4, what="batches after the first (leased ahead)")
    fake.hold_leases = True
    try:
        wait_until(lambda: fake.leases_held_back and not r.daemon._held_ids() and not r.daemon.spool.pending(),
                   what="every held lease done and sent, a lease request unanswered")
        wait_until(lambda: r.daemon.state.get("phase") == "leasing", timeout=10,
                   what=f"the phase to say leasing (it says {r.daemon.state.get('phase')!r})")
    finally:
        fake.hold_leases = False
    r.stop()
    assert r.error is None


def test_over_a_slow_link_several_submissions_travel_at_once_each_stored_once(fake, versions, start_daemon):
    """Every answer takes 0.3 s and a batch finishes four leases: the sender has more than one
    of them in flight at once (one at a time, each finished group waited for the round trips
    of those before it), and each lease is still stored exactly once."""
    versions.publish(0)
    fake.delay_s = 0.3
    r = start_daemon(max_tasks=4)
    wait_until(lambda: len(fake.submissions) >= 8, what="eight submissions over the slow link", timeout=60)
    r.stop()
    assert r.error is None
    assert fake.most_submits_in_flight >= 2, "the submissions were sent one at a time"
    assert len(fake.by_lease) == len(fake.submissions) and fake.submit_calls == len(fake.submissions)
    assert r.daemon.spool.pending() == [] and r.daemon.spool.rejected() == []


def test_a_worker_with_no_work_asks_to_be_held_and_never_polls_in_a_busy_loop(fake, versions, start_daemon):
    """Issue 22: the worker's blocking lease request asks the coordinator to hold it while the
    swarm has no room (`LeaseRequest.wait_s`), and asks again at once only after a real hold;
    an empty answer that comes back at once with retry_after 0 (a coordinator that does not
    hold, or a hostile one) is not a licence to poll in a loop."""
    from worker.daemon import IDLE_WAIT_S, LEASE_WAIT_S

    versions.publish(0)
    fake.tasks_left = 0
    r = start_daemon()
    wait_until(lambda: len(fake.lease_waits) >= 3, what="lease requests while no work is offered", timeout=30)
    assert set(fake.lease_waits) == {LEASE_WAIT_S}, fake.lease_waits
    fake.empty_retry_s = 0.0
    time.sleep(0.5)
    n0 = len(fake.lease_waits)
    time.sleep(2.5)
    r.stop()
    assert r.error is None
    assert len(fake.lease_waits) - n0 <= 2 + 2.5 / IDLE_WAIT_S, fake.lease_waits
