"""A lease's expiry is judged when its submission arrives, not after the intake's queue and the
scorer: an honest submission sent before its lease expired, that waited in a loaded
coordinator's intake and was scored after the expiry, was refused (410 `lease_expired`), its
verified-to-be work lost and its lease counted as dropped. And the sweep, running meanwhile,
closed the lease under it and returned its task. Both now wait for the submission's outcome."""

from coordinator.service import upkeep


def _slow_scoring(s, monkeypatch, during):
    """The scorer takes as long as `during` makes the clock move (and whatever it does meanwhile)."""
    rewards = s.ctx.tasks.rewards

    def slow(task, completions):
        during()
        return rewards(task, completions)

    monkeypatch.setattr(s.ctx.tasks, "rewards", slow)


def test_a_submission_that_arrived_in_time_is_taken_in_after_its_lease_expired(swarm, monkeypatch):
    s = swarm
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w, 1)
    s.clock.advance(s.cfg.lease_ttl_s - 1)          # sent a second before the lease expires

    def queue_and_sweep():
        s.clock.advance(30)                          # ... and scored half a minute later
        assert upkeep.sweep(s.ctx)["expired"] == 0   # the housekeeping ran meanwhile

    _slow_scoring(s, monkeypatch, queue_and_sweep)
    r = s.submit(w, lease)
    assert r.status_code == 200, r.text              # before: 410 lease_expired
    assert s.snapshot_worker(w)["leases_dropped"] == 0
    assert s.snapshot_submission(r.json()["submission_id"])["status"] == "queued"
    # once taken in, the lease is submitted: the sweep has nothing of it to expire
    assert upkeep.sweep(s.ctx)["expired"] == 0


def test_a_submission_that_arrived_after_the_expiry_is_still_refused(swarm):
    s = swarm
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w, 1)
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    r = s.submit(w, lease)
    assert r.status_code == 410 and r.json()["reason"] == "lease_expired", r.text
    assert upkeep.sweep(s.ctx)["expired"] == 1


def test_a_lease_another_replica_is_taking_in_is_not_expired_by_this_ones_sweep(swarm):
    """On PostgreSQL each replica's intake claims the lease (`leases.intake_at`) before scoring:
    another replica's sweep leaves it open until the claim is given back or goes stale."""
    from coordinator.service.work import INTAKE_CLAIM_S
    from coordinator.store import leases
    from coordinator.store.schema import leases as leases_t

    s = swarm
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w, 1)
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    s.heartbeat(w)
    with s.ctx.db.write() as conn:   # as another replica's `_claim` writes it
        conn.execute(leases_t.update().where(leases_t.c.lease_id == lease.lease_id)
                     .values(intake_nonce="n", intake_at=s.clock()))
    assert upkeep.sweep(s.ctx)["expired"] == 0
    with s.ctx.db.read() as conn:
        assert leases.due(conn, s.clock()) == [lease.lease_id]          # without the claim rule
    s.clock.advance(INTAKE_CLAIM_S + 1)                                  # that replica died: stale
    s.heartbeat(w)
    assert upkeep.sweep(s.ctx)["expired"] == 1
