"""Signatures bound to the run and the receiving role, and verdicts bound to what they judged.

Real coordinators on 127.0.0.1 (real HTTP, real SQLite files). Every refusal is shown to
change nothing: the whole database is snapshotted before and after.
"""

from protocol.envelope import AUDIENCE_VERIFIER, AUDIENCE_WORKER
from protocol.messages import (
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_HEARTBEAT,
    KIND_VERDICT,
    BatchRequest,
    BatchResponse,
    ClaimRequest,
    Heartbeat,
)
from tests.hostile.evidence import replay


def _accepted_group(s) -> str:
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w)
    sid = s.submit(w, lease).json()["submission_id"]
    s.claim()
    assert s.verdict(sid, True).status_code == 200
    return sid


def test_a_captured_batch_request_replayed_against_another_run_with_the_same_keys_is_refused(make_swarm):
    """Two runs share the operator key (same seed). A batch_request captured on its way to run
    A cannot take run B's groups: it names run A, signed."""
    run_a = make_swarm(run_id="run-a")
    run_b = make_swarm(run_id="run-b")
    assert run_a.operator.public.hex == run_b.operator.public.hex
    _accepted_group(run_b)
    captured = run_a.seal(KIND_BATCH_REQUEST, BatchRequest(max_groups=8, min_policy_version=0), run_a.operator)
    before = run_b.snapshot()
    status, detail = replay(captured, run_b.server.url, "/v1/trainer/batch")  # tests/hostile/evidence.py
    assert status == 422, detail
    assert "signed for run 'run-a', but this coordinator serves run 'run-b'" in detail
    assert run_b.snapshot() == before
    assert run_b.metric("swarmrl_coordinator_rejections_total", reason="wrong_scope") == 1
    # signed for run B, the same request is served
    ok = run_b.send("/v1/trainer/batch", run_b.seal(KIND_BATCH_REQUEST, BatchRequest(max_groups=8, min_policy_version=0),
                                                     run_b.operator))
    assert len(BatchResponse.model_validate_json(ok.content).groups) == 1


def test_a_message_signed_for_another_role_is_refused_by_the_coordinator(swarm):
    """The verifier's key signs a claim and a verdict addressed to a verifier (and a worker's key
    a heartbeat addressed to workers): the coordinator's routes expect messages addressed to the
    coordinator and refuse them, naming both roles, before anything changes."""
    swarm.publish(0)
    w = swarm.new_worker()
    (lease,) = swarm.lease(w)
    sid = swarm.submit(w, lease).json()["submission_id"]
    before = swarm.snapshot()
    claim = swarm.seal(KIND_CLAIM, ClaimRequest(max_jobs=4), swarm.verifier, audience=AUDIENCE_VERIFIER)
    r = swarm.send("/v1/verification/claim", claim)
    assert r.status_code == 422, r.text
    assert "signed for the 'verifier' role, but was sent to the 'coordinator'" in r.json()["detail"]
    verdict = swarm.seal(KIND_VERDICT, swarm.verdict_body(sid, True), swarm.verifier, audience=AUDIENCE_VERIFIER)
    assert swarm.send("/v1/verdicts", verdict).status_code == 422
    hb = swarm.seal(KIND_HEARTBEAT, Heartbeat(), w, audience=AUDIENCE_WORKER)
    assert swarm.send("/v1/workers/heartbeat", hb).status_code == 422
    assert swarm.snapshot() == before
    assert swarm.claim() != []  # addressed to the coordinator, the same claim works


def test_a_verdict_that_names_another_submission_or_lease_is_refused_and_changes_nothing(swarm):
    """Issue 17 item 7: a verdict carries the digests of the submission and lease envelopes it
    judged; one whose digests are not those the coordinator stored is refused (422)."""
    swarm.publish(0)
    w = swarm.new_worker()
    la, lb = swarm.lease(w, 2)
    sa = swarm.submit(w, la).json()["submission_id"]
    sb = swarm.submit(w, lb).json()["submission_id"]
    jobs = {j.submission_id: j for j in swarm.claim()}
    from protocol.envelope import envelope_digest

    # the verifier's digests are those of the job as claimed: the same as the coordinator stored
    assert swarm.verdict_body(sa, True).submission_sha256 == envelope_digest(jobs[sa].submission)
    assert swarm.verdict_body(sa, True).lease_sha256 == envelope_digest(jobs[sa].lease)
    right_a, right_b = swarm.verdict_body(sa, False), swarm.verdict_body(sb, True)
    before = swarm.snapshot()
    cases = {
        "wrong_submission_digest": right_a.model_copy(update={"submission_sha256": right_b.submission_sha256}),
        "wrong_lease_digest": right_a.model_copy(update={"lease_sha256": right_b.lease_sha256}),
    }
    for reason, v in cases.items():
        r = swarm.post("/v1/verdicts", KIND_VERDICT, v, swarm.verifier)
        assert r.status_code == 422, r.text
        assert "judge the job exactly as claimed" in r.json()["detail"]
        assert swarm.metric("swarmrl_coordinator_rejections_total", reason=reason) == 1
    assert swarm.snapshot() == before  # no verdict, no ban, no nonce
    assert swarm.post("/v1/verdicts", KIND_VERDICT, right_b, swarm.verifier).status_code == 200
    assert swarm.snapshot_submission(sb)["status"] == "accepted"


def test_a_verdict_on_a_submission_stored_before_digests_were_recorded_is_checked_against_its_envelope(swarm):
    """Rows from before migration 0004 have no stored digest: it is computed from the stored envelope."""
    from sqlalchemy import update

    from coordinator.store.schema import submissions

    swarm.publish(0)
    w = swarm.new_worker()
    (lease,) = swarm.lease(w)
    sid = swarm.submit(w, lease).json()["submission_id"]
    swarm.claim()
    right = swarm.verdict_body(sid, True)
    with swarm.ctx.db.write() as conn:
        conn.execute(update(submissions).where(submissions.c.submission_id == sid).values(envelope_sha256=None))
    wrong = right.model_copy(update={"submission_sha256": "ab" * 32})
    assert swarm.post("/v1/verdicts", KIND_VERDICT, wrong, swarm.verifier).status_code == 422
    assert swarm.post("/v1/verdicts", KIND_VERDICT, right, swarm.verifier).status_code == 200
