"""Lease lifecycle: quotas, expiry and re-leasing, releases, silent workers, the version window."""

import threading
import time

from coordinator.service import upkeep
from protocol.messages import KIND_LEASE_RELEASE, BatchResponse, LeaseRelease


def test_a_worker_holds_a_bounded_number_of_leases(make_swarm):
    s = make_swarm(limits={"max_leases_per_worker": 5, "burst": 1000})
    s.publish(0)
    w = s.new_worker()
    assert len(s.lease(w, 3)) == 3
    assert len(s.lease(w, 3)) == 2
    r = s.post("/v1/leases", "lease_request", __import__("protocol.messages").messages.LeaseRequest(max_tasks=3), w)
    assert r.json()["leases"] == [] and r.json()["retry_after_s"] > 0


def test_an_expired_lease_is_refused_and_its_task_goes_to_another_worker(swarm):
    swarm.publish(0)
    a, b = swarm.new_worker(), swarm.new_worker()
    (lease,) = swarm.lease(a)
    swarm.clock.advance(swarm.cfg.lease_ttl_s + 1)
    swarm.heartbeat(a), swarm.heartbeat(b)
    assert upkeep.sweep(swarm.ctx)["expired"] == 1
    assert swarm.submit(a, lease).status_code == 410
    assert swarm.lease(a)[0].task_id != lease.task_id      # not back to the worker that dropped it
    (again,) = swarm.lease(b)
    assert again.task_id == lease.task_id and again.lease_id != lease.lease_id
    assert set(again.seeds).isdisjoint(lease.seeds)
    assert swarm.submit(b, again).status_code == 200


def test_released_leases_return_their_tasks(swarm):
    swarm.publish(0)
    a, b = swarm.new_worker(), swarm.new_worker()
    leases = swarm.lease(a, 3)
    r = swarm.post("/v1/leases/release", KIND_LEASE_RELEASE,
                   LeaseRelease(lease_ids=[leases[0].lease_id, leases[2].lease_id]), a)
    assert r.json() == {"released": 2}
    # releasing again is harmless and counts nothing
    r = swarm.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[leases[0].lease_id]), a)
    assert r.json() == {"released": 0}
    assert swarm.submit(a, leases[0]).status_code == 410
    got = swarm.lease(b, 3)
    assert [g.task_id for g in got[:2]] == [leases[0].task_id, leases[2].task_id]


def test_a_silent_worker_is_marked_gone_and_its_leases_return(swarm):
    swarm.publish(0)
    a, b = swarm.new_worker(), swarm.new_worker()
    la = swarm.lease(a, 2)
    j = swarm.cfg.join
    for _ in range(j.missed_heartbeats_gone + 1):
        swarm.clock.advance(j.heartbeat_interval_s)
        swarm.heartbeat(b)
    out = upkeep.sweep(swarm.ctx)
    assert out["gone"] == 1 and out["orphaned"] == 2
    assert swarm.http.get(f"/v1/workers/{a.peer_id}").json()["status"] == "gone"
    assert swarm.http.get(f"/v1/workers/{b.peer_id}").json()["status"] == "active"
    assert {l.task_id for l in swarm.lease(b, 2)} == {l.task_id for l in la}
    # a heartbeat brings the worker back
    assert swarm.heartbeat(a).status_code == 200
    assert swarm.http.get(f"/v1/workers/{a.peer_id}").json()["status"] == "active"


def test_lease_version_range_follows_new_policy_versions(swarm):
    swarm.publish(0)
    w = swarm.new_worker()
    (old,) = swarm.lease(w)
    assert (old.min_policy_version, old.max_policy_version) == (0, 0)
    for v in (1, 2, 3):
        swarm.publish(v)
    (new,) = swarm.lease(w)
    assert (new.min_policy_version, new.max_policy_version) == (1, 3)
    # the old lease keeps its own range: version 0 is what it allows
    assert swarm.submit(w, old, version=1).status_code == 422
    assert swarm.submit(w, old, version=0).status_code == 200


