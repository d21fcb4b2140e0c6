"""A verifier that restarts takes its own unexpired claims back at once (`POST
/v1/verification/resume`), and no verifier can take another's.

Before: a verifier killed mid-claim (SIGKILL, OOM, a crash) left its claimed jobs unjudged
until `verification_claim_ttl_s` (120 s by default) passed, although the same verifier key was
back and claiming within seconds: those submissions, and the groups the trainer waits for,
waited out the whole TTL. A real coordinator on 127.0.0.1 (real SQLite, real HTTP), its clock
moved by the test.
"""

from __future__ import annotations

from protocol.identity import KeyPair
from protocol.messages import KIND_RESUME, ClaimRequest, ClaimResponse
from protocol.routes import VERIFICATION_RESUME


def _resume(s, key, n: int = 16):
    r = s.post(VERIFICATION_RESUME, KIND_RESUME, ClaimRequest(max_jobs=n), key)
    assert r.status_code == 200, r.text
    return [j.submission_id for j in ClaimResponse.model_validate_json(r.content).jobs]



def _claimed_by_a_killed_verifier(s) -> str:
    """One submission, claimed by the swarm's verifier key, which then dies (its claim unexpired;
    the swarm's clock on wall time, which a VerifierService's own clock reads): its id."""
    import time

    s.clock.t = time.time()
    s.publish(0)
    w = s.new_worker()
    (sid,) = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 1)]
    assert [j.submission_id for j in s.claim(1)] == [sid]
    return sid

def test_a_restarted_verifier_takes_its_own_claims_back_at_once(make_swarm):
    other = KeyPair.from_seed(b"w" * 32)
    s = make_swarm(verifier_keys=[KeyPair.from_seed(b"v" * 32).public.hex, other.public.hex])
    s.publish(0)
    w = s.new_worker()
    sids = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 3)]
    assert [j.submission_id for j in s.claim(2)] == sids[:2]  # ... and the verifier is killed
    s.clock.advance(5.0)  # it is back (same key) within seconds
    assert _resume(s, other) == []  # another verifier's resume takes nothing of it
    assert [j.submission_id for j in s.claim(16, other)] == sids[2:]  # ... nor does its claim
    assert _resume(s, s.verifier) == sids[:2]  # its own, at once, not after the 120 s TTL
    assert s.verdict(sids[0], True).status_code == 200
    s.clock.advance(s.cfg.verification_claim_ttl_s + 1)  # the resumed claim expires like any other
    assert [j.submission_id for j in s.claim(16, other)] == sids[1:]  # (sids[2]'s claim expired too)


def test_resume_respects_the_claim_limit_and_the_role(make_swarm):
    s = make_swarm(verification_max_claims=2)
    s.publish(0)
    w = s.new_worker()
    (sid,) = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 1)]
    assert [j.submission_id for j in s.claim()] == [sid]
    assert _resume(s, s.verifier) == [sid]  # the second hand-out
    assert _resume(s, s.verifier) == []  # a verifier that dies on it at every start is not fed it for ever
    r = s.post(VERIFICATION_RESUME, KIND_RESUME, ClaimRequest(max_jobs=1), w)
    assert r.status_code == 403, r.text  # a worker key is no verifier


def test_the_verifier_service_resumes_its_own_claims_first(make_swarm):
    """The verifier's work loop (verifier.service) after a restart: its first claims are resumes,
    so the jobs its killed predecessor held are judged at once, before any new job; then
    ordinary claims. (Its signatures carry real time: the coordinator's clock is set to it.)"""
    import time

    from protocol.http import SignedClient
    from verifier.metrics import VerifierMetrics
    from verifier.service import VerifierService

    s = make_swarm()
    s.clock.t = time.time()
    s.publish(0)
    w = s.new_worker()
    sids = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 3)]
    assert [j.submission_id for j in s.claim(2)] == sids[:2]  # ... and that verifier is killed
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    service = VerifierService(client, coordinator_key=s.ctx.key.public, tokenizer=None, models=None, settings=None,
                              ledger=None, metrics=VerifierMetrics(), batch_jobs=1)
    judged: list[str] = []
    service.judge = lambda job: judged.append(job.submission_id)  # no verdict: only the order matters
    try:
        steps = []
        for _ in range(4):
            s.clock.advance(1.0)  # judging takes time
            steps.append(service.step())
        assert steps == [1, 1, 1, 0]
    finally:
        client.close()
    assert judged == sids  # its own two claims first (resumed), then the unclaimed one


