"""Red-team findings against the coordinator over real HTTP: each test failed before its fix."""

from coordinator.service import upkeep
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_HEARTBEAT, KIND_LEASE_REQUEST, KIND_REGISTRATION, HardwareReport, Heartbeat, LeaseRequest, Registration,
)


def _register(s, key, headers=None):
    env = s.seal(KIND_REGISTRATION, Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1)), key)
    return s.http.post("/v1/workers/register", content=env.model_dump_json(),
                       headers={"content-type": "application/json", **(headers or {})})


def _go_silent(s):
    j = s.cfg.join
    s.clock.advance(j.heartbeat_interval_s * (j.missed_heartbeats_gone + 1))
    upkeep.sweep(s.ctx)


def test_identities_per_address_counts_an_ipv6_slash64_as_one_address(make_swarm):
    """The gate and the guard key an IPv6 client by its /64 (one customer's allocation); the
    identities-per-address cap counted each of its 2^64 addresses apart, so one home line
    registered as many identities as it liked."""
    s = make_swarm(limits={"exempt_addresses": [], "trusted_proxies": ["127.0.0.1"]},
                   join={"identities_per_address": 1})
    first = _register(s, KeyPair.generate(), {"x-forwarded-for": "2001:db8:1:2::1"})
    assert first.status_code == 200, first.text
    r = _register(s, KeyPair.generate(), {"x-forwarded-for": "2001:db8:1:2::2"})
    assert r.status_code == 429 and r.json()["reason"] == "address_limit", r.text
    # another /64 is another address
    assert _register(s, KeyPair.generate(), {"x-forwarded-for": "2001:db8:1:3::1"}).status_code == 200
    # an IPv4-mapped IPv6 peer is its IPv4 address
    assert _register(s, KeyPair.generate(), {"x-forwarded-for": "198.51.100.7"}).status_code == 200
    r = _register(s, KeyPair.generate(), {"x-forwarded-for": "::ffff:198.51.100.7"})
    assert r.status_code == 429, r.text


def test_a_gone_identity_cannot_come_back_past_the_address_cap(make_swarm):
    """An identity that went silent frees its address's place; before, a heartbeat or a lease
    request made it active again without asking the cap, so an address collected any number of
    active identities by registering one per silence period and waking them all."""
    s = make_swarm(limits={"exempt_addresses": []}, join={"identities_per_address": 1})
    a, b = KeyPair.generate(), KeyPair.generate()
    assert _register(s, a).status_code == 200
    _go_silent(s)
    assert _register(s, b).status_code == 200          # a's place went to b
    before = s.snapshot_worker(a)
    hb = s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), a)
    assert hb.status_code == 429 and hb.json()["reason"] == "address_limit", hb.text
    lease = s.post("/v1/leases", KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), a)
    assert lease.status_code == 429 and lease.json()["reason"] == "address_limit", lease.text
    assert s.snapshot_worker(a)["status"] == "gone" and s.snapshot_worker(a) == before
    # once b is silent too, a may come back
    _go_silent(s)
    assert s.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), a).status_code == 200
    assert s.snapshot_worker(a)["status"] == "active"


def test_a_banned_worker_that_registers_again_learns_no_numbers_of_its_ban(swarm):
    """The ban reason quotes the verifier's numbers (how far the cheat was from each threshold):
    every other answer to a worker gives `public_reason`; registering again gave it whole."""
    swarm.publish(0)
    cheat = swarm.new_worker()
    lease = swarm.lease(cheat, 1)[0]
    sid = swarm.submit(cheat, lease).json()["submission_id"]
    swarm.claim()
    assert swarm.verdict(sid, False, reason="proof check failed: 120/128 exponent mismatches").status_code == 200
    assert swarm.snapshot_worker(cheat)["status"] == "banned"
    before = swarm.snapshot()
    r = _register(swarm, cheat)
    assert r.status_code == 403 and r.json()["reason"] == "banned", r.text
    assert "proof check failed" in r.json()["detail"] and "120" not in r.json()["detail"], r.text
    assert swarm.snapshot() == before


