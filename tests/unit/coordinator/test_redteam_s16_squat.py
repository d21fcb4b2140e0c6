"""Red team (s16): a worker that submitted a few groups once cannot squat on leases for ever.

Lease sizing holds a worker that dropped leases and never submitted one to one lease at a
time (`rules.lease_size`: throw-away identities that take leases and sit on them). One that
had submitted a handful first kept its whole quota however many leases it let expire after:
its rate is measured from its newest *submitted* leases, which stop changing once it stops
submitting, and dropped leases only cost it check rate, which a worker that never submits
does not care about. Four quick groups bought a full quota (here every lease it asked for,
64 at most by default) re-leased every TTL for as long as it liked: room that the swarm bound
(`Demand`) then withheld from workers that deliver."""

from coordinator.service import upkeep
from protocol.messages import KIND_LEASE_RELEASE, LeaseRelease


def _submitted(s, w, n):
    for lease in s.lease(w, n):
        r = s.submit(w, lease)
        assert r.status_code == 200, r.text


def _let_expire(s):
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    upkeep.sweep(s.ctx)


def test_a_worker_whose_record_is_mostly_dropped_leases_holds_one_at_a_time(make_swarm):
    s = make_swarm(standing={"drop_share": 0.1, "drop_slack": 8})
    s.publish(0)
    w = s.new_worker()
    _submitted(s, w, 4)   # the rate is measured (lease_sizing.min_history)
    assert len(s.lease(w, 16)) == 16
    _let_expire(s)        # 16 dropped of 20 issued: beyond 0.1 x 20 + 8, and more than it submitted
    row = s.snapshot_worker(w)
    assert (row["leases_issued"], row["leases_dropped"]) == (20, 16)
    assert len(s.lease(w, 16)) == 1
    # submitting again earns the quota back once its record is no longer mostly drops
    _let_expire(s)
    _submitted(s, w, 1)
    for _ in range(40):
        got = s.lease(w, 16)
        if len(got) > 1:
            break
        r = s.submit(w, got[0])
        assert r.status_code == 200, r.text
    assert len(got) == 16
    row = s.snapshot_worker(w)
    assert row["leases_dropped"] <= row["leases_issued"] - row["leases_dropped"]


def test_an_honest_worker_that_gives_leases_back_within_its_allowance_keeps_its_quota(make_swarm):
    s = make_swarm(standing={"drop_share": 0.1, "drop_slack": 8})
    s.publish(0)
    w = s.new_worker()
    _submitted(s, w, 4)
    leases = s.lease(w, 8)   # a restart: it gives them all back
    r = s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[x.lease_id for x in leases]), w)
    assert r.json() == {"released": 8}
    assert len(s.lease(w, 16)) == 16   # 8 dropped of 12 issued, but within 0.1 x 12 + 8
