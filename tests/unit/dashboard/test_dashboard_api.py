"""The dashboard's read-only JSON, the trainer's signed eval reports, relay polling and the page.

These read the full (operator) views; test_dashboard_private.py covers what anonymous readers get."""

import json
import re
import time
from pathlib import Path

from fastapi import FastAPI, Response

from protocol.http import ServerThread
from protocol.lm import load_tokenizer
from protocol.messages import KIND_EVAL_REPORT, KIND_VERDICT, CheckResult, EvalReport
from tests.unit.dashboard.conftest import OPERATOR_TOKEN

API = "/v1/dashboard"
STATIC = Path(__file__).resolve().parents[3] / "coordinator" / "dashboard" / "static"


def get(s, path, status=200, token=OPERATOR_TOKEN):
    r = s.http.get(API + path, headers={"authorization": f"Bearer {token}"} if token else {})
    assert r.status_code == status, r.text
    return r.json()


def report(s, version, acc, key=None, **kw):
    return s.post("/v1/trainer/eval", KIND_EVAL_REPORT,
                  EvalReport(policy_version=version, greedy_accuracy=acc, num_tasks=20, **kw), key or s.operator)


def reject(s, sid):
    v = s.verdict_body(sid, False, reason="proof: 40/128 exponents differ",
                       checks=[CheckResult(name="reward", passed=True, stats={"mean": 0.0}),
                               CheckResult(name="proof", passed=False, stats={"group_exp_frac": 0.3},
                                           detail="completion 0 chunk 0: 40/128 exponents differ")])
    assert s.post("/v1/verdicts", KIND_VERDICT, v, s.verifier).status_code == 200


def scripted_run(s):
    """v0 and v1; an honest worker with two accepted groups (one right) and one queued; a
    cheater rejected once (its other group dropped at the ban); eval reports for both versions."""
    assert s.publish(0).status_code == 200
    honest, cheater = s.new_worker(), s.new_worker()
    tok = load_tokenizer(str(s.model_dir))
    leases = s.lease(honest, 2)
    answer = tok(s.ctx.tasks.prepare(0).task.answer, add_special_tokens=False)["input_ids"]
    ids = [s.submit(honest, leases[0], completions=s.completions(leases[0], answer)).json()["submission_id"],
           s.submit(honest, leases[1]).json()["submission_id"]]
    bad = [s.submit(cheater, l).json()["submission_id"] for l in s.lease(cheater, 2)]
    for sid in ids:
        assert s.verdict(sid, True).status_code == 200
    reject(s, bad[0])
    assert s.publish(1).status_code == 200
    queued = s.submit(honest, s.lease(honest, 1)[0]).json()["submission_id"]  # at v1, not judged yet
    assert report(s, 0, 0.25).status_code == 200
    assert report(s, 1, 0.40, sampled_accuracy=0.3).status_code == 200
    return honest, cheater, ids, bad, queued


