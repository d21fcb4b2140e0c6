"""Training batches are delivered at least once: a group handed to the trainer is consumed only
when the trainer acknowledges it, and handed out again when no acknowledgement comes in time.

A real coordinator on 127.0.0.1 (real HTTP, real SQLite file) whose clock the test moves.
"""

from coordinator.service import upkeep
from protocol.messages import BatchResponse


def _accepted(s, n: int, worker=None) -> list[str]:
    w = worker or s.new_worker()
    sids = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, n)]
    s.claim()
    for sid in sids:
        assert s.verdict(sid, True).status_code == 200
    return sorted(sids)


def _taken(s, **kw) -> list[str]:
    r = s.batch(**kw)
    assert r.status_code == 200, r.text
    return sorted(g.submission_id for g in BatchResponse.model_validate_json(r.content).groups)


def test_a_lost_batch_answer_is_handed_out_again_after_the_ack_timeout(swarm):
    """The trainer never saw the answer (timeout, dropped connection, killed before its spool
    write): no acknowledgement comes, and after batch_ack_timeout_s the same groups come again."""
    swarm.publish(0)
    sids = _accepted(swarm, 3)
    assert _taken(swarm) == sids                     # this answer is "lost"
    assert _taken(swarm) == []                       # handed out, waiting for the ack
    assert swarm.snapshot_submission(sids[0])["buffer"] == "handed"
    swarm.clock.advance(swarm.cfg.batch_ack_timeout_s - 1)
    assert _taken(swarm) == []
    swarm.clock.advance(2)
    assert _taken(swarm) == sids                     # the same groups, again
    assert swarm.ack(sids).json() == {"acknowledged": 3}
    swarm.clock.advance(10 * swarm.cfg.batch_ack_timeout_s)
    assert _taken(swarm) == []                       # acknowledged: consumed for good
    assert {swarm.snapshot_submission(s)["buffer"] for s in sids} == {"consumed"}
    assert swarm.metric("swarmrl_coordinator_groups_acked_total") == 3
    assert swarm.metric("swarmrl_coordinator_groups_served_total") == 6


def test_acks_are_idempotent_and_only_consume_handed_out_groups(swarm):
    swarm.publish(0)
    sids = _accepted(swarm, 3)
    first = _taken(swarm, max_groups=2)
    (rest,) = set(sids) - set(first)
    r = swarm.ack([first[0], first[0], rest, "s-unknown"])   # `rest` was never handed out
    assert r.status_code == 200 and r.json() == {"acknowledged": 1}
    assert swarm.ack([first[0]]).json() == {"acknowledged": 0}   # a resent ack changes nothing
    assert swarm.snapshot_submission(rest)["buffer"] == "ready"
    swarm.clock.advance(swarm.cfg.batch_ack_timeout_s + 1)
    assert _taken(swarm) == sorted([first[1], rest])  # the unacknowledged one and the one never taken


def test_only_the_operator_may_acknowledge_and_a_refused_ack_changes_nothing(swarm):
    from protocol.messages import KIND_BATCH_ACK, BatchAck

    swarm.publish(0)
    w = swarm.new_worker()
    sids = _accepted(swarm, 1, worker=w)
    assert _taken(swarm) == sids
    before = swarm.snapshot()
    r = swarm.post("/v1/trainer/ack", KIND_BATCH_ACK, BatchAck(submission_ids=sids), w)
    assert r.status_code == 403, r.text
    assert swarm.snapshot() == before


def test_unacknowledged_groups_leave_with_a_banned_worker_and_with_the_async_window(swarm):
    """A handed-out group that was never acknowledged is still unconsumed: a ban drops it and a
    version that leaves it behind the async window makes it stale, so it is never handed out again."""
    swarm.publish(0)
    cheat, honest = swarm.new_worker(), swarm.new_worker()
    (bad,) = _accepted(swarm, 1, worker=cheat)
    (good,) = _accepted(swarm, 1, worker=honest)
    assert sorted(_taken(swarm)) == sorted([bad, good])
    (lease,) = swarm.lease(cheat)
    sid = swarm.submit(cheat, lease).json()["submission_id"]
    swarm.claim()
    assert swarm.verdict(sid, False, reason="forged").status_code == 200
    assert swarm.snapshot_submission(bad)["buffer"] == "dropped"
    for v in range(1, swarm.cfg.async_window + 2):
        assert swarm.publish(v).status_code == 200
    swarm.clock.advance(swarm.cfg.batch_ack_timeout_s + 1)
    assert _taken(swarm) == []
    assert swarm.snapshot_submission(good)["buffer"] == "stale"


def _accepted_by_version(swarm, versions=(1, 2, 3, 4, 5), order=(1, 3, 4, 5, 2)) -> dict[int, str]:
    """One accepted group per policy version 1..5 (current version 5), accepted in `order`."""
    w = swarm.new_worker()
    leased = {}
    for v in versions:
        assert swarm.publish(v).status_code == 200
        (leased[v],) = swarm.lease(w)
    sids = {v: swarm.submit(w, leased[v], version=v).json()["submission_id"] for v in order}
    swarm.claim()
    for v in order:
        swarm.clock.advance(1.0)
        assert swarm.verdict(sids[v], True).status_code == 200
    return sids


