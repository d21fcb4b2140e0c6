"""Several verifier processes (replicas) sharing one verifier key: a replica that restarts takes
back only its own claims (`POST /v1/verification/resume` with the replica's `instance`), never
the claims its siblings hold and are judging. A real coordinator on 127.0.0.1 (real SQLite,
real HTTP), its clock set to real time (the services sign with it) and moved by the test.

Before: claims were keyed by the verifier's key alone, so a restarting replica's resume took
every unexpired claim of that key: jobs a sibling was judging were judged twice (two full
checks) and each such hand-out counted against `verification_max_claims` (five restarts and a
sibling's job was dropped unjudged).
"""

from __future__ import annotations

import time

from protocol.messages import KIND_CLAIM, KIND_RESUME, ClaimRequest, ClaimResponse
from protocol.routes import VERIFICATION_CLAIM, VERIFICATION_RESUME


def _service(s, client, instance):
    from verifier.metrics import VerifierMetrics
    from verifier.service import VerifierService

    return VerifierService(client, coordinator_key=s.ctx.key.public, tokenizer=None, models=None, settings=None,
                           ledger=None, metrics=VerifierMetrics(), batch_jobs=2, instance=instance)



def _submitted(s, n: int) -> list[str]:
    """`n` submissions of one worker on policy version 0, queued for verification (the swarm's
    clock on wall time: a VerifierService's own clock reads it), their ids in order."""
    s.clock.t = time.time()
    s.publish(0)
    w = s.new_worker()
    return [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, n)]

def test_a_restarting_replica_does_not_take_its_siblings_claims(make_swarm):
    from protocol.http import SignedClient

    s = make_swarm()
    sids = _submitted(s, 2)
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    try:
        a = _service(s, client, "replica-a")
        held_by_a: list[str] = []
        a.judge = lambda job: held_by_a.append(job.submission_id)   # A is judging them (no verdict yet)
        assert a.step() == 2 and held_by_a == sids
        s.clock.advance(1.0)
        b = _service(s, client, "replica-b")   # a sibling replica (re)starts with the same key
        judged_by_b: list[str] = []
        b.judge = lambda job: judged_by_b.append(job.submission_id)
        b.step()
    finally:
        client.close()
    assert judged_by_b == [], f"replica B took back A's claims {judged_by_b}"
    assert [s.snapshot_submission(i)["claims"] for i in sids] == [1, 1]   # not handed out again


def test_a_restarted_replica_takes_back_its_own_claims_and_its_siblings_keep_theirs(make_swarm):
    """Replicas A and B share a key and each hold a claim; A is killed and starts again under the
    same instance id: its first step takes back its own claim at once, and B's stays B's."""
    from protocol.http import SignedClient

    s = make_swarm()
    sids = _submitted(s, 3)
    assert claim_as(s, s.verifier, 1, "replica-a") == sids[:1]   # ... and A is killed
    assert claim_as(s, s.verifier, 1, "replica-b") == sids[1:2]  # B is judging this one
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    judged: list[str] = []
    try:
        a = _service(s, client, "replica-a")   # A again, same instance id
        a.judge = lambda job: judged.append(job.submission_id) or s.verdict_body(job.submission_id, True)
        for _ in range(3):
            s.clock.advance(1.0)
            a.step()
    finally:
        client.close()
    assert judged == [sids[0], sids[2]]   # its own claim first (resumed), then the unclaimed one; never B's
    assert [s.snapshot_submission(i)["claims"] for i in sids] == [2, 1, 1]
    assert [s.snapshot_submission(i)["status"] for i in sids] == ["accepted", "queued", "accepted"]


def claim_as(s, key, n: int, instance: str | None) -> list[str]:
    r = s.post(VERIFICATION_CLAIM, KIND_CLAIM, ClaimRequest(max_jobs=n, instance=instance), key)
    assert r.status_code == 200, r.text
    return [j.submission_id for j in ClaimResponse.model_validate_json(r.content).jobs]


def resume_as(s, key, n: int, instance: str | None) -> list[str]:
    r = s.post(VERIFICATION_RESUME, KIND_RESUME, ClaimRequest(max_jobs=n, instance=instance), key)
    assert r.status_code == 200, r.text
    return [j.submission_id for j in ClaimResponse.model_validate_json(r.content).jobs]


def check_resume_takes_only_the_same_instance(a, b) -> None:
    """Claims through coordinator `a` by three processes of one key (two replicas and an older
    verifier that names no instance), resumes through `b` (the same coordinator, or another
    replica on the same database): each resume gets exactly its own instance's claims."""
    a.publish(0)
    w = a.new_worker()
    sids = [a.submit(w, lease).json()["submission_id"] for lease in a.lease(w, 4)]
    assert claim_as(a, a.verifier, 1, "replica-a") == sids[:1]
    assert claim_as(a, a.verifier, 1, "replica-b") == sids[1:2]
    assert claim_as(a, a.verifier, 1, None) == sids[2:3]   # a verifier from before instances
    b.clock.advance(5.0)
    assert resume_as(b, a.verifier, 16, "replica-c") == []   # a new replica: nothing of its siblings'
    assert resume_as(b, a.verifier, 16, "replica-b") == sids[1:2]
    assert resume_as(b, a.verifier, 16, None) == sids[2:3]   # the old verifier: only its own, as before
    assert resume_as(b, a.verifier, 16, "replica-a") == sids[:1]
    assert [a.snapshot_submission(i)["claimed_instance"] for i in sids] == ["replica-a", "replica-b", None, None]
    assert [a.snapshot_submission(i)["claims"] for i in sids] == [2, 2, 2, 0]


