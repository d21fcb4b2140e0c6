"""Training batches are delivered at least once: a group handed to the trainer is consumed only
when the trainer acknowledges it, and handed out again when no acknowledgement comes in time.

A real coordinator on 127.0.0.1 (real HTTP, real SQLite file) whose clock the test moves.
"""

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


def test_a_batch_takes_the_oldest_groups_in_the_window_up_to_its_size_and_the_stale_are_dropped(swarm):
    """The buffer's rule where it runs: the SQL of `coordinator.store.submissions` (take_batch,
    drop_stale) behind POST /v1/trainer/batch, with the floor of `protocol.window`. Current
    version 5, window 2: groups of versions 1 and 2 are dropped and counted, a group between the
    window and the request's own bound waits, the oldest accepted come first, at most max_groups."""
    assert swarm.cfg.async_window == 2
    w = swarm.new_worker()
    leased = {}
    for v in (1, 2, 3, 4, 5):
        assert swarm.publish(v).status_code == 200
        (leased[v],) = swarm.lease(w)
    order = (1, 3, 4, 5, 2)  # accepted in this order: the group of version 2 last
    sids = {v: swarm.submit(w, leased[v], version=v).json()["submission_id"] for v in order}
    swarm.claim()
    for v in order:
        swarm.clock.advance(1.0)
        assert swarm.verdict(sids[v], True).status_code == 200
    r = BatchResponse.model_validate_json(swarm.batch(min_version=4).content)
    assert [g.submission_id for g in r.groups] == [sids[4], sids[5]] and r.dropped_stale == 2
    assert {swarm.snapshot_submission(sids[v])["buffer"] for v in (1, 2)} == {"stale"}
    assert [g.submission_id for g in BatchResponse.model_validate_json(swarm.batch(max_groups=1).content).groups] \
        == [sids[3]]                                  # it waited for a request that allows it
    assert _taken(swarm) == []