def test_groups_older_than_the_window_are_dropped_and_counted(swarm):
    swarm.publish(0)
    w = swarm.new_worker()
    sids = [swarm.submit(w, lease).json()["submission_id"] for lease in swarm.lease(w, 2)]
    swarm.claim()
    for sid in sids:
        swarm.verdict(sid, True)
    for v in (1, 2, 3):
        swarm.publish(v)
    resp = BatchResponse.model_validate_json(swarm.batch().content)
    assert resp.groups == [] and resp.dropped_stale == 2
    assert swarm.stats()["buffer"]["dropped_stale"] == 2
    assert swarm.metric("swarmrl_coordinator_groups_dropped_stale_total") == 2


def test_batch_request_min_version_is_respected_and_lower_groups_wait(swarm):
    swarm.publish(0)
    w = swarm.new_worker()
    (l0,) = swarm.lease(w)
    swarm.publish(1)
    (l1,) = swarm.lease(w)
    s0 = swarm.submit(w, l0).json()["submission_id"]
    s1 = swarm.submit(w, l1, version=1).json()["submission_id"]
    swarm.claim()
    swarm.verdict(s0, True), swarm.verdict(s1, True)
    got = BatchResponse.model_validate_json(swarm.batch(min_version=1).content).groups
    assert [g.submission_id for g in got] == [s1]
    got = BatchResponse.model_validate_json(swarm.batch(min_version=0).content).groups
    assert [g.submission_id for g in got] == [s0]


def test_batch_long_poll_wakes_when_a_group_is_accepted(swarm):
    swarm.publish(0)
    w = swarm.new_worker()
    (lease,) = swarm.lease(w)
    sid = swarm.submit(w, lease).json()["submission_id"]
    swarm.claim()
    result = {}

    def poll():
        result["resp"] = swarm.batch(wait_s=30)

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    assert "resp" not in result  # still waiting: nothing accepted yet
    swarm.verdict(sid, True)
    t.join(timeout=20)  # the poll would wait 30 s if the verdict did not wake it
    assert "resp" in result
    groups = BatchResponse.model_validate_json(result["resp"].content).groups
    assert [g.submission_id for g in groups] == [sid]


def test_a_claim_without_verdict_is_handed_out_again_after_its_ttl(swarm):
    swarm.publish(0)
    w = swarm.new_worker()
    (lease,) = swarm.lease(w)
    sid = swarm.submit(w, lease).json()["submission_id"]
    assert [j.submission_id for j in swarm.claim()] == [sid]
    assert swarm.claim() == []
    swarm.clock.advance(swarm.cfg.verification_claim_ttl_s + 1)
    assert [j.submission_id for j in swarm.claim()] == [sid]


def test_a_submission_no_verifier_can_judge_is_dropped_after_its_last_claim_without_a_ban(make_swarm):
    """A submission whose every claim expires without a verdict (every verifier that took it
    failed to judge it, or its version can no longer be fetched) was handed out again every
    claim TTL, first in every claim, forever; now after verification_max_claims claims it is
    dropped, its worker not banned, and the rest of the queue goes on."""
    s = make_swarm(verification_max_claims=3)
    s.publish(0)
    w = s.new_worker()
    (first, second) = s.lease(w, 2)
    poison = s.submit(w, first).json()["submission_id"]
    s.clock.advance(0.1)
    other = s.submit(w, second).json()["submission_id"]
    for _ in range(3):
        assert [j.submission_id for j in s.claim(n=1)] == [poison]   # oldest first, each time
        s.clock.advance(s.cfg.verification_claim_ttl_s + 1)
    assert upkeep.sweep(s.ctx)["unjudged"] == 1
    row = s.snapshot_submission(poison)
    assert row["status"] == "dropped" and "no verdict after 3 claims" in row["reason"]
    assert s.snapshot_worker(w)["status"] != "banned"
    assert s.metric("swarmrl_coordinator_submissions_unjudged_total") == 1
    assert [j.submission_id for j in s.claim()] == [other]
    assert s.verdict(poison, True).status_code == 409                  # too late for a verdict
    assert upkeep.sweep(s.ctx)["unjudged"] == 0


