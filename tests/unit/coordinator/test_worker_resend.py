"""The worker's submitter against the real coordinator: which 409 means "already have it".

`worker.submitter.Submitter` sends from a real spool through the worker's real client to a
real coordinator on 127.0.0.1 (real HTTP, real SQLite). Only a 409 whose reason is
`duplicate_submission` (this worker's own lease, submitted before: a resend after a lost
answer) is taken for delivered; any other conflict leaves the work set aside with its reason,
never silently dropped as if the coordinator held it.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select, update

from coordinator.store.schema import leases, submissions
from worker.coordinator_client import CoordinatorClient
from worker.registration import Registrations
from protocol.retry import Reachability
from worker.spool import Spool
from worker.state import WorkerState
from worker.submitter import Submitter


def _worker_side(swarm, key, tmp_path):
    coord = CoordinatorClient(swarm.server.url, key)
    coord.run_info()  # binds what it signs to the run
    spool = Spool(tmp_path / "spool")
    state = WorkerState(peer_id=key.peer_id)
    sub = Submitter(coord, spool, state, Reachability(), key.peer_id, registrations=Registrations(lambda stop: None))
    return coord, spool, state, sub


def _stored(swarm) -> int:
    with swarm.ctx.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(submissions)).scalar_one())


def test_a_resend_whose_first_answer_was_lost_counts_as_delivered_and_is_stored_once(swarm, tmp_path):
    swarm.clock.t = time.time()  # the worker signs with the real clock
    swarm.publish(0)
    key = swarm.new_worker()
    (lease,) = swarm.lease(key)
    coord, spool, state, submitter = _worker_side(swarm, key, tmp_path)
    entry = spool.put(swarm.submission(lease), tokens=8, expires_at=lease.expires_at)
    coord.submit(entry.submission)  # it arrived; the answer never reached the worker
    try:
        assert submitter.flush(threading.Event()) == 0
    finally:
        coord.close()
    assert spool.pending() == [] and spool.rejected() == []
    assert state.get("submitted") == 1 and state.get("rejected") == 0
    assert _stored(swarm) == 1


def test_another_conflict_is_set_aside_with_its_reason_not_taken_for_delivered(swarm, tmp_path):
    """The same completions were stored for this task under another lease (a task the dataset
    repeats): the coordinator answers 409 `duplicate_completion`, and this submission is not
    stored. The worker must not count it as delivered."""
    swarm.clock.t = time.time()
    swarm.publish(0)
    key = swarm.new_worker()
    first, second = swarm.lease(key, 2)
    assert swarm.submit(key, first).status_code == 200
    with swarm.ctx.db.write() as conn:  # the second lease is for the same task as the first
        conn.execute(update(leases).where(leases.c.lease_id == second.lease_id).values(task_id=first.task_id))
    coord, spool, state, submitter = _worker_side(swarm, key, tmp_path)
    spool.put(swarm.submission(second, completions=swarm.completions(first)), tokens=8, expires_at=second.expires_at)
    try:
        assert submitter.flush(threading.Event()) == 0
    finally:
        coord.close()
    assert spool.rejected() == [second.lease_id]
    reason = (spool.root / "rejected" / f"{second.lease_id}.json").read_text()
    assert "HTTP 409 duplicate_completion" in reason
    assert state.get("submitted") == 0 and state.get("rejected") == 1
    assert _stored(swarm) == 1
