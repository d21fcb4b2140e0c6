"""Cheap checks first, against a real coordinator on 127.0.0.1 (protocol.guard, coordinator.admission,
coordinator.auth.OffLoop): body caps per route on the headers, per-address rate and byte budgets,
large bodies verified in another process, header and body deadlines, connection caps per address,
and X-Forwarded-For only from trusted proxies.

Clients come from several loopback addresses (127.0.0.2, 127.0.0.3, ...: all loopback on Linux),
so per-address limits see several clients; `exempt_addresses` is emptied where limits matter.
"""

import json
import os
import threading
import time
from pathlib import Path

import httpx
import coordinator.api
from coordinator.admission import OTHER_CAP, route_caps, submission_cap
from protocol.identity import KeyPair
from protocol.messages import KIND_REGISTRATION, HardwareReport, Registration
from tests.hostile.flood import BigBodies, Slowloris, connect, envelope_shaped
from tests.waiting import wait_until

LIMITED = {"exempt_addresses": []}
FOUR_MB = 4_000_000


def raw_request(port: int, head: str, source: str = "127.0.0.1", body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send `head` (request line and headers, CRLF-joined) and `body`; (status, headers, body) of the answer."""
    with connect("127.0.0.1", port, source, timeout_s=10) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, rest


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def register(s, key: KeyPair, headers: dict | None = None) -> httpx.Response:
    env = s.seal(KIND_REGISTRATION, Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1)), key)
    return s.http.post("/v1/workers/register", content=env.model_dump_json(),
                       headers={"content-type": "application/json", **(headers or {})})


def rejections(s, reason: str) -> float:
    return s.metric("swarmrl_coordinator_rejections_total", reason=reason)


def test_route_caps_follow_the_message_types_and_the_run(make_swarm):
    s = make_swarm()
    caps = route_caps(s.cfg, s.ctx.tasks.vocab_size)
    assert caps["/v1/workers/heartbeat"] < 16 * 1024 and caps["/v1/leases"] < 8 * 1024
    assert caps["/v1/submissions"] == submission_cap(4, 8, s.ctx.tasks.vocab_size) < 16 * 1024
    big = route_caps(s.cfg.model_copy(update={"group_size": 64, "sampling": s.cfg.sampling.model_copy(
        update={"max_tokens": 2048})}), 151_936)
    assert 1024 * 1024 < big["/v1/submissions"] < s.cfg.limits.max_body_bytes  # 64 x 2048 tokens and proofs
    assert big["/v1/workers/heartbeat"] == caps["/v1/workers/heartbeat"]
    # an honest submission of the largest shape fits its cap
    assert s.publish(0).status_code == 200
    lease = s.lease(s.new_worker())[0]
    sub = s.submission(lease, completions=s.completions(lease, [s.ctx.tasks.vocab_size - 1] * 7))
    assert len(s.seal("submission", sub, s.workers[0]).model_dump_json()) < caps["/v1/submissions"]


def test_a_heartbeat_over_its_route_cap_gets_413_before_its_body_is_read(make_swarm):
    s = make_swarm(limits=LIMITED)
    key = s.new_worker()
    before = s.snapshot()
    # headers only: the answer comes although not one byte of the 5 MB body was sent
    status, headers, body = raw_request(s.server.port, "POST /v1/workers/heartbeat HTTP/1.1\r\nHost: c\r\n"
                                                      "Content-Type: application/json\r\nContent-Length: 5000000")
    cap = route_caps(s.cfg, s.ctx.tasks.vocab_size)["/v1/workers/heartbeat"]
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["detail"] == (f"request body of 5000000 bytes exceeds the limit of {cap} "
                                          "for POST /v1/workers/heartbeat")
    # a GET carries no body worth reading either
    status, _, _ = raw_request(s.server.port, f"GET /v1/run HTTP/1.1\r\nHost: c\r\nContent-Length: {OTHER_CAP + 1}")
    assert status == 413
    assert s.snapshot() == before and rejections(s, "too_large") == 2
    assert s.heartbeat(key).status_code == 200  # a real heartbeat is far below the cap


def test_an_unsigned_4mb_flood_is_refused_by_the_route_cap_and_health_answers(make_swarm):
    s = make_swarm(limits=LIMITED)
    s.publish(0)
    before = s.snapshot()
    with BigBodies("127.0.0.1", s.server.port, "/v1/submissions", n=24, size=FOUR_MB,
                   sources=[f"127.0.0.{i}" for i in range(2, 26)]) as flood:
        assert s.http.get("/health", timeout=5).json()["ok"]
        assert flood.wait(60)
    assert flood.statuses() == {413: 24}
    assert rejections(s, "too_large") == 24 and s.snapshot() == before


def test_large_unsigned_bodies_are_refused_outside_the_server_process(make_swarm, monkeypatch):
    """A run whose submissions may be 4 MB: the flood passes the cap, so the per-address byte
    budget and the out-of-process precheck refuse it; the server's own process parses none of
    it, and /health answers while the admitted bodies are still being checked."""
    s = make_swarm(limits={**LIMITED, "byte_burst_per_address": 8 * 1024 * 1024}, group_size=256,
                   sampling={"max_tokens": 4096})
    assert route_caps(s.cfg, s.ctx.tasks.vocab_size)["/v1/submissions"] > FOUR_MB
    parsed = []
    real = coordinator.api.open_request
    monkeypatch.setattr(coordinator.api, "open_request", lambda *a, **k: parsed.append(1) or real(*a, **k))
    before = s.snapshot()
    health = []
    with BigBodies("127.0.0.1", s.server.port, "/v1/submissions", n=12, size=FOUR_MB,
                   sources=["127.0.0.2"]) as flood:
        with httpx.Client(base_url=s.server.url, timeout=5) as h:
            while flood.in_flight():
                health.append((h.get("/health").status_code, flood.in_flight()))
        assert flood.wait(60)
    # 8 MiB of byte budget: two bodies admitted (both forged: 401), ten refused on their headers
    assert flood.statuses() == {401: 2, 429: 10}
    assert rejections(s, "byte_budget") == 10 and rejections(s, "bad_signature") == 2
    assert parsed == [] and s.snapshot() == before
    assert any(status == 200 and waiting >= 1 for status, waiting in health), health
    # a second address has its own budget
    with BigBodies("127.0.0.1", s.server.port, "/v1/submissions", n=1, size=FOUR_MB, sources=["127.0.0.3"]) as one:
        assert one.wait(60)
    assert one.statuses() == {401: 1}


def _precheck_processes() -> set[int]:
    """This process's children that run multiprocessing's spawn (the OffLoop pool)."""
    me, found = str(os.getpid()), set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "stat").read_text().split(") ")[1].split()[1] == me and \
                    b"spawn_main" in (d / "cmdline").read_bytes():
                found.add(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def test_large_bodies_beyond_the_precheck_queue_are_told_to_retry(make_swarm):
    before = _precheck_processes()
    s = make_swarm(limits={**LIMITED, "verify_processes": 1, "verify_queue": 0}, group_size=256,
                   sampling={"max_tokens": 4096})
    with BigBodies("127.0.0.1", s.server.port, "/v1/submissions", n=3, size=FOUR_MB,
                   sources=["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as flood:
        assert flood.wait(60)
    got = flood.statuses()
    assert got[401] >= 1 and got[401] + got[429] == 3 and rejections(s, "busy") == got[429]
    started = _precheck_processes() - before
    assert len(started) == 1  # verify_processes
    s.close()  # the server's shutdown ends its precheck process
    wait_until(lambda: not (_precheck_processes() & started), 30, "the precheck process to exit")


def test_slowloris_connections_are_closed_after_the_header_and_body_deadlines(make_swarm):
    s = make_swarm(limits={**LIMITED, "header_timeout_s": 0.5, "body_timeout_s": 0.5})
    with Slowloris("127.0.0.1", s.server.port, n=3, interval_s=0.1, phase="headers", sources=["127.0.0.2"]) as lor:
        wait_until(lambda: lor.open_count() == 0, 10, "the server to close the header slowloris")
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in lor.answers)  # told why, then closed
    with Slowloris("127.0.0.1", s.server.port, n=3, interval_s=0.1, phase="body", sources=["127.0.0.3"]) as lor:
        wait_until(lambda: lor.open_count() == 0, 10, "the server to close the body slowloris")
    with Slowloris("127.0.0.1", s.server.port, n=2, interval_s=0.1, phase="idle", sources=["127.0.0.4"]) as idle:
        wait_until(lambda: idle.open_count() == 0, 10, "the server to close connections that never send")
    assert rejections(s, "header_timeout") == 5 and rejections(s, "body_timeout") == 3
    assert s.http.get("/health").status_code == 200


def test_connections_per_address_are_capped(make_swarm):
    s = make_swarm(limits={**LIMITED, "max_connections_per_address": 3})
    port = s.server.port
    held = [connect("127.0.0.1", port, "127.0.0.2") for _ in range(3)]
    try:
        for c in held:  # the three are served (keep-alive)
            c.sendall(b"GET /health HTTP/1.1\r\nHost: c\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200 ")
        status, headers, body = raw_request(port, "GET /health HTTP/1.1\r\nHost: c", source="127.0.0.2")
        assert status == 429 and "3 connections from 127.0.0.2" in json.loads(body)["detail"]
        assert raw_request(port, "GET /health HTTP/1.1\r\nHost: c", source="127.0.0.3")[0] == 200
        held.pop().close()
        wait_until(lambda: raw_request(port, "GET /health HTTP/1.1\r\nHost: c", source="127.0.0.2")[0] == 200, 10,
                   "a freed slot")
    finally:
        for c in held:
            c.close()
    assert rejections(s, "too_many_connections") >= 1


def test_x_forwarded_for_is_ignored_from_untrusted_peers(make_swarm):
    s = make_swarm(limits={**LIMITED, "requests_per_s_per_address": 1.0, "burst": 2},
                   join={"identities_per_address": 0})
    a = KeyPair.generate()
    assert register(s, a, {"x-forwarded-for": "203.0.113.7"}).status_code == 200
    assert s.snapshot_worker(a)["address"] == "127.0.0.1"
    # a new X-Forwarded-For per request does not buy a new rate-limit bucket
    codes = [s.http.get("/v1/run", headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code for i in range(3)]
    assert codes == [200, 429, 429]


def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(make_swarm):
    s = make_swarm(limits={**LIMITED, "trusted_proxies": ["127.0.0.0/8"], "requests_per_s_per_address": 1.0,
                           "burst": 2})
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    assert register(s, a, {"x-forwarded-for": "203.0.113.7"}).status_code == 200
    assert s.snapshot_worker(a)["address"] == "203.0.113.7"
    # what the client itself wrote (left of the proxy's entry) proves nothing
    assert register(s, b, {"x-forwarded-for": "127.0.0.1, 203.0.113.9"}).status_code == 200
    assert s.snapshot_worker(b)["address"] == "203.0.113.9"
    # identities per address and the rate limit count the real clients
    r = register(s, c, {"x-forwarded-for": "203.0.113.7"})
    assert r.status_code == 429 and "203.0.113.7" in r.json()["detail"]
    for ip in ("198.51.100.1", "198.51.100.2"):
        codes = [s.http.get("/v1/run", headers={"x-forwarded-for": ip}).status_code for _ in range(3)]
        assert codes == [200, 200, 429], ip


def test_the_flooder_builds_envelope_shaped_json_of_the_asked_size():
    raw = envelope_shaped(100_000)
    env = json.loads(raw)
    assert len(raw) == 100_000 and env["kind"] == "submission" and len(env["signer"]) == 64
    assert len(env["body"]["completions"][0]["token_ids"]) > 40_000
    for size in range(2_000, 2_010):  # odd and even room (the timestamp's length varies too)
        assert len(envelope_shaped(size)) == size and json.loads(envelope_shaped(size))["body"]



def test_honest_large_bodies_pass_the_out_of_process_check_and_are_applied(make_swarm, monkeypatch):
    """Bodies over INLINE_BYTES take the precheck path: a real 16 x 400-token submission and a
    verdict batch with long reasons are accepted exactly as small ones are; in a batch, the
    forged envelope is refused on its own and a batch with nothing valid is answered from the
    precheck alone."""
    from coordinator.auth import INLINE_BYTES
    from protocol.messages import KIND_VERDICT, VerdictBatchResponse

    s = make_swarm(group_size=16, sampling={"max_tokens": 512})
    assert s.publish(0).status_code == 200
    w = s.new_worker()
    leases = s.lease(w, 3)
    subs = [s.submission(lease, completions=s.completions(lease, [5 + i % 7 for i in range(399)]))
            for lease in leases]
    assert all(len(s.seal("submission", sub, w).model_dump_json()) > INLINE_BYTES for sub in subs)
    parsed = []
    real = coordinator.api.open_request
    monkeypatch.setattr(coordinator.api, "open_request", lambda *a, **k: parsed.append(1) or real(*a, **k))
    sids = []
    for sub in subs:
        r = s.post("/v1/submissions", "submission", sub, w)
        assert r.status_code == 200, r.text
        sids.append(r.json()["submission_id"])
    assert len(parsed) == 3  # parsed in the server process once each, after the precheck passed
    assert s.snapshot_submission(sids[0])["n_tokens"] == 16 * 400
    assert len(s.claim()) == 3
    long = "x" * 1900
    envs = [s.seal(KIND_VERDICT, s.verdict_body(sid, True, reason=long), s.verifier) for sid in sids[:2]]
    forged = s.seal(KIND_VERDICT, s.verdict_body(sids[2], True, reason=long), w)
    body = json.dumps({"envelopes": [e.model_dump(mode="json") for e in envs * 8 + [forged]]})
    assert len(body) > INLINE_BYTES
    r = s.http.post("/v1/verdicts/batch", content=body, headers={"content-type": "application/json"})
    results = VerdictBatchResponse.model_validate_json(r.content).results
    assert [o.status for o in results[:2]] == [200, 200] and results[-1].status == 403
    assert [s.http.get(f"/v1/submissions/{sid}").json()["status"] for sid in sids] == ["accepted", "accepted", "queued"]
    batches = []
    real_batch = coordinator.api.parse_body
    monkeypatch.setattr(coordinator.api, "parse_body", lambda *a, **k: batches.append(1) or real_batch(*a, **k))
    before = s.snapshot()
    body = json.dumps({"envelopes": [forged.model_dump(mode="json")] * 20})
    r = s.http.post("/v1/verdicts/batch", content=body, headers={"content-type": "application/json"})
    assert [o.status for o in VerdictBatchResponse.model_validate_json(r.content).results] == [403] * 20
    assert batches == [] and s.snapshot() == before  # never parsed in the server's process


def _blocked_scorer(s):
    """Make the coordinator's scorer wait until the test sets `release`; `scoring` is set once a
    submission is being scored. Returns (scoring, release, the original scorer)."""
    scoring, release = threading.Event(), threading.Event()
    score = s.ctx.tasks.rewards

    def slow_rewards(task, completions):
        scoring.set()
        assert release.wait(30)
        return score(task, completions)

    s.ctx.tasks.rewards = slow_rewards
    return scoring, release, score


def test_a_submission_being_scored_does_not_hold_up_health_or_other_requests(make_swarm):
    """Issue 18: scoring waits for the scorer sandbox (up to its time limit on hostile text); on
    the event loop it held up /health and every other request. Here the scorer blocks until the
    test lets it go: meanwhile /health, a heartbeat and another worker's lease are answered."""
    s = make_swarm()
    s.publish(0)
    w, other = s.new_worker(), s.new_worker()
    (lease,) = s.lease(w, 1)
    scoring, release, score = _blocked_scorer(s)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", s.submit(w, lease)))
    t.start()
    try:
        assert scoring.wait(30)
        with httpx.Client(base_url=s.server.url, timeout=5) as quick:  # the loop answers meanwhile
            assert quick.get("/health").status_code == 200
        assert s.heartbeat(other).status_code == 200
        assert len(s.lease(other, 1)) == 1
    finally:
        release.set()
        t.join(30)
    assert out["r"].status_code == 200, out["r"].text


def test_submissions_beyond_the_intake_bound_are_answered_busy_and_change_nothing(make_swarm):
    """One intake thread and no queue: while a submission is scored, the next is a 429 `busy`
    with Retry-After, its lease stays active, and it is taken once the first is done."""
    s = make_swarm(limits={"intake_threads": 1, "intake_queue": 0})
    s.publish(0)
    w = s.new_worker()
    first, second = s.lease(w, 2)
    scoring, release, score = _blocked_scorer(s)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", s.submit(w, first)))
    t.start()
    try:
        assert scoring.wait(30)
        busy = s.submit(w, second)
        assert busy.status_code == 429 and busy.json()["reason"] == "busy", busy.text
        assert "retry-after" in busy.headers
    finally:
        release.set()
        t.join(30)
    assert out["r"].status_code == 200, out["r"].text
    s.ctx.tasks.rewards = score
    assert s.submit(w, second).status_code == 200


def _hostile_scorer(s, hostile: set[str]):
    """The attackers' texts (the tasks in `hostile`) keep the scorer busy until the test sets
    `release`, as a text that takes the scorer's whole time limit; `started` lists them as they
    start. Returns (release, started)."""
    score, release, started = s.ctx.tasks.rewards, threading.Event(), []

    def rewards(task, completions):
        if task.id in hostile:
            started.append(task.id)
            assert release.wait(30)
        return score(task, completions)

    s.ctx.tasks.rewards = rewards
    return release, started


def test_new_identities_slow_submissions_do_not_hold_up_an_established_workers(make_swarm):
    """The payload and spam attackers of bench/hostile.py send, from fresh identities, texts that
    keep the scorer busy for its whole time limit. With two intake threads (the default), two
    such submissions held both threads and an honest worker's submission waited for them; now
    new identities hold at most one thread and the established worker's is scored at once."""
    s = make_swarm(limits={"intake_threads": 2})
    s.publish(0)
    honest, evil1, evil2 = s.new_worker(), s.new_worker(), s.new_worker()
    s.establish(honest)              # verified work accepted before (the lane's threshold)
    (h,), (e1,), (e2,) = s.lease(honest, 1), s.lease(evil1, 1), s.lease(evil2, 1)
    hostile = {e1.task_id, e2.task_id} - {h.task_id}
    assert len(hostile) == 2
    release, started = _hostile_scorer(s, hostile)
    out = {}
    threads = [threading.Thread(target=lambda k=k, lease=lease: out.setdefault(k, s.submit(k, lease)))
               for k, lease in ((evil1, e1), (evil2, e2))]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while not started and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(started) == 1          # the second new identity waits: one thread stays free
        r = s.submit(honest, h)
        assert r.status_code == 200, r.text
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert [out[k].status_code for k in (evil1, evil2)] == [200, 200]
    # the latency metric by lane: the established worker's answer came while both new ones waited
    sample = s.ctx.metrics.registry.get_sample_value
    count = {lane: sample("swarmrl_coordinator_submission_seconds_count", {"lane": lane}) for lane in ("established", "new")}
    total = {lane: sample("swarmrl_coordinator_submission_seconds_sum", {"lane": lane}) for lane in ("established", "new")}
    assert count == {"established": 1, "new": 2}
    assert total["new"] > 2 * total["established"]


def test_new_identities_cannot_fill_the_intake_and_shut_out_an_established_worker(make_swarm):
    """Admission by lane: fresh identities whose first leases' texts keep the scorer busy take
    at most half of the intake's places (threads + queue); beyond that they are answered 429
    `busy`, and an established worker's submission is still admitted and scored at once. On the
    old code the four new submissions took all four places and the honest one got the 429."""
    s = make_swarm(limits={"intake_threads": 2, "intake_queue": 2})
    s.publish(0)
    honest, evil1, evil2 = s.new_worker(), s.new_worker(), s.new_worker()
    s.establish(honest)
    (h,) = s.lease(honest, 1)
    evil = [(k, lease) for k in (evil1, evil2) for lease in s.lease(k, 2)]
    hostile = {lease.task_id for _, lease in evil} - {h.task_id}
    assert len(hostile) == 4
    release, started = _hostile_scorer(s, hostile)
    out: dict = {}
    threads = [threading.Thread(target=lambda i=i, k=k, lease=lease: out.setdefault(i, s.submit(k, lease)))
               for i, (k, lease) in enumerate(evil)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: sum(1 for r in out.values() if r.status_code == 429) == 2 and started, 30)
        assert sorted(r.json()["reason"] for r in out.values()) == ["busy", "busy"]
        r = s.submit(honest, h)
        assert r.status_code == 200, r.text
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert sorted(r.status_code for r in out.values()) == [200, 200, 429, 429]