def test_a_claim_takes_workers_with_a_clean_check_first_and_newcomers_in_claims_of_their_own(swarm):
    """Throw-away identities (checked in full, one per policy version in bench/hostile.py) shared
    claims with workers that have a record and went before their newer submissions; now a
    newcomer's submission waits behind the others, alone, for verification_newcomer_wait_s."""
    swarm.publish(0)
    old, new = swarm.new_worker(), swarm.new_worker()
    (first,) = swarm.lease(old)
    sid = swarm.submit(old, first).json()["submission_id"]
    assert [j.submission_id for j in swarm.claim()] == [sid]
    assert swarm.verdict(sid, True).status_code == 200                 # old: one clean full check
    (ln,) = swarm.lease(new)
    s_new = swarm.submit(new, ln).json()["submission_id"]
    swarm.clock.advance(0.1)
    (lo,) = swarm.lease(old)
    s_old = swarm.submit(old, lo).json()["submission_id"]
    assert [j.submission_id for j in swarm.claim()] == [s_old]         # not [s_new, s_old]
    assert [j.submission_id for j in swarm.claim()] == [s_new]         # nothing else queued: its turn
    (ln2,) = swarm.lease(new)
    s_new2 = swarm.submit(new, ln2).json()["submission_id"]
    swarm.clock.advance(swarm.cfg.verification_newcomer_wait_s + 0.1)  # waited long enough: by age
    (lo2,) = swarm.lease(old)
    s_old2 = swarm.submit(old, lo2).json()["submission_id"]
    assert [j.submission_id for j in swarm.claim()] == [s_new2, s_old2]


def _submitted_one_by_one(s, w, leases, latency_s: float) -> None:
    """Each lease submitted `latency_s` after the previous one, and accepted at once."""
    for lease in leases:
        s.clock.advance(latency_s)
        sid = s.submit(w, lease).json()["submission_id"]
        s.claim()
        assert s.verdict(sid, True).status_code == 200


def test_lease_requests_are_sized_from_the_workers_measured_rate_and_the_version_rate(make_swarm):
    """Issue 23 (`coordinator.rules.lease_size`): a new worker gets new_worker_leases; once its
    submissions are measured, a worker that finishes a group every 5 s while versions come every
    second (window 2: a lease has about 1.5 s) gets one lease at a time, and a fast one what it asks."""
    s = make_swarm(limits={"burst": 1000})
    s.publish(0)
    slow, fast = s.new_worker(), s.new_worker()
    first = s.lease(slow, 20)
    assert len(first) == s.cfg.lease_sizing.new_worker_leases == 8
    _submitted_one_by_one(s, slow, first, latency_s=5.0)
    _submitted_one_by_one(s, fast, s.lease(fast, 8), latency_s=0.01)
    for v in range(1, 9):                              # the newest 8 versions: one a second
        s.clock.advance(1.0)
        assert s.publish(v).status_code == 200
    assert len(s.lease(slow, 20)) == 1
    assert len(s.lease(slow, 20)) == 0                 # it holds what it may hold
    assert len(s.lease(fast, 20)) == 20


def test_a_worker_never_holds_two_live_leases_of_one_task(make_swarm):
    """Four tasks in the train split: task indices repeat them. A worker's second request gets
    only the task it does not hold (a peaked policy would repeat its group for a second lease of
    a task it holds, refused as a content duplicate: lost credit); the others go back to the
    pool and go out first, to this worker too once it no longer holds the task."""
    s = make_swarm(tasks={"kind": "arithmetic", "options": {"max_operand": 1, "ops": "+", "eval_size": 1}})
    s.publish(0)
    a, b = s.new_worker(), s.new_worker()
    first = s.lease(a, 3)
    more = s.lease(a, 3)                           # indices 3, 4, 5: tasks 3, 0, 1
    held = [lease.task_id for lease in first + more]
    assert len(more) == 1 and len(set(held)) == len(held) == 4
    assert s.submit(a, first[0]).status_code == 200
    (again,) = s.lease(a, 1)                       # put back, and no longer held by a
    assert again.task_id == first[0].task_id
    assert [lease.task_id for lease in s.lease(b, 1)] == [first[1].task_id]  # the other one put back


