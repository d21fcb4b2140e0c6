"""Private by default (coordinator.privacy): what anonymous readers of the dashboard and
/v1/stats see, what the operator token unlocks, and what a worker's submission statuses say."""

import json

import pytest

from coordinator.errors import ConfigError
from protocol.messages import KIND_VERDICT, CheckResult
from tests.unit.dashboard.conftest import OPERATOR_TOKEN
from tests.unit.dashboard.test_dashboard_api import API, scripted_run

ANONYMOUS = ["/overview", "/workers", "/versions", "/curve", "/rejections"]


def read(s, path: str, token: str | None = None):
    return s.http.get(path, headers={"authorization": f"Bearer {token}"} if token else {})


def keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


def test_anonymous_views_show_no_address_no_undecided_submission_and_no_margins(make_coordinator):
    s = make_coordinator()
    honest, cheater, ids, bad, queued = scripted_run(s)
    before = s.snapshot()
    answers = {}
    for path in [API + p for p in ANONYMOUS] + ["/v1/stats"] + [f"{API}/rollouts/{i}" for i in ids + bad[:1]]:
        r = read(s, path)
        assert r.status_code == 200, (path, r.text)
        answers[path] = r.json()
    text = json.dumps(answers)
    assert "127.0.0.1" not in text and "address" not in keys(answers)
    assert not keys(answers) & {"full_check", "full_checked", "full_check_share", "clean_checks", "stats", "check_rate"}
    assert queued not in text
    assert "40/128" not in text and "group_exp_frac" not in text  # the verifier's numbers
    r = read(s, f"{API}/rollouts/{queued}")
    assert r.status_code == 403 and "not decided yet" in r.json()["detail"]

    rejected = answers[f"{API}/rollouts/{bad[0]}"]
    assert rejected["status"] == "rejected" and len(rejected["completions"]) == s.cfg.group_size
    assert rejected["verdict"] == {"accepted": False, "reason": "failed proof", "checks": [
        {"name": "proof", "passed": False}], "failed_checks": ["proof"], "verifier": s.verifier.peer_id,
        "signed_at": rejected["verdict"]["signed_at"]}
    accepted = answers[f"{API}/rollouts/{ids[0]}"]
    assert accepted["verdict"]["accepted"] is True and accepted["verdict"]["checks"] == []  # which ran: not said
    (row,) = answers[API + "/rejections"]
    assert row["failed_checks"] == ["proof"] and row["reason"] == "failed proof"
    w = {x["worker_id"]: x for x in answers[API + "/workers"]}
    assert w[cheater.peer_id]["ban_reason"] == f"submission {bad[0]} rejected: failed proof"
    assert w[honest.peer_id]["accepted"] == 2
    stats = {x["worker_id"]: x for x in answers["/v1/stats"]["workers"]}
    assert stats[cheater.peer_id]["ban_reason"] == f"submission {bad[0]} rejected: failed proof"
    assert s.snapshot() == before


def test_the_operator_token_unlocks_the_full_views(make_coordinator):
    s = make_coordinator()
    honest, cheater, ids, bad, queued = scripted_run(s)
    full = {p: read(s, API + p, OPERATOR_TOKEN).json() for p in ("/workers", "/rejections")}
    assert {w["address"] for w in full["/workers"]} == {"127.0.0.1"}
    assert full["/workers"][0]["full_checked"] is not None and full["/rejections"][0]["full_check"] is True
    assert full["/rejections"][0]["reason"] == "proof: 40/128 exponents differ"
    view = read(s, f"{API}/rollouts/{bad[0]}", OPERATOR_TOKEN).json()
    assert view["full_check"] is True and view["verdict"]["checks"][1]["stats"] == {"group_exp_frac": 0.3}
    assert read(s, f"{API}/rollouts/{queued}", OPERATOR_TOKEN).json()["verdict"] is None
    assert {w["address"] for w in read(s, "/v1/stats", OPERATOR_TOKEN).json()["workers"]} == {"127.0.0.1"}
    # a wrong token is told so (not silently served the anonymous view); counted like any refusal
    for bad_header in ("Bearer not-the-token-0123456789", "Basic " + OPERATOR_TOKEN):
        r = s.http.get(API + "/workers", headers={"authorization": bad_header})
        assert r.status_code == 401 and "operator token" in r.json()["detail"]
    assert s.metric("swarmrl_coordinator_rejections_total", reason="bad_operator_token") == 2


def test_without_a_configured_token_every_view_is_anonymous(make_coordinator):
    s = make_coordinator(dashboard={})
    scripted_run(s)
    assert "address" not in keys(read(s, API + "/workers").json())
    assert read(s, API + "/workers", OPERATOR_TOKEN).status_code == 401


def test_the_token_comes_from_a_file_and_must_be_long(make_coordinator, tmp_path):
    f = tmp_path / "operator.token"
    f.write_text(OPERATOR_TOKEN + "-from-a-file\n")
    s = make_coordinator(dashboard={"operator_token_file": str(f)})
    assert read(s, API + "/workers", OPERATOR_TOKEN + "-from-a-file").status_code == 200
    assert read(s, API + "/workers", OPERATOR_TOKEN).status_code == 401
    with pytest.raises(ConfigError, match="at least 16"):
        make_coordinator(dashboard={"operator_token": "short"})
    with pytest.raises(ConfigError, match="operator_token_file"):
        make_coordinator(dashboard={"operator_token_file": str(tmp_path / "missing")})


def test_a_worker_learns_which_check_failed_but_not_by_how_much(make_coordinator):
    s = make_coordinator()
    assert s.publish(0).status_code == 200
    worker = s.new_worker()
    leases = s.lease(worker, 3)
    sids = [s.submit(worker, lease).json()["submission_id"] for lease in leases]
    v = s.verdict_body(sids[0], False,
                       reason="proof: completion 0 chunk 0: 40/128 exponents differ; sampling: 3 tokens 0.41 over",
                       checks=[CheckResult(name="proof", passed=False, stats={"group_exp_frac": 0.3}),
                               CheckResult(name="sampling", passed=False, stats={"over_tolerance": 3})])
    assert s.post("/v1/verdicts", KIND_VERDICT, v, s.verifier).status_code == 200
    one = s.http.get(f"/v1/submissions/{sids[0]}").json()
    assert one == {"submission_id": sids[0], "worker_id": worker.peer_id, "status": "rejected",
                   "reason": "failed proof, sampling", "tokens": one["tokens"]}
    many = s.http.get("/v1/submission-statuses", params={"ids": ",".join(sids)}).json()["statuses"]
    assert [x["reason"] for x in many] == ["failed proof, sampling",
                                           f"worker banned: submission {sids[0]} rejected: failed proof, sampling",
                                           f"worker banned: submission {sids[0]} rejected: failed proof, sampling"]
    text = json.dumps([one, many])
    assert "full_check" not in text and "40" not in text and "0.41" not in text