def test_a_batch_takes_the_last_chance_then_the_freshest_groups_up_to_its_size_and_the_stale_are_dropped(swarm):
    """The buffer's rule where it runs: the SQL of `coordinator.store.submissions` (take_batch,
    drop_stale) behind POST /v1/trainer/batch, with the floor of `protocol.window`. Current
    version 5, window 2: groups of versions 1 and 2 are dropped and counted, a group between the
    window and the request's own bound waits, at most max_groups; the group in its last version
    above the floor (4: the request's bound) first, then the freshest."""
    assert swarm.cfg.async_window == 2
    sids = _accepted_by_version(swarm)
    r = BatchResponse.model_validate_json(swarm.batch(min_version=4).content)
    assert [g.submission_id for g in r.groups] == [sids[4], sids[5]] and r.dropped_stale == 2
    assert {swarm.snapshot_submission(sids[v])["buffer"] for v in (1, 2)} == {"stale"}
    assert [g.submission_id for g in BatchResponse.model_validate_json(
        swarm.batch(max_groups=1, min_version=3).content).groups] == [sids[3]]  # it waited for a request that allows it
    assert _taken(swarm) == []
    waste = swarm.stats()["waste"]
    assert waste["accepted"] == 5 and waste["causes"]["stale"]["groups"] == 2
    assert waste["causes"]["in_buffer"]["groups"] == 3   # handed out, not acknowledged yet
    assert swarm.metric("swarmrl_coordinator_groups_unused_total", cause="stale") == 2


def test_a_trainer_with_a_longer_staleness_limit_gets_what_the_window_would_drop(swarm):
    """Issue 23: the trainer asks from its own floor (current 5 - limit 4 = 1), below the async
    window's (3): nothing is dropped, and a batch of 3 takes version 1 (its last chance), then the
    freshest, 5 and 4; versions 3 and 2 stay for the next batch instead of leaving the buffer."""
    sids = _accepted_by_version(swarm)
    r = BatchResponse.model_validate_json(swarm.batch(max_groups=3, min_version=1).content)
    assert [g.submission_id for g in r.groups] == [sids[1], sids[5], sids[4]] and r.dropped_stale == 0
    upkeep.sweep(swarm.ctx)                           # the sweep keeps the trainer's floor too
    assert {swarm.snapshot_submission(sids[v])["buffer"] for v in (2, 3)} == {"ready"}
    assert _taken(swarm, min_version=1) == sorted([sids[3], sids[2]])
    assert swarm.publish(6).status_code == 200        # the trainer's floor moves on to 2: the group of
    r = BatchResponse.model_validate_json(swarm.batch(min_version=2).content)  # version 1, never acknowledged,
    assert r.groups == [] and r.dropped_stale == 1    # is stale now; the acknowledged ones are the trainer's
    assert swarm.snapshot_submission(sids[1])["buffer"] == "stale"


def test_the_trainers_ack_names_the_groups_it_will_not_train_and_stats_split_them_by_cause(swarm):
    """BatchAck.unused: zero-advantage, pass-rate and stale groups the trainer will not train are
    counted once (a resent ack changes nothing), the rest count as taken."""
    swarm.publish(0)
    sids = _accepted(swarm, 4)
    assert _taken(swarm) == sids
    unused = {sids[0]: "zero_advantage", sids[1]: "stale"}
    assert swarm.ack(sids, unused).json() == {"acknowledged": 4}
    assert swarm.ack(sids, unused).json() == {"acknowledged": 0}
    assert swarm.snapshot_submission(sids[0])["buffer"] == "consumed"
    w = swarm.stats()["waste"]
    assert (w["accepted"], w["taken"]) == (4, 2)
    assert {k: c["groups"] for k, c in w["causes"].items() if c["groups"]} == {"zero_advantage": 1, "trainer_stale": 1}
    assert w["unused_share"] == 0.5 and w["stale_share"] == 0.25
    assert swarm.metric("swarmrl_coordinator_groups_unused_total", cause="zero_advantage") == 1
    assert swarm.metric("swarmrl_coordinator_groups_unused_total", cause="trainer_stale") == 1


def test_an_ack_of_a_whole_step_with_reasons_fits_the_routes_body_cap(swarm):
    """A step's worth of groups and more, each named in `unused` (before issue 23 the ack route
    had the 1 KiB cap of unknown routes: 17 ids already did not fit)."""
    swarm.publish(0)
    sids = [sid for _ in range(4) for sid in _accepted(swarm, 8)]
    assert len(_taken(swarm)) == 32
    r = swarm.ack(sids, dict.fromkeys(sids, "zero_advantage"))
    assert r.status_code == 200, r.text
    assert r.json() == {"acknowledged": 32}
    assert swarm.stats()["waste"]["causes"]["zero_advantage"]["groups"] == 32