def test_dashboard_shows_workers_versions_curve_and_rejections(make_coordinator):
    s = make_coordinator()
    honest, cheater, ids, bad, queued = scripted_run(s)
    before = s.snapshot()

    o = get(s, "/overview")
    assert (o["current_version"], o["versions"], o["verification_queue"]) == (1, 2, 1)
    assert o["workers"] == {"active": 1, "banned": 1} and o["buffer"]["depth"] == 2
    assert o["submissions"] == {"accepted": 2, "rejected": 1, "dropped": 1, "queued": 1}

    w = {x["worker_id"]: x for x in get(s, "/workers")}
    h, c = w[honest.peer_id], w[cheater.peer_id]
    assert (h["status"], h["accepted"], h["rejected"], h["queued"], h["full_checked"]) == ("active", 2, 0, 1, 2)
    assert (c["status"], c["accepted"], c["rejected"], c["dropped"]) == ("banned", 0, 1, 1)
    assert c["ban_reason"].startswith(f"submission {bad[0]} rejected: proof")
    assert h["check_rate"] == 1.0 and h["submissions_last_minute"] == 3
    tokens = sum(s.snapshot_submission(i)["n_tokens"] for i in ids + [queued])
    assert h["tokens_per_s"] == round(tokens / 60, 2)
    s.clock.advance(120)  # throughput is over the last minute
    assert {x["worker_id"]: x["tokens_per_s"] for x in get(s, "/workers")}[honest.peer_id] == 0.0

    v = get(s, "/versions")
    assert [x["version"] for x in v["versions"]] == [1, 0] and v["relays"] == []
    assert v["versions"][1]["submissions"] == 4 and v["versions"][1]["accepted"] == 2
    assert v["versions"][0]["shards"] >= v["versions"][0]["files"] > 0 and v["versions"][0]["broadcast"] is None

    curve = get(s, "/curve")
    assert [(p["version"], p["greedy_accuracy"], p["sampled_accuracy"]) for p in curve] == [(0, 0.25, None),
                                                                                              (1, 0.40, 0.3)]
    assert curve[0]["mean_reward"] == 0.25 and curve[0]["mean_reward_accepted"] == 0.5  # one right group of two
    assert curve[1]["submissions"] == 1 and curve[1]["mean_reward_accepted"] is None

    rej = get(s, "/rejections")
    assert [r["submission_id"] for r in rej] == [bad[0]]
    assert rej[0]["failed_checks"] == ["proof"] and rej[0]["audit_url"] == f"/dashboard/rollout.html?id={bad[0]}"

    view = get(s, f"/rollouts/{bad[0]}")
    task = s.ctx.tasks.source.task("train", view["task_index"])
    assert view["status"] == "rejected" and view["worker_id"] == cheater.peer_id
    assert view["prompt"]["text"] == task.prompt and len(view["completions"]) == s.cfg.group_size
    assert [(c["name"], c["passed"]) for c in view["verdict"]["checks"]] == [("reward", True), ("proof", False)]
    assert view["verdict"]["checks"][1]["stats"] == {"group_exp_frac": 0.3}
    with s.ctx.db.read() as conn:
        lease = json.loads(conn.exec_driver_sql("SELECT envelope FROM leases WHERE lease_id = ?",
                                                (view["lease_id"],)).scalar_one())["body"]
    assert view["lease"]["seeds"] == [str(x) for x in lease["seeds"]]  # exact: 63-bit seeds as strings
    assert [c["seed"] for c in view["completions"]] == view["lease"]["seeds"]
    right = get(s, f"/rollouts/{ids[0]}")
    assert {c["text"] for c in right["completions"]} == {s.ctx.tasks.prepare(0).task.answer}
    assert all(c["reward"] == 1.0 for c in right["completions"])
    assert get(s, f"/rollouts/{queued}")["verdict"] is None
    assert get(s, "/rollouts/s-unknown", 404)["detail"] == "no submission s-unknown"
    assert s.snapshot() == before  # reading changes nothing


def test_eval_reports_are_operator_signed_once_and_for_announced_versions(make_coordinator):
    s = make_coordinator()
    assert s.publish(0).status_code == 200
    worker = s.new_worker()
    before = s.snapshot()
    r = report(s, 0, 0.5, key=worker)
    assert r.status_code == 403 and "operator key" in r.json()["detail"]
    r = report(s, 7, 0.5)
    assert r.status_code == 404 and "never announced" in r.json()["detail"]
    env = s.seal(KIND_EVAL_REPORT, EvalReport(policy_version=0, greedy_accuracy=0.5, num_tasks=10), s.operator)
    bad = env.model_copy(update={"body": {**env.body, "greedy_accuracy": 1.5}})
    assert s.send("/v1/trainer/eval", bad).status_code == 401       # the signature no longer matches
    raw = s.seal_raw(KIND_EVAL_REPORT, {**env.body, "greedy_accuracy": 1.5}, s.operator)
    assert s.send("/v1/trainer/eval", raw).status_code == 422       # signed, but not a valid report
    assert s.send("/v1/trainer/eval", "{not json").status_code == 400
    assert s.snapshot() == before                                   # refusals change nothing
    assert s.send("/v1/trainer/eval", env).status_code == 200
    assert s.send("/v1/trainer/eval", env).status_code == 409       # a replay
    assert report(s, 0, 0.75).status_code == 200                    # a later report of the version wins
    assert [(p["version"], p["greedy_accuracy"]) for p in get(s, "/curve")] == [(0, 0.75)]


