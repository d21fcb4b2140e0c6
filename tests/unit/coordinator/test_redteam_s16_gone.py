"""Red team (s16): a worker that goes silent sheds its leases no cheaper than one that lets
them expire. Dropped leases beyond the allowance cost clean checks (`rules.reputation.
effective_clean_checks`: a worker that leases freely and submits only the groups it likes pays
with full checks). The sweep closes the leases of a worker silent for `missed_heartbeats_gone`
heartbeat intervals (30 s by default) before their TTL (60 s) would; those closings were not
counted, so lease, submit the groups you like, stay silent half a minute, heartbeat back:
every unwanted lease was shed for free and the check rate never moved."""

import pytest

from coordinator.service import upkeep


def test_leases_closed_because_their_worker_went_silent_count_as_dropped(make_swarm):
    s = make_swarm(check_rate={"initial": 1.0, "floor": 0.01, "halve_every": 1},
                   standing={"drop_share": 0.0, "drop_slack": 2})
    s.publish(0)
    w = s.new_worker()
    sids = []
    for lease in s.lease(w, 6):
        r = s.submit(w, lease)
        assert r.status_code == 200, r.text
        sids.append(r.json()["submission_id"])
    s.claim(64)
    for sid in sids:
        assert s.verdict(sid, True).status_code == 200
    rate = lambda: s.worker_info(w)["check_rate"]  # noqa: E731  (the operator's view)
    assert rate() == pytest.approx(1 / 64)

    unwanted = s.lease(w, 4)   # leased, looked at, not liked
    j = s.cfg.join
    silence = j.heartbeat_interval_s * j.missed_heartbeats_gone + 1
    assert silence < s.cfg.lease_ttl_s   # the default: gone before the leases would expire
    s.clock.advance(silence)
    out = upkeep.sweep(s.ctx)
    assert out["gone"] == 1 and out["orphaned"] == len(unwanted) and out["expired"] == 0
    assert s.heartbeat(w).status_code == 200   # back, standing intact but for the drops
    assert s.snapshot_worker(w)["status"] == "active"
    assert s.snapshot_worker(w)["leases_dropped"] == len(unwanted)
    late = s.submit(w, unwanted[0])   # nor can it still hand one in: they are closed
    assert late.status_code == 410 and late.json()["reason"] == "lease_closed", late.text
    # 4 dropped, 2 free: 2 beyond the allowance undo 2 halvings, as releasing or expiry does
    assert rate() == pytest.approx(1 / 16)


def test_an_identity_that_sat_on_leases_until_it_was_gone_holds_one_at_a_time_after(swarm):
    """`rules.lease_size`: an identity that dropped leases and never submitted one holds one at
    a time (throw-away identities sitting on leases to fill the new identities' share). Silence
    closed its leases uncounted, so it came back to a full new worker's quota every 30 s."""
    swarm.publish(0)
    w = swarm.new_worker()
    first = swarm.lease(w, 8)
    assert len(first) == swarm.cfg.lease_sizing.new_worker_leases
    j = swarm.cfg.join
    swarm.clock.advance(j.heartbeat_interval_s * j.missed_heartbeats_gone + 1)
    assert upkeep.sweep(swarm.ctx)["orphaned"] == len(first)
    assert len(swarm.lease(w, 8)) == 1