def test_a_resume_takes_only_the_claims_of_its_own_instance(make_swarm):
    s = make_swarm()
    check_resume_takes_only_the_same_instance(s, s)


def test_an_instance_that_is_no_identifier_is_refused_and_changes_nothing(make_swarm):
    s = make_swarm()
    s.publish(0)
    w = s.new_worker()
    s.submit(w, s.lease(w, 1)[0])
    before = s.snapshot()
    for bad in ("", "x" * 129, "a b", "a/b", "é", 7):
        for route, kind in ((VERIFICATION_CLAIM, KIND_CLAIM), (VERIFICATION_RESUME, KIND_RESUME)):
            r = s.send(route, s.seal_raw(kind, {"max_jobs": 4, "instance": bad}, s.verifier))
            assert r.status_code in (400, 422), (bad, r.status_code, r.text)
    snap = s.snapshot()
    snap.pop("nonces"), before.pop("nonces")
    assert snap == before


def test_a_second_verdict_on_a_job_judged_twice_changes_nothing(make_swarm):
    """A claim that expired (its replica stalled past `verification_claim_ttl_s`) is handed to
    another replica: the job is judged twice. The first verdict decides it; the second, whatever
    it says, alone or in a batch, is refused (409 already_decided) and changes nothing: no second
    credit or debit, no flip of the status or the buffer."""
    from protocol.messages import KIND_VERDICT, VerdictBatchResponse

    s = make_swarm()
    s.publish(0)
    w = s.new_worker()
    (sid,) = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 1)]
    assert claim_as(s, s.verifier, 1, "replica-a") == [sid]
    s.clock.advance(s.cfg.verification_claim_ttl_s + 1)
    assert claim_as(s, s.verifier, 1, "replica-b") == [sid]   # judged twice
    assert s.verdict(sid, True).status_code == 200
    before = s.snapshot()
    for accepted in (False, True):
        r = s.verdict(sid, accepted, reason="the second verdict")
        assert r.status_code == 409 and "already_decided" in r.text, r.text
    late = [s.seal(KIND_VERDICT, s.verdict_body(sid, accepted), s.verifier) for accepted in (False, True)]
    r = s.http.post("/v1/verdicts/batch", json={"envelopes": [e.model_dump(mode="json") for e in late]})
    assert r.status_code == 200, r.text
    assert [o.status for o in VerdictBatchResponse.model_validate_json(r.content).results] == [409, 409]
    snap = s.snapshot()
    snap.pop("nonces"), before.pop("nonces")
    assert snap == before
    assert s.snapshot_submission(sid)["status"] == "accepted" and s.snapshot_worker(w)["accepted"] == 1


def test_a_database_at_0010_migrates_and_its_claims_stay_resumable_without_an_instance(tmp_path):
    """Migration 0011 adds `submissions.claimed_instance`: a claim made before it (an older
    coordinator, an older verifier) has none, so only a resume without an instance takes it back."""
    from coordinator.store import submissions
    from coordinator.store.db import Database
    from coordinator.store.schema import leases, submission_payloads, workers
    from coordinator.store.schema import submissions as submissions_t

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.migrate("0010")
    try:
        with db.write() as conn:
            conn.execute(workers.insert(), dict(worker_id="w0", public_key="0" * 64, status="active",
                                                registered_at=0.0, last_seen=0.0))
            conn.execute(leases.insert(), dict(lease_id="l0", worker_id="w0", task_index=0, task_id="t0",
                                               status="submitted", issued_at=0.0, expires_at=60.0, envelope="{}"))
            conn.execute(submissions_t.insert(), dict(
                submission_id="s0", lease_id="l0", worker_id="w0", task_id="t0", task_index=0, policy_version=0,
                status="queued", full_check=False, rewards="[]", advantages="[]", reward_mean=0.0, n_tokens=1,
                content_hash="h0", received_at=1.0, claimed_by="v", claimed_at=100.0, claims=1))
            conn.execute(submission_payloads.insert(), dict(submission_id="s0", envelope="{}", group_json="{}"))
        db.migrate()
        with db.write() as conn:
            assert submissions.reclaim(conn, "v", 101.0, 120.0, 8, instance="replica-a") == []
            assert [r.submission_id for r in submissions.reclaim(conn, "v", 101.0, 120.0, 8)] == ["s0"]
        with db.read() as conn:
            row = submissions.get(conn, "s0")
        assert (row.claimed_instance, row.claims, row.claimed_at) == (None, 2, 101.0)
    finally:
        db.dispose()


def test_a_verifier_with_an_instance_still_claims_from_a_coordinator_without_instances(make_swarm, monkeypatch):
    """Version skew: a coordinator from before `ClaimRequest.instance` refuses the unknown field
    (422). The verifier then claims without it (the old behaviour) instead of being refused for
    ever; its jobs are judged."""
    from typing import ClassVar

    from pydantic import Field

    import coordinator.app
    from protocol.http import SignedClient
    from protocol.messages import Strict

    class OldClaimRequest(Strict):   # protocol.messages.ClaimRequest before the field
        max_jobs: int = Field(ge=1, le=64)
        instance: ClassVar[None] = None   # what the new coordinator code reads of it

    monkeypatch.setattr(coordinator.app, "ClaimRequest", OldClaimRequest)
    s = make_swarm()
    sids = _submitted(s, 2)
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    judged: list[str] = []
    try:
        a = _service(s, client, "replica-a")
        a.judge = lambda job: judged.append(job.submission_id)
        assert a.step() == 2
    finally:
        client.close()
    assert judged == sids and a.instance is None