def test_before_the_trainer_takes_anything_the_swarm_holds_one_step_of_its_request(make_swarm):
    """Issue 23: at the start every worker is new and checked in full; without a swarm bound until
    the trainer's first take, the workers leased more than the verifier could check before the
    versions moved past it (most of a short bench run's stale groups). Once the trainer has asked
    for a batch, the swarm holds one step of what it asked for; before any request, no bound."""
    s = make_swarm(limits={"burst": 1000})
    s.publish(0)
    early = s.new_worker()
    assert len(s.lease(early, 20)) == s.cfg.lease_sizing.new_worker_leases == 8   # no request yet
    assert s.batch(max_groups=12).status_code == 200                             # the trainer's step: 12
    a, b = s.new_worker(), s.new_worker()
    assert len(s.lease(a, 20)) == 4              # 12 - the 8 the first worker holds
    assert s.lease(b, 20) == []                  # the step is on its way: b waits for the trainer
    assert s.batch(max_groups=3).status_code == 200  # a smaller request later does not shrink the step
    assert s.lease(b, 20) == []


def test_throw_away_identities_sitting_on_leases_cannot_take_the_room_of_an_established_worker(make_swarm):
    """Fresh identities are free (one per address, a small proof of work): each took its first
    leases and sat on them until they expired, and while they held the swarm's whole bound an
    honest worker with verified work was refused every lease (one pool, first come). Now, once
    an established worker is active, the bound is the established workers' and new identities
    hold at most `lease_sizing.new_identity_share` of it between them, on top."""
    s = make_swarm(limits={"burst": 1000})
    s.publish(0)
    honest = s.new_worker()
    s.establish(honest)                     # verified work accepted before
    assert s.batch(max_groups=8).status_code == 200                 # the trainer's step: a bound of 8
    squatters = [s.new_worker() for _ in range(4)]
    taken = [len(s.lease(k, 8)) for k in squatters]
    assert sum(taken) == 2, taken            # lease_sizing.new_identity_share (0.25) of 8 between them
    assert len(s.lease(honest, 8)) == 8      # the bound is the established worker's
    assert all(s.lease(k, 8) == [] for k in squatters)
    # their leases expire unsubmitted: from then on each holds one at a time until it submits
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    for k in (honest, *squatters):
        s.heartbeat(k)
    assert upkeep.sweep(s.ctx)["expired"] == 10
    assert len(s.lease(squatters[0], 8)) == 1
    assert len(s.lease(squatters[1], 8)) == 1
    assert s.lease(squatters[0], 8) == []


def test_a_new_identitys_held_request_does_not_take_the_wake_meant_for_an_established_worker(make_swarm):
    """Held lease requests wait per lane: room that an established worker releases wakes the
    oldest established request at once, though a new identity (its share full) has waited
    longer. In one queue the new identity took the wake, was refused and slept again, and the
    established request waited for its retry time (1 s here)."""
    s = make_swarm(limits={"burst": 1000})
    s.publish(0)
    honest, other, squatter = s.new_worker(), s.new_worker(), s.new_worker()
    s.establish(honest, other)
    assert s.batch(max_groups=8).status_code == 200                  # a bound of 8
    assert len(s.lease(squatter, 8)) == 2                            # the new identities' share
    held = s.lease(other, 8)
    assert len(held) == 8                                            # the bound is full
    old = _held_lease(s, squatter, 2, wait_s=8.0)                    # waits first
    time.sleep(0.3)
    out = _held_lease(s, honest, 2, wait_s=8.0)
    time.sleep(0.3)
    assert "resp" not in out and "resp" not in old
    t0 = time.monotonic()
    _release(s, other, held[:2])
    out["thread"].join(10)
    assert len(out["resp"].json()["leases"]) == 2, out["resp"].text
    assert time.monotonic() - t0 < 0.6                                # woken, not its 1 s retry
    old["thread"].join(10)
    assert old["resp"].json()["leases"] == []                        # its share is still full


def _held_lease(s, key, n: int, wait_s: float) -> dict:
    """A lease request asking to be held up to `wait_s`, sent from a thread: {"resp", "t"} once answered."""
    from protocol.messages import KIND_LEASE_REQUEST, LeaseRequest

    out: dict = {}

    def ask():
        t0 = time.monotonic()
        out["resp"] = s.post("/v1/leases", KIND_LEASE_REQUEST, LeaseRequest(max_tasks=n, wait_s=wait_s), key)
        out["t"] = time.monotonic() - t0

    out["thread"] = threading.Thread(target=ask)
    out["thread"].start()
    return out


