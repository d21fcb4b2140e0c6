"""The verifier's bounded claim answer (`verifier.service.claim_answer_cap`) against jobs whose
task carries a large answer or metadata (a code task's test cases). Real coordinator on
127.0.0.1, real verifier service, real HTTP.

The cap allots each job the coordinator's largest submission plus `JOB_EXTRA_BYTES`: a lease at
the protocol's limits and `protocol.messages.MAX_TASK_DATA_BYTES`, the one bound on a task's
answer, kind and metadata that every task source holds to (tests/unit/protocol/
test_task_data_bound.py). Before that bound, a task with 7.5 MB of metadata made every claim
that carried it `Unavailable`: the verifier retried for ever, and the jobs were dropped unjudged
after `verification_max_claims` claims.

- a job whose task data is exactly at the bound fits the cap and is judged;
- a task over the bound that reaches the claim path anyway (a source that changed under the
  coordinator) is not sent: its submission is dropped at once with a reason that names the
  bound (no ban, no debit: the worker did nothing wrong), and the other jobs of the claim go out.
"""

from __future__ import annotations

import time
from dataclasses import replace

from protocol.messages import MAX_TASK_DATA_BYTES, task_data_bytes

def _service(s, batch_jobs: int):
    from protocol.http import SignedClient
    from verifier.metrics import VerifierMetrics
    from verifier.service import VerifierService

    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    service = VerifierService(client, coordinator_key=s.ctx.key.public, tokenizer=None, models=None, settings=None,
                              ledger=None, metrics=VerifierMetrics(), batch_jobs=batch_jobs)
    judged = []
    service.judge = lambda job: judged.append(job)   # the claim is what is tested, not the judging
    return client, service, judged


def test_an_honest_job_whose_task_data_is_at_the_bound_fits_the_verifiers_claim_cap(make_swarm):
    s = make_swarm()
    s.clock.t = time.time()
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w, 1)
    assert s.submit(w, lease).status_code == 200
    real = s.ctx.tasks.task

    def at_the_bound(index):
        t = real(index)
        pad = MAX_TASK_DATA_BYTES - task_data_bytes(t.answer, t.kind, {"tests": ""})
        return replace(t, metadata={"tests": "x" * pad})

    s.ctx.tasks.task = at_the_bound
    client, service, judged = _service(s, batch_jobs=1)
    try:
        assert service.step() == 1
    finally:
        client.close()
    (job,) = judged
    assert task_data_bytes(job.task_answer, job.task_kind, job.task_metadata) == MAX_TASK_DATA_BYTES


def test_a_task_over_the_bound_on_the_claim_path_is_dropped_and_the_other_jobs_go_out(make_swarm):
    s = make_swarm()
    s.clock.t = time.time()
    s.publish(0)
    w = s.new_worker()
    big_lease, small_lease = s.lease(w, 2)
    big_sid = s.submit(w, big_lease).json()["submission_id"]
    small_sid = s.submit(w, small_lease).json()["submission_id"]
    from verifier.service import claim_answer_cap

    big = claim_answer_cap(2)   # about 14 MB at the default 4 MiB body cap: no claim of two could carry it
    real = s.ctx.tasks.task
    s.ctx.tasks.task = lambda index: (replace(real(index), metadata={"tests": "x" * big})
                                      if real(index).id == big_lease.task_id else real(index))
    before = s.snapshot_worker(w)
    client, service, judged = _service(s, batch_jobs=2)
    try:
        assert service.step() == 1        # before the bound: Unavailable, this claim and every retry of it
        assert [j.submission_id for j in judged] == [small_sid]
        assert service.step() == 0        # the refused one is never handed out again
    finally:
        client.close()
    row = s.snapshot_submission(big_sid)
    assert row["status"] == "dropped" and "MAX_TASK_DATA_BYTES" in row["reason"], row["reason"]
    assert s.snapshot_submission(small_sid)["status"] == "queued"   # claimed, waiting for its verdict
    after = s.snapshot_worker(w)
    assert (after["status"], after["rejected"]) == (before["status"], before["rejected"])
