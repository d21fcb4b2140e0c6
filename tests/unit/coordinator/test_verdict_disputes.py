"""A rejection that is no doing of the worker (a reward dispute between the coordinator's and
the verifier's scorings: `protocol.messages.Verdict.worker_fault` False) over real HTTP: the
group is not trained, and the worker is neither banned nor debited; such a verdict that names
any other failed check, or that accepts, is refused and changes nothing."""

import pytest

from protocol.messages import KIND_VERDICT, BatchResponse, CheckResult, Verdict

CHEAP = {"initial": 0.0, "floor": 0.0, "halve_every": 1}


def submit(s, w, n=1) -> list[str]:
    return s.submit_queued(w, n)


DISPUTE = CheckResult(name="reward", passed=False, detail="coordinator reward 1.0 of completion 2 differs from the "
                      "recomputed 0.0 (1 completions; 0 of them failed to score here)",
                      stats={"recomputed": [0.0, 0.0, 0.0, 0.0], "disputed": [2], "disputed_count": 1,
                             "disputed_here": 0, "worker_fault": False})


def no_fault(s, sid: str, checks: list[CheckResult], accepted: bool = False):
    reason = "not counted against the worker: " + "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed)
    body = s.verdict_body(sid, accepted, full_check=False, checks=checks, reason=reason).model_copy(
        update={"worker_fault": False})
    return s.post("/v1/verdicts", KIND_VERDICT, body, s.verifier)


def test_a_disputed_reward_rejects_the_group_but_neither_bans_nor_debits_the_worker(make_swarm):
    s = make_swarm(check_rate=CHEAP)
    s.publish(0)
    w = s.new_worker()
    disputed, later = submit(s, w, 2)
    r = no_fault(s, disputed, [DISPUTE])
    assert r.status_code == 200, r.text
    row = s.snapshot_worker(w)
    assert row["status"] == "active" and row["rejected"] == 0 and row["ban_reason"] in (None, "")
    assert s.snapshot_submission(disputed)["status"] == "rejected"
    assert s.snapshot_submission(later)["status"] == "queued"          # its other work goes on
    assert s.metric("swarmrl_coordinator_verdicts_total", verdict="disputed") == 1
    # what the worker reads of it: which check, that it does not count against it, and no number
    status = s.http.get(f"/v1/submissions/{disputed}").json()
    assert status["status"] == "rejected"
    assert status["reason"] == "not counted against the worker: failed reward"
    # the worker goes on working and its next group is trained
    assert s.verdict(later, True, full_check=True).status_code == 200
    got = [g.submission_id for g in BatchResponse.model_validate_json(s.batch().content).groups]
    assert got == [later]
    # the same rejection counted against the worker (the verdict every verifier sent before) bans it
    (third,) = submit(s, w)
    assert s.verdict(third, False, full_check=False, checks=[DISPUTE]).status_code == 200
    assert s.snapshot_worker(w)["status"] == "banned"


@pytest.mark.parametrize("checks, accepted", [
    ([DISPUTE, CheckResult(name="proof", passed=False, detail="completion 0 ...")], False),  # a real failure too
    ([CheckResult(name="sampling", passed=False, detail="not the seeded sample")], False),
    ([], False),                                                                               # nothing failed
    ([CheckResult(name="reward", passed=True)], True),                                         # an acceptance
])
def test_a_no_fault_verdict_beyond_a_reward_dispute_is_refused_and_changes_nothing(make_swarm, checks, accepted):
    s = make_swarm(check_rate=CHEAP)
    s.publish(0)
    w = s.new_worker()
    (sid,) = submit(s, w)
    before = s.snapshot()
    r = no_fault(s, sid, checks, accepted=accepted)
    assert r.status_code == 422 and "inconsistent_verdict" in r.text, r.text
    after = s.snapshot()
    after.pop("nonces", None), before.pop("nonces", None)
    assert after == before


def test_a_verdict_that_blames_the_worker_has_the_body_verifiers_always_sent():
    v = Verdict(submission_id="S1", accepted=False, full_check=True, checks=[], reason="x",
                submission_sha256="0" * 64, lease_sha256="0" * 64)
    assert "worker_fault" not in v.model_dump() and "worker_fault" not in v.model_dump_json()
    assert Verdict.model_validate_json(v.model_dump_json()).worker_fault is True
    cleared = v.model_copy(update={"worker_fault": False})
    assert Verdict.model_validate_json(cleared.model_dump_json()).worker_fault is False