def _swarm_without_room(make_swarm, step: int):
    """A coordinator whose trainer asked for `step` groups and a worker ("holder") that holds
    them all as leases: the swarm has no room until some come back. -> (swarm, holder, leases)."""
    s = make_swarm(limits={"burst": 1000})
    s.publish(0)
    holder = s.new_worker()
    assert s.batch(max_groups=step).status_code == 200        # the trainer's step
    leased = s.lease(holder, step)
    assert len(leased) == step
    return s, holder, leased


def _release(s, key, leases) -> None:
    r = s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[x.lease_id for x in leases]), key)
    assert r.status_code == 200, r.text


def test_a_lease_request_held_for_room_is_answered_when_room_appears(make_swarm):
    """Issue 22: a worker refused for lack of room waited its retry time and asked again, a round
    trip per refusal (workers at 100 ms RTT spent 38-46% of their loop on lease calls). A request
    with `wait_s` is held at the coordinator and answered as soon as room appears (here: another
    worker releases leases), well before its wait ends; without room it is answered at the end of
    its wait with retry_after 0, and a request without `wait_s` is answered at once as before."""
    s, holder, leased = _swarm_without_room(make_swarm, 4)
    waiter = s.new_worker()
    t0 = time.monotonic()
    assert s.lease(waiter, 2) == []                         # no room, no wait asked: at once
    assert time.monotonic() - t0 < 1.0

    out = _held_lease(s, waiter, 2, wait_s=0.6)            # no room for its whole wait
    out["thread"].join(10)
    assert out["resp"].status_code == 200 and out["resp"].json() == {"leases": [], "retry_after_s": 0.0}
    assert out["t"] >= 0.55

    out = _held_lease(s, waiter, 2, wait_s=8.0)
    time.sleep(0.5)
    assert "resp" not in out                                # held: still no room
    _release(s, holder, leased[:2])
    out["thread"].join(10)
    assert out["resp"].status_code == 200, out["resp"].text
    assert len(out["resp"].json()["leases"]) == 2
    assert out["t"] < 3.0                                   # answered on the release, not at 8 s


def test_a_held_lease_request_is_not_a_second_use_of_its_nonce_and_a_ban_ends_it(make_swarm):
    """The held request's later tries do not count as replays of its envelope (it gets its lease
    when room appears); a worker banned while its request is held gets the ban (403), not a lease."""
    from coordinator.store import workers

    s, holder, leased = _swarm_without_room(make_swarm, 2)

    waiter, banned = s.new_worker(), s.new_worker()
    out = _held_lease(s, waiter, 1, wait_s=8.0)
    time.sleep(0.3)
    _release(s, holder, leased[:1])
    out["thread"].join(10)
    assert out["resp"].status_code == 200 and len(out["resp"].json()["leases"]) == 1, out["resp"].text

    out = _held_lease(s, banned, 1, wait_s=8.0)
    time.sleep(0.3)
    assert "resp" not in out
    with s.ctx.db.write() as conn:
        workers.ban(conn, banned.peer_id, "test", s.clock())
    _release(s, holder, leased[1:])
    out["thread"].join(10)
    assert out["resp"].status_code == 403, out["resp"].text


def test_a_held_lease_request_waits_for_a_full_batch_until_its_last_try(make_swarm):
    """Answered on the first lease's worth of room, held requests made workers generate smaller,
    slower batches (bench/wan.py): until its last try a held request takes what it asked for
    (within the worker's own bound) or nothing; at its last try, what there is."""
    s, holder, leased = _swarm_without_room(make_swarm, 4)
    waiter = s.new_worker()
    out = _held_lease(s, waiter, 2, wait_s=1.5)
    time.sleep(0.3)
    _release(s, holder, leased[:1])
    time.sleep(0.5)
    assert "resp" not in out                   # room for one of the two it asked for: still held
    out["thread"].join(10)
    assert out["resp"].status_code == 200, out["resp"].text
    assert len(out["resp"].json()["leases"]) == 1 and out["t"] >= 1.4   # its last try takes the one