def fake_relay(state: dict) -> ServerThread:
    app = FastAPI()

    @app.get("/v1/versions")
    def versions() -> dict:
        return {"versions": state["versions"], "complete": state["complete"]}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response("# TYPE shardcast_shards_verified counter\n"
                        f"shardcast_shards_verified_total {state['shards']}\n"
                        "# TYPE shardcast_bytes_served counter\nshardcast_bytes_served_total 1024.0\n",
                        media_type="text/plain")

    return ServerThread(app).start()


def test_broadcast_progress_comes_from_the_advertised_relays(make_coordinator):
    state = {"versions": [0, 1], "complete": [0], "shards": 7}
    relay = fake_relay(state)
    dead = "http://127.0.0.1:9"
    try:
        s = make_coordinator(relays=[relay.url, dead], dashboard_relay_poll_s=5.0)
        assert s.publish(0).status_code == 200 and s.publish(1).status_code == 200
        v = get(s, "/versions")
        relays = {r["url"]: r for r in v["relays"]}
        assert relays[relay.url]["reachable"] and relays[relay.url]["latest_complete"] == 0
        assert relays[relay.url]["in_progress"] == [1]
        assert relays[relay.url]["metrics"] == {"shards_verified": 7.0, "bytes_served": 1024.0}
        assert not relays[dead]["reachable"] and "ConnectError" in relays[dead]["error"]
        by = {x["version"]: x for x in v["versions"]}
        assert by[0]["relays_complete"] == [relay.url] and by[0]["broadcast"] == 0.5
        assert by[1]["relays_complete"] == [] and by[1]["relays_in_progress"] == [relay.url]
        state.update(complete=[0, 1], shards=14)
        assert {x["version"]: x["broadcast"] for x in get(s, "/versions")["versions"]}[1] == 0.0  # polled <5 s ago
        s.clock.advance(5.0)
        v = get(s, "/versions")
        assert {x["version"]: x["broadcast"] for x in v["versions"]}[1] == 0.5
        assert {r["url"]: r for r in v["relays"]}[relay.url]["metrics"]["shards_verified"] == 14.0
    finally:
        relay.stop()


