"""Leases that ran out while the coordinator was down are not the workers' drops: dropped leases
beyond the allowance raise a worker's check rate and, past what it kept, hold it to one lease
at a time (`rules.reputation`). A coordinator that came back after its workers' leases expired
counted every one of them against its workers."""

from coordinator.service import upkeep


def test_leases_that_expired_during_an_outage_are_not_counted_as_dropped(make_swarm):
    s = make_swarm()
    s.publish(0)
    w = s.new_worker()
    s.lease(w, 4)
    # the coordinator was down past the leases' expiry: this process started after it
    s.clock.advance(s.cfg.lease_ttl_s + 120)
    s.ctx.started_at = s.clock()
    assert upkeep.sweep(s.ctx)["expired"] == 4
    assert s.snapshot_worker(w)["leases_dropped"] == 0
    # leases issued once it is back and let run out are the worker's drops, as before
    s.heartbeat(w)
    s.lease(w, 2)
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    s.heartbeat(w)
    assert upkeep.sweep(s.ctx)["expired"] == 2
    assert s.snapshot_worker(w)["leases_dropped"] == 2