def test_lost_resume_answers_do_not_use_up_a_jobs_claims(make_swarm):
    """A resume whose answer is lost after the coordinator committed it (a read timeout under
    load, a proxy cut) was retried by the service (`retry_call`), and every try handed the same
    jobs out again, each counted against `verification_max_claims` (5): four lost answers and
    the verifier's own job reached the limit, was no longer resumed nor claimable, and would be
    dropped unjudged when its claim expired, although this verifier was up the whole time. Now a
    resume that failed after it was sent is not tried again: the jobs wait out their claim TTL
    (as before the resume existed) and are judged then. A resume never sent (no connection: the
    coordinator not up yet) is tried again, as it changed nothing."""

    from protocol.errors import Unavailable
    from protocol.http import SignedClient
    from verifier.metrics import VerifierMetrics
    from verifier.service import VerifierService

    s = make_swarm(verification_claim_ttl_s=5.0)   # short, so that its expiry is seen in a few steps
    sid = _claimed_by_a_killed_verifier(s)
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    real = client.post_signed
    lost = [4]

    def post_signed(route, *args, **kwargs):
        out = real(route, *args, **kwargs)
        if route == VERIFICATION_RESUME and lost[0]:
            lost[0] -= 1
            raise Unavailable("read timed out")   # committed at the coordinator, answer lost
        return out

    client.post_signed = post_signed
    service = VerifierService(client, coordinator_key=s.ctx.key.public, tokenizer=None, models=None, settings=None,
                              ledger=None, metrics=VerifierMetrics(), batch_jobs=1)
    judged: list[str] = []
    service.judge = lambda job: judged.append(job.submission_id)
    try:
        for _ in range(12):
            s.clock.advance(1.0)
            try:
                service.step()
            except Unavailable:
                pass   # retry_call's retry
    finally:
        client.close()
    assert judged[:1] == [sid], f"judged {judged}; claims {s.snapshot_submission(sid)['claims']}"
    assert s.snapshot_submission(sid)["claims"] <= 3   # the first claim, the lost resume, the claim after its TTL


def test_a_resume_never_sent_is_tried_again(make_swarm):
    """No connection (the coordinator not up yet when the verifier starts): nothing was handed
    out, so the service keeps resuming and takes its claims back once the coordinator answers."""
    import time

    from protocol.errors import Unreachable
    from protocol.http import SignedClient
    from verifier.metrics import VerifierMetrics
    from verifier.service import VerifierService

    s = make_swarm()
    s.clock.t = time.time()
    s.publish(0)
    w = s.new_worker()
    (sid,) = [s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 1)]
    assert [j.submission_id for j in s.claim(1)] == [sid]
    down = SignedClient("http://127.0.0.1:9", s.verifier, run_id=s.cfg.run_id)   # nothing listens there
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    service = VerifierService(down, coordinator_key=s.ctx.key.public, tokenizer=None, models=None, settings=None,
                              ledger=None, metrics=VerifierMetrics(), batch_jobs=1)
    judged: list[str] = []
    service.judge = lambda job: judged.append(job.submission_id)
    try:
        try:
            service.step()
            raise AssertionError("a step against a closed port went through")
        except Unreachable:
            pass
        service.client = client   # the coordinator is up
        s.clock.advance(1.0)
        assert service.step() == 1
    finally:
        down.close()
        client.close()
    assert judged == [sid]


def test_a_restart_hands_a_job_it_cannot_judge_yet_out_once(make_swarm):
    """A restarted verifier that cannot judge a job it took back yet (JobError: its policy
    version not fetched yet) left it claimed; the service's next step resumed again, and the
    coordinator handed the same job out once more (counted against `verification_max_claims`)
    only for the service to see it had it already: every restart cost such a job two of its five
    hand-outs. A resume answered with fewer jobs than asked for has returned them all: no
    second resume."""

    from protocol.http import SignedClient
    from verifier.metrics import VerifierMetrics
    from verifier.service import VerifierService

    s = make_swarm()
    sid = _claimed_by_a_killed_verifier(s)
    client = SignedClient(s.server.url, s.verifier, run_id=s.cfg.run_id)
    service = VerifierService(client, coordinator_key=s.ctx.key.public, tokenizer=None, models=None, settings=None,
                              ledger=None, metrics=VerifierMetrics(), batch_jobs=4)
    seen: list[str] = []
    service.judge = lambda job: seen.append(job.submission_id)   # deferred: no verdict
    try:
        steps = []
        for _ in range(3):
            s.clock.advance(1.0)
            steps.append(service.step())
    finally:
        client.close()
    assert steps == [1, 0, 0] and seen == [sid]
    assert s.snapshot_submission(sid)["claims"] == 2   # the claim before the kill, the resume