def test_the_page_is_served_from_the_package_without_external_assets(make_coordinator):
    s = make_coordinator()
    r = s.http.get("/dashboard", follow_redirects=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for needle in ('id="workers"', 'id="versions"', 'id="curve"', 'id="rejections"', 'src="dashboard.js"'):
        assert needle in r.text
    for name, kind in (("dashboard.js", "javascript"), ("common.js", "javascript"), ("rollout.js", "javascript"),
                       ("dashboard.css", "text/css"), ("rollout.html", "text/html")):
        resp = s.http.get(f"/dashboard/{name}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"], name
    # No CDN, no remote font or script: the only absolute URL is the SVG namespace (never fetched).
    for f in STATIC.iterdir():
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", f.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (f.name, urls)


def test_dashboard_api_is_documented(make_coordinator):
    s = make_coordinator()
    paths = s.http.get("/openapi.json").json()["paths"]
    for p in ("overview", "workers", "versions", "curve", "rejections", "rollouts/{submission_id}"):
        assert paths[f"{API}/{p}"]["get"]["tags"] == ["dashboard"]
    assert "post" in paths["/v1/trainer/eval"]
    assert "/dashboard" not in paths  # the page itself is not an API


def test_answers_are_reused_for_dashboard_cache_s(make_coordinator):
    from coordinator.dashboard.routes import Recent

    t = [0.0]
    calls = []
    recent = Recent(1.0, clock=lambda: t[0])
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert [recent.get("k", compute), recent.get("k", compute)] == [1, 1]
    t[0] = 1.0
    assert recent.get("k", compute) == 2 and recent.get(("k", 2), compute) == 3
    assert Recent(0.0).get("k", compute) == 4  # 0 = always fresh
    s = make_coordinator(dashboard_cache_s=600.0)
    assert get(s, "/overview")["current_version"] is None
    assert s.publish(0).status_code == 200
    assert get(s, "/overview")["current_version"] is None  # the cached answer, however many viewers ask
    assert get(s, "/versions")["versions"][0]["version"] == 0  # another endpoint computes its own


def test_anonymous_stats_share_one_answer_and_the_operator_reads_fresh(make_coordinator, monkeypatch):
    """GET /v1/stats is open to anyone and aggregates every submission: anonymous pollers share one
    answer for up to 19x its cost (<= dashboard_cache_s); the operator's token always reads fresh."""
    from coordinator.service import upkeep

    slow = upkeep.stats
    monkeypatch.setattr(upkeep, "stats", lambda ctx: time.sleep(0.3) or slow(ctx))  # as on a big database
    s = make_coordinator(dashboard_cache_s=600.0)
    operator = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert s.http.get("/v1/stats").json()["policy"]["current_version"] is None
    assert s.publish(0).status_code == 200
    assert s.http.get("/v1/stats").json()["policy"]["current_version"] is None  # the shared answer
    assert s.http.get("/v1/stats", headers=operator).json()["policy"]["current_version"] == 0
    deadline = time.monotonic() + 30  # reused no longer than 19x its cost (~6 s here), not 600 s
    while s.http.get("/v1/stats").json()["policy"]["current_version"] != 0:
        assert time.monotonic() < deadline, "the shared answer outlived 19x its cost"
        time.sleep(1.0)
    fresh = make_coordinator(dashboard_cache_s=0.0)
    assert fresh.publish(0).status_code == 200
    assert fresh.http.get("/v1/stats").json()["policy"]["current_version"] == 0


def test_a_cheap_answer_is_reused_only_for_its_share_of_the_time():
    from coordinator.dashboard.routes import Recent

    t = [0.0]

    def compute(cost):
        t[0] += cost
        return t[0]

    recent = Recent(10.0, clock=lambda: t[0], busy_share=0.05)
    first = recent.get("k", lambda: compute(0.1))  # cost 0.1 s: reused for 1.9 s
    t[0] += 1.8
    assert recent.get("k", lambda: compute(0.1)) == first
    t[0] += 0.2
    assert recent.get("k", lambda: compute(1.0)) != first  # cost 1 s: reused for 10 s (ttl), not 19
    again = recent.get("k", lambda: compute(0))
    t[0] += 9.9
    assert recent.get("k", lambda: compute(0)) == again
    t[0] += 0.2
    assert recent.get("k", lambda: compute(0)) != again


def test_a_rollout_whose_payload_left_the_database_is_read_from_the_archive(make_coordinator):
    from coordinator.archive import Archiver

    s = make_coordinator()
    honest, cheater, ids, bad, queued = scripted_run(s)
    before = get(s, f"/rollouts/{bad[0]}")
    assert before["submission_source"] == "database"
    Archiver(s.ctx.db, s.cfg.data_dir / "archive").flush()
    with s.ctx.db.write() as conn:  # what payload retention does to old, archived submissions
        conn.exec_driver_sql("DELETE FROM submission_payloads WHERE submission_id IN (?, ?)", (bad[0], ids[0]))
    after = get(s, f"/rollouts/{bad[0]}")
    assert after["submission_source"] == "archive"
    assert {k: v for k, v in after.items() if k != "submission_source"} == \
        {k: v for k, v in before.items() if k not in ("submission_source", "archived")} | {"archived": True}
    late = s.submit(honest, s.lease(honest, 1)[0]).json()["submission_id"]  # after the archive sweep
    with s.ctx.db.write() as conn:
        conn.exec_driver_sql("DELETE FROM submission_payloads WHERE submission_id = ?", (late,))
    gone = get(s, f"/rollouts/{late}")  # in neither place: only what the row says
    assert gone["submission_source"] == "gone" and gone["completions"] == []
    assert gone["worker_id"] == honest.peer_id and gone["policy_version"] == 1