def _large_manifest_dir(tmp_path, model_dir, files: int = 300):
    import shutil

    d = tmp_path / "big-checkpoint"
    shutil.copytree(model_dir, d)
    for i in range(files):
        (d / "extra" / f"{i:04d}.bin").parent.mkdir(exist_ok=True)
        (d / "extra" / f"{i:04d}.bin").write_bytes(i.to_bytes(4, "big"))
    return d


def test_a_forged_large_policy_manifest_is_refused_before_the_server_process_parses_it(swarm, tmp_path,
                                                                                     monkeypatch):
    """POST /v1/policy is open to anyone (only the operator's signature makes a manifest count). A
    forged manifest of up to limits.max_body_bytes (4 MB of small JSON keys) was parsed on a thread
    and canonicalised and checked on the event loop: ~1.4 s of the coordinator's one loop (and its
    GIL) per unsigned request, every 2 s from one address within its byte budget. Like every other
    large body, it is now checked in an `OffLoop` process first: the server process never parses a
    forged one."""
    import coordinator.api
    import coordinator.service.training
    from protocol.manifest import build_manifest, sign_manifest

    calls = []
    for module, name in ((coordinator.api, "parse_envelope"), (coordinator.service.training, "open_manifest")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    m = build_manifest(_large_manifest_dir(tmp_path, swarm.model_dir), run_id=swarm.cfg.run_id, version=0, step=0,
                       created_at=swarm.clock())
    good = sign_manifest(m, swarm.operator)
    assert len(good.model_dump_json()) > 32 * 1024
    before = swarm.snapshot()
    for forged in (sign_manifest(m, KeyPair.generate()),                                  # another key
                   good.model_copy(update={"body": {**good.body, "version": 7}})):        # tampered
        r = swarm.send("/v1/policy", forged)
        assert r.status_code == 401 and r.json()["reason"] == "bad_signature", r.text
    assert calls == [] and swarm.snapshot() == before
    # the operator's large manifest is taken as before
    r = swarm.send("/v1/policy", good)
    assert r.status_code == 200 and r.json()["version"] == 0, r.text
    assert calls == ["parse_envelope", "open_manifest"]


def _raw_exchange(swarm, chunks: list[bytes]) -> bytes:
    import socket
    import time

    host, port = swarm.server.url.split("//")[1].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as c:
        try:
            for chunk in chunks:
                c.sendall(chunk)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while d := c.recv(65536):
                data += d
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def test_a_request_s_headers_are_bounded_in_bytes(swarm):
    """Headers cost the server memory before any limit saw them: one connection sent 16 MB of one
    header value and got 200 (32 connections per address held ~500 MB, 4,096 in all). Now the
    line and headers may take `ServerLimits.max_header_bytes`: 431 and the connection closed."""
    pad = [b"x" * 65536] * 32   # 2 MB of one header value, in reads
    answer = _raw_exchange(swarm, [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ", *pad, b"\r\nConnection: close\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    # many small headers add up the same way
    many = [b"".join(b"X-H%d: %s\r\n" % (i * 1000 + j, b"y" * 50) for j in range(1000)) for i in range(4)]
    answer = _raw_exchange(swarm, [b"GET /health HTTP/1.1\r\nHost: x\r\n", *many, b"Connection: close\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    # an ordinary request, and a large body behind ordinary headers, are unaffected
    assert _raw_exchange(swarm, [b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]).startswith(
        b"HTTP/1.1 200 ")
    body = b'{"x": "' + b"z" * 300_000 + b'"}'
    answer = _raw_exchange(swarm, [b"POST /v1/verdicts/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body), body])
    assert answer.startswith(b"HTTP/1.1 4") and b" 431 " not in answer[:20], answer[:200]


def test_slow_bodies_do_not_hold_the_swarm_s_places(make_swarm):
    """A swarm request took its place at the gate before its body was read and held it while the
    body dripped in (up to limits.body_timeout_s, 30 s): one address with as many connections as
    there are places (32 of each by default) held every place, and every other worker's request
    was answered 429 busy. A body that is not in within `api.BODY_IN_PLACE_S` now gives its place
    back until it is, and then waits for one in turn."""
    import socket
    import time

    from protocol.messages import KIND_HEARTBEAT

    s = make_swarm(limits={"trusted_proxies": ["127.0.0.1"], "swarm_in_flight": 4, "swarm_wait_s": 3.0})
    w = s.new_worker()
    host, port = s.server.url.split("//")[1].rstrip("/").rsplit(":", 1)
    env = s.seal(KIND_HEARTBEAT, Heartbeat(), w).model_dump_json().encode()
    head = (b"POST /v1/workers/heartbeat HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(env))
    socks = []
    try:
        for _ in range(4):   # one address, a connection per place, each body's first byte and no more
            c = socket.create_connection((host, int(port)))
            c.sendall(head + env[:1])
            socks.append(c)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = s.http.get("/v1/run", headers={"x-forwarded-for": "203.0.113.9"})
        assert r.status_code == 200 and time.monotonic() - t0 < 2.0, r.text
        # a slow body is still taken once it is in
        socks[0].sendall(env[1:])
        answer = socks[0].recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    finally:
        for c in socks:
            c.close()


def test_identities_registered_before_the_address_key_count_against_their_slash64(tmp_path, tiny_model):
    """Rows written before the cap counted by `protocol.guard.address_key` keep the client's whole
    IPv6 address (and an IPv4-mapped one its IPv6 form); the cap compares stored addresses with the
    key, so those identities did not count until they registered again: a line with identities from
    before the upgrade got as many new ones on top. A coordinator now re-keys stored addresses when
    it starts (with its exempt addresses, which keep their form)."""
    from coord_harness import start_swarm
    from sqlalchemy import delete

    from coordinator.store import meta, workers
    from coordinator.store.schema import meta as meta_table

    limits = {"exempt_addresses": ["2001:db8:ff::1"], "trusted_proxies": ["127.0.0.1"]}
    s = start_swarm(tmp_path, tiny_model, limits=limits, join={"identities_per_address": 1})
    old6, old4, exempt = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    try:
        for key, addr in ((old6, "2001:db8:1:2::1"), (old4, "198.51.100.7"), (exempt, "2001:db8:ff::1")):
            assert _register(s, key, {"x-forwarded-for": addr}).status_code == 200
        with s.ctx.db.write() as conn:   # as the coordinator before the address key stored them
            workers.update_fields(conn, old6.peer_id, address="2001:db8:1:2::1")
            workers.update_fields(conn, old4.peer_id, address="::ffff:198.51.100.7")
            # ... which kept no record of the exempt addresses its rows were keyed with
            conn.execute(delete(meta_table).where(meta_table.c.key == meta.ADDRESS_KEYS_FOR))
    finally:
        s.close()
    s = start_swarm(tmp_path, tiny_model, limits=limits, join={"identities_per_address": 1})   # the upgrade
    try:
        for addr in ("2001:db8:1:2::2", "198.51.100.7"):
            r = _register(s, KeyPair.generate(), {"x-forwarded-for": addr})
            assert r.status_code == 429 and r.json()["reason"] == "address_limit", (addr, r.text)
        assert s.snapshot_worker(old6)["address"] == "2001:db8:1:2::/64"
        assert s.snapshot_worker(old4)["address"] == "198.51.100.7"
        assert s.snapshot_worker(exempt)["address"] == "2001:db8:ff::1"   # exempt: as it is
        assert _register(s, KeyPair.generate(), {"x-forwarded-for": "2001:db8:ff::1"}).status_code == 200
    finally:
        s.close()


# -- the intake: cheap refusals before the scorer sandbox ------------------------------------------
def _count_scoring(s, monkeypatch, meet=None) -> list:
    """Count the submissions scored (one sandbox round trip each); `meet`: hold each scoring
    until another one has started too (at most 2 s)."""
    import threading

    calls: list = []
    real = s.ctx.tasks.rewards
    arrived = threading.Condition()

    def rewards(task, completions):
        calls.append(task.id)
        if meet:
            with arrived:
                arrived.notify_all()
                arrived.wait_for(lambda: len(calls) >= 2, timeout=2.0)
        return real(task, completions)

    monkeypatch.setattr(s.ctx.tasks, "rewards", rewards)
    return calls


def _signed_with_nonce(s, kind, body, key, nonce: str):
    from protocol.envelope import envelope_signing_bytes

    env = s.seal(kind, body, key)
    data = envelope_signing_bytes(kind, env.body, env.signer, env.timestamp, nonce, run_id=env.run_id,
                                  audience=env.audience)
    return env.model_copy(update={"nonce": nonce, "signature": key.sign(data)})


def test_a_submission_sent_twice_at_once_is_scored_once(make_swarm, monkeypatch):
    """The replay check (the nonce) and the lease's 'already submitted' ran in the write
    transaction after scoring, and the read-only checks before scoring saw the lease still
    active while the first copy was being scored: every copy sent at once (the same envelope, or
    a resend under a new nonce) cost a scorer sandbox round trip, up to its time limits on
    hostile text, for one lease. A submission whose lease is being taken in by this process is
    now answered 429 (retry: the answer is then the first copy's outcome) before any scoring."""
    import threading

    import httpx

    from protocol.messages import KIND_SUBMISSION

    s = make_swarm(limits={"intake_threads": 4})
    s.publish(0)
    w = s.new_worker()
    s.establish(w)   # two threads for its submissions (new identities get one)
    (lease,) = s.lease(w, 1)
    calls = _count_scoring(s, monkeypatch, meet=True)
    env = s.seal(KIND_SUBMISSION, s.submission(lease), w).model_dump_json()
    out: list = []

    def send():
        with httpx.Client(base_url=s.server.url, timeout=30) as c:
            out.append(c.post("/v1/submissions", content=env, headers={"content-type": "application/json"}))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1, calls
    assert sorted(r.status_code for r in out) == [200, 429], [r.text for r in out]
    refused = next(r for r in out if r.status_code == 429)
    assert refused.json()["reason"] == "submission_in_progress" and refused.headers["retry-after"] == "1"
    # sent again later, the copy is told what became of the first, without being scored
    r = s.send("/v1/submissions", env)
    assert r.status_code == 409 and r.json()["reason"] == "duplicate_submission", r.text
    assert len(calls) == 1


def test_a_duplicate_of_stored_completions_is_refused_before_it_is_scored(swarm, monkeypatch):
    """The content duplicate check ran in the write transaction, after scoring, and its refusal
    left the lease active: the same envelope sent again and again was scored every time."""
    from coordinator.store import leases as lq
    from protocol.messages import KIND_LEASE_RELEASE, KIND_SUBMISSION, LeaseRelease

    s = swarm
    s.publish(0)
    a, b = s.new_worker(), s.new_worker()
    (first,) = s.lease(a, 1)
    (other,) = s.lease(b, 1)
    assert s.submit(a, first).status_code == 200
    s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[other.lease_id]), b)
    with s.ctx.db.write() as conn:  # the task a answered comes round again (the split wraps around)
        lq.return_tasks(conn, [lq.get(conn, first.lease_id)], s.clock())
    again = s.lease(b, 1)[0]
    assert again.task_id == first.task_id
    calls = _count_scoring(s, monkeypatch)
    env = s.seal(KIND_SUBMISSION, s.submission(again, completions=s.completions(first)), b)
    r = s.send("/v1/submissions", env)   # refused, and its lease closed (test_coordinator_duplicate_lease)
    assert r.status_code == 409 and r.json()["reason"] == "duplicate_completion", r.text
    before = s.snapshot()
    for _ in range(3):
        r = s.send("/v1/submissions", env)
        assert r.status_code == 409 and r.json()["reason"] == "duplicate_completion", r.text
    assert calls == [] and s.snapshot() == before


def test_a_replayed_nonce_is_refused_before_the_submission_is_scored(swarm, monkeypatch):
    """A nonce is one message's: a submission under a nonce its signer already used (here by a
    heartbeat) is a replay, refused in the write transaction, but only after it was scored."""
    from protocol.messages import KIND_HEARTBEAT, KIND_SUBMISSION

    s = swarm
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w, 1)
    nonce = "ab" * 16
    hb = _signed_with_nonce(s, KIND_HEARTBEAT, Heartbeat(), w, nonce)
    assert s.send("/v1/workers/heartbeat", hb).status_code == 200
    calls = _count_scoring(s, monkeypatch)
    before = s.snapshot()
    r = s.send("/v1/submissions", _signed_with_nonce(s, KIND_SUBMISSION, s.submission(lease), w, nonce))
    assert r.status_code == 409 and r.json()["reason"] == "replay", r.text
    assert calls == [] and s.snapshot() == before


# -- what workers and anonymous readers learn ---------------------------------------------------
def _worker_visible_rates(s, key) -> dict:
    """Every check rate of `key` a worker or an anonymous reader can read (no operator token)."""
    out = {"worker": s.worker_info(key, operator=False).get("check_rate"),
           "stats": next(w for w in s.stats()["workers"] if w["worker_id"] == key.peer_id).get("check_rate"),
           "dashboard": next(w for w in s.http.get("/v1/dashboard/workers").json()
                             if w["worker_id"] == key.peer_id).get("check_rate")}
    hb = s.heartbeat(key)
    assert hb.status_code == 200, hb.text
    out["heartbeat"] = hb.json().get("check_rate")
    reg = _register(s, key)
    assert reg.status_code == 200, reg.text
    out["registration"] = reg.json()["check_rate"]
    return out


def test_a_worker_cannot_tell_from_its_check_rate_which_submission_was_fully_checked(make_swarm):
    """The check rate halves at every `halve_every`-th clean full check, and it was public (GET
    /v1/workers/{id}, /v1/stats, /v1/dashboard/workers) and in the answers to a worker's
    heartbeats and registrations: a worker that read it after each verdict learned which of its
    submissions had been fully checked, and when its rate reached the floor (when cheating
    pays). Only the operator's views carry it now; workers and anonymous readers get null, or
    no field."""
    from coord_harness import OPERATOR_TOKEN

    s = make_swarm(check_rate={"initial": 1.0, "floor": 0.25, "halve_every": 1})
    s.publish(0)
    w = s.new_worker()
    before = _worker_visible_rates(s, w)
    (lease,) = s.lease(w, 1)
    sid = s.submit(w, lease).json()["submission_id"]
    assert s.verdict(sid, True, full_check=True).status_code == 200   # one clean full check: 0.5
    after = _worker_visible_rates(s, w)
    assert after == before, (before, after)
    assert set(after.values()) == {None}, after
    # the operator still sees it
    op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert s.worker_info(w)["check_rate"] == 0.5
    assert [x["check_rate"] for x in s.http.get("/v1/stats", headers=op).json()["workers"]] == [0.5]
    assert [x["check_rate"] for x in s.http.get("/v1/dashboard/workers", headers=op).json()] == [0.5]


def test_the_public_rollout_view_does_not_say_whether_a_group_waits_for_a_full_check(make_swarm):
    """A group accepted without a full check is held until its worker's next clean full check;
    one accepted by a full check is ready at once. The public rollout view carried the group's
    `buffer` state, so a worker read 'held' or 'ready' off each of its accepted submissions:
    which ones were fully checked (and, watching its held groups turn ready, which later one
    was)."""
    from coord_harness import OPERATOR_TOKEN

    s = make_swarm(check_rate={"initial": 0.0, "floor": 0.0, "halve_every": 1})
    s.publish(0)
    w = s.new_worker()
    cheap, full = (s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 2))
    assert s.verdict(cheap, True, full_check=False).status_code == 200
    views = [s.http.get(f"/v1/dashboard/rollouts/{cheap}").json()]
    assert s.verdict(full, True, full_check=True).status_code == 200
    views += [s.http.get(f"/v1/dashboard/rollouts/{i}").json() for i in (cheap, full)]
    for v in views:
        assert v["status"] == "accepted" and "buffer" not in v and "full_check" not in v, v
    op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert s.http.get(f"/v1/dashboard/rollouts/{cheap}", headers=op).json()["buffer"] == "ready"


def test_the_public_buffer_depth_moves_alike_for_a_fully_checked_group_and_a_held_one(make_swarm):
    """The public buffer depth (/metrics, /v1/stats, the dashboard's overview) counted ready
    groups only: a group accepted by a full check is ready at once, one accepted on the cheap
    checks is held, so a worker reading the depth right before and after its own verdict learned
    whether that submission was fully checked. Now held and ready count together publicly, and
    `buffer.by_state` is the operator's."""
    from coord_harness import OPERATOR_TOKEN

    s = make_swarm(check_rate={"initial": 0.0, "floor": 0.0, "halve_every": 1})
    s.publish(0)
    w = s.new_worker()
    cheap, full = (s.submit(w, lease).json()["submission_id"] for lease in s.lease(w, 2))

    def public() -> tuple:
        return (s.metric("swarmrl_coordinator_buffer_depth"), s.http.get("/v1/stats").json()["buffer"].get("depth"),
                s.http.get("/v1/dashboard/overview").json()["buffer"]["depth"])

    seen = [public()]
    assert s.verdict(cheap, True, full_check=False).status_code == 200      # held
    seen.append(public())
    assert s.verdict(full, True, full_check=True).status_code == 200        # ready (and releases the held one)
    seen.append(public())
    assert seen == [(0, 0, 0), (1, 1, 1), (2, 2, 2)], seen
    assert "by_state" not in s.http.get("/v1/stats").json()["buffer"]
    op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert s.http.get("/v1/stats", headers=op).json()["buffer"]["by_state"].get("ready") == 2


def test_anonymous_readers_see_no_path_on_the_coordinator_s_machine(make_swarm):
    """The anonymous dashboard showed where the coordinator keeps its archive (GET
    /v1/dashboard/overview `archive.path`, and in the audit commands of /rejections and
    /rollouts/{id}): the layout of the operator's machine (a user name, a mount) is not the
    public's. The operator's views keep it."""
    import json

    from coord_harness import OPERATOR_TOKEN

    s = make_swarm()
    s.publish(0)
    w = s.new_worker()
    (lease,) = s.lease(w, 1)
    sid = s.submit(w, lease).json()["submission_id"]
    assert s.verdict(sid, False, reason="proof: 3/128 exponents differ").status_code == 200
    root = str(s.cfg.data_dir.resolve())
    paths = ["/v1/dashboard/overview", "/v1/dashboard/rejections", f"/v1/dashboard/rollouts/{sid}", "/v1/stats",
             "/v1/dashboard/versions", "/v1/dashboard/workers", f"/v1/workers/{w.peer_id}", "/v1/run"]
    anonymous = {p: s.http.get(p).json() for p in paths}
    leaked = [p for p, v in anonymous.items() if root in json.dumps(v) or str(s.cfg.data_dir) in json.dumps(v)]
    assert leaked == [], leaked
    view = anonymous[f"/v1/dashboard/rollouts/{sid}"]
    assert view["audit_commands"] == [f"swarmrl audit show {sid} --archive <archive>",
                                      f"swarmrl audit reverify {sid} --archive <archive>"]
    assert anonymous["/v1/dashboard/rejections"][0]["audit_command"] == f"swarmrl audit show {sid} --archive <archive>"
    op = {"authorization": f"Bearer {OPERATOR_TOKEN}"}
    assert s.http.get("/v1/dashboard/overview", headers=op).json()["archive"]["path"].startswith(root)


def test_a_large_submission_from_a_key_that_is_no_worker_is_refused_before_the_server_process_parses_it(
        make_swarm, monkeypatch):
    """A large body is verified in an `OffLoop` process first, so a forged one never costs the
    server process a parse; but one correctly signed by any key (keys are free) was then parsed
    again on a thread of the server process (~30 ms of its GIL per MB) before anything asked
    whether the signer is a worker at all: every fresh key's 40 KB-4 MB submission cost that, to
    be refused as `unknown_worker` afterwards (a banned worker's as `banned`). The signer's
    registration is now checked (one read) between the two parses."""
    import coordinator.api
    from coordinator.store import workers
    from protocol.messages import KIND_SUBMISSION, Completion, EngineInfo, Submission

    s = make_swarm(group_size=16, sampling={"max_tokens": 128})
    s.publish(0)
    banned, w = s.new_worker(), s.new_worker()
    with s.ctx.db.write() as conn:
        workers.ban(conn, banned.peer_id, "proof: 40/128 exponents differ", s.clock())
    parsed: list = []   # parses of a request in the server process
    real = coordinator.api.open_request
    monkeypatch.setattr(coordinator.api, "open_request", lambda *a, **kw: parsed.append(1) or real(*a, **kw))
    eos = s.ctx.tasks.eos_token_id
    big = Submission(lease_id="l-" + "0" * 24, policy_version=0, engine=EngineInfo(name="test", dtype="float32"),
                     completions=[Completion(token_ids=[7] * 127 + [eos], finish_reason="eos", proof="A" * 1800)] * 16)
    for key, status, reason in ((KeyPair.generate(), 404, "unknown_worker"), (banned, 403, "banned")):
        env = s.seal(KIND_SUBMISSION, big, key)
        assert len(env.model_dump_json()) > coordinator.api.INLINE_BYTES
        before = s.snapshot()
        r = s.send("/v1/submissions", env)
        assert (r.status_code, r.json()["reason"]) == (status, reason), r.text
        assert parsed == [] and s.snapshot() == before
    # a worker's large submission is parsed (and judged) as before
    r = s.send("/v1/submissions", s.seal(KIND_SUBMISSION, big, w))
    assert r.status_code == 404 and r.json()["reason"] == "unknown_lease", r.text
    assert parsed == [1]


def test_two_coordinator_processes_on_one_sqlite_file_keep_the_identities_per_address_cap(
        tmp_path, tiny_model, monkeypatch):
    """SQLite's side of the PostgreSQL replicas' race (tests/integration/test_coordinator_postgres.py):
    not a hole here, and kept as a guard. Two coordinators on one database file (as `workers > 1`
    server processes are) each hold the first registration between its count and its write until
    the other has counted too (or 2 s): a write transaction holds the file's write lock (BEGIN
    IMMEDIATE and the flock) from its start, so the second counts after the first wrote."""
    import threading

    from coord_harness import start_swarm

    import coordinator.store.workers as store_workers

    over = dict(limits={"exempt_addresses": [], "trusted_proxies": ["127.0.0.1"]}, join={"identities_per_address": 1})
    a = start_swarm(tmp_path, tiny_model, **over)
    b = start_swarm(tmp_path, tiny_model, rng_seed=1, **over)   # the same data folder: one SQLite file
    try:
        arrived = threading.Condition()
        count = [0]
        real = store_workers.active_ids_at_address

        def held(conn, address):
            out = real(conn, address)
            with arrived:
                count[0] += 1
                arrived.notify_all()
                arrived.wait_for(lambda: count[0] >= 2, timeout=2.0)
            return out

        monkeypatch.setattr(store_workers, "active_ids_at_address", held)
        out: list = []
        threads = [threading.Thread(target=lambda s=s: out.append(
            _register(s, KeyPair.generate(), {"x-forwarded-for": "198.51.100.30"}).status_code)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(out) == [200, 429], out
    finally:
        a.close()
        b.close()
