"""A content-duplicate refusal ends its lease at once (real coordinator on 127.0.0.1, real
SQLite, real HTTP).

A converged, peaked policy gives two honest workers the same group for one task; the second
submission is refused 409 `duplicate_completion`. The refusal used to leave that lease active
until it expired: it held one of the worker's lease places for `lease_ttl_s`, its task went
back to the pool (where the same peaked policy makes the same group again), and the expiry
was counted as a dropped lease anyway. Now the coordinator closes it at the refusal
(`duplicate`), counted as one dropped lease, exactly as a release (`rules.reputation`: free
within `drop_share` of the leases issued plus `drop_slack`): copying stored completions
is no way to shed unwanted leases more cheaply than a release.
"""

from __future__ import annotations

from sqlalchemy import func, select

from coordinator.store import leases as lq
from coordinator.store.schema import leases, task_returns
from protocol.messages import KIND_LEASE_RELEASE, KIND_SUBMISSION, LeaseRelease


def _the_same_task_for_b(s, a, b):
    """a submits its group for a task; the task comes round again and b leases it."""
    (first,) = s.lease(a, 1)
    (other,) = s.lease(b, 1)
    assert s.submit(a, first).status_code == 200
    s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[other.lease_id]), b)
    with s.ctx.db.write() as conn:  # the task a answered comes round again (the split wraps around)
        lq.return_tasks(conn, [lq.get(conn, first.lease_id)], s.clock())
    (again,) = s.lease(b, 1)
    assert again.task_id == first.task_id
    return first, again


def _lease_row(s, lease_id):
    with s.ctx.db.read() as conn:
        return lq.get(conn, lease_id)


def _returned(s) -> int:
    with s.ctx.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(task_returns)).scalar_one())


def test_a_duplicate_refusal_closes_the_lease_at_once_and_counts_as_a_release(swarm):
    s = swarm
    s.publish(0)
    a, b = s.new_worker(), s.new_worker()
    first, again = _the_same_task_for_b(s, a, b)
    dropped = s.snapshot_worker(b)["leases_dropped"]   # b's one release above
    returned = _returned(s)
    r = s.submit(b, again, completions=s.completions(first))
    assert r.status_code == 409 and r.json()["reason"] == "duplicate_completion", r.text
    row = _lease_row(s, again.lease_id)
    assert row.status == "duplicate" and row.closed_at == s.clock()
    # one dropped lease, as a release costs (no more: an honest duplicate; no less: a copy)
    assert s.snapshot_worker(b)["leases_dropped"] == dropped + 1
    # the task has a stored group: it does not go back to the pool to be generated again
    assert _returned(s) == returned
    with s.ctx.db.read() as conn:
        assert lq.active_task_ids(conn, b.peer_id) == []
    # the same envelope again (its answer lost) gets the same answer and changes nothing
    before = s.snapshot()
    env = s.seal(KIND_SUBMISSION, s.submission(again, completions=s.completions(first)), b)
    r = s.send("/v1/submissions", env)
    assert r.status_code == 409 and r.json()["reason"] == "duplicate_completion", r.text
    assert s.snapshot() == before
    # and the upkeep sweep, past the lease's expiry, does not count it again
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    from coordinator.service import upkeep

    upkeep.sweep(s.ctx)
    assert s.snapshot_worker(b)["leases_dropped"] == dropped + 1
    assert s.metric("swarmrl_coordinator_leases_returned_total", why="duplicate") == 1


def test_a_copy_sheds_a_lease_no_cheaper_than_a_release(swarm):
    """A worker that re-submits a stored group to get rid of a lease it does not like pays
    what releasing it costs: both add one dropped lease."""
    s = swarm
    s.publish(0)
    a, b, c = s.new_worker(), s.new_worker(), s.new_worker()
    first, again = _the_same_task_for_b(s, a, b)
    (disliked,) = s.lease(c, 1)
    b0, c0 = s.snapshot_worker(b)["leases_dropped"], s.snapshot_worker(c)["leases_dropped"]
    assert s.submit(b, again, completions=s.completions(first)).status_code == 409
    assert s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[disliked.lease_id]),
                  c).status_code == 200
    assert s.snapshot_worker(b)["leases_dropped"] - b0 == s.snapshot_worker(c)["leases_dropped"] - c0 == 1


def test_a_refusal_for_another_reason_leaves_the_lease_open(swarm):
    """Only the content duplicate closes: completions that do not fit the lease (fixable) leave
    it active, and nothing changes."""
    s = swarm
    s.publish(0)
    a = s.new_worker()
    (lease,) = s.lease(a, 1)
    before = s.snapshot()
    r = s.submit(a, lease, version=9)
    assert r.status_code == 422, r.text
    assert s.snapshot() == before and _lease_row(s, lease.lease_id).status == "active"
    with s.ctx.db.read() as conn:
        assert conn.execute(select(leases.c.status).where(leases.c.lease_id == lease.lease_id)).scalar_one() == "active"
