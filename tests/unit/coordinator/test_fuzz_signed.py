"""Seeded mutation fuzzing of valid, re-signed bodies on every signed coordinator route.

`tests/hostile/mutate.Mutator` turns a valid body of each route into variants of one to three
mutations (wrong types, boundary integers, NaN/Infinity, hostile text, huge lists, 10^4-deep
nesting, deleted/added/renamed/duplicated keys, truncated or flipped proof bytes); each is
signed again by a key the route accepts, over the body the server will parse, so it reaches
the logic behind the signature (a variant with no canonical form, NaN or a lone surrogate, is
sent with a signature over the original). Some are signed with timestamps far off the clock.
What must hold: every answer is below 500 and a 4xx is one clear line, a 4xx changes no row of
the database, and afterwards the service still answers /health and every read of what it took
in (stats, dashboard, claims, batches). Seeds are fixed; `-m slow` runs 500 a route with
another seed (seeds 2-5 at 500-1000 a route were run by hand: the 500s they found have their
own tests below).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from protocol import routes
from protocol.envelope import AUDIENCE_COORDINATOR, AUDIENCE_SWARM, envelope_signing_bytes
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_RESUME,
    KIND_EVAL_REPORT,
    KIND_HEARTBEAT,
    KIND_LEASE_RELEASE,
    KIND_LEASE_REQUEST,
    KIND_POLICY_MANIFEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    KIND_VERDICT,
    Lease,
    LeaseRequest,
)
from tests.hostile.mutate import Case, Mutator, signable, splice_body

CASES = 100          # per route in the default run
SLOW_CASES = 500
DEBUG: set = set()   # statuses whose cases a hand run prints (see `fuzz`)
SKEWS = [-1e9, 1e9, -121.0, 121.0, 1e308, -1e308]


@dataclass
class Route:
    path: str
    kind: str
    audience: str
    fresh: Callable[[], tuple[dict, KeyPair]]   # a valid body and its signer, as the state is now
    batch: bool = False                         # sent inside a VerdictBatch


def _signed(s, kind: str, audience: str, case: Case, original: dict, key: KeyPair, dt: float, nonce: str
            ) -> bytes:
    """The envelope of `case.text`, signed over what the server parses (or over `original` when
    that has no canonical form: a signature that cannot match)."""
    ts = s.clock() + dt
    run_id = s.cfg.run_id
    signed_body = case.parsed if signable(case) else original
    sig = key.sign(envelope_signing_bytes(kind, signed_body, key.public.hex, ts, nonce, run_id=run_id,
                                          audience=audience))
    env = json.dumps({"kind": kind, "run_id": run_id, "audience": audience, "body": None,
                      "signer": key.public.hex, "timestamp": ts, "nonce": nonce, "signature": sig})
    # a lone surrogate cannot be UTF-8: it travels as the JSON escape a client would write
    return splice_body(env, case.text).encode("utf-8", "backslashreplace")


class Bodies:
    """Valid bodies of every signed route, made again from the current state after one was taken."""

    def __init__(self, s):
        self.s = s
        s.publish(0)
        self.version = 0
        self.worker = s.new_worker()
        self.leases: list = []

    def _lease(self):
        for _ in range(3):
            if self.leases:
                return self.leases.pop()
            r = self.s.post(routes.LEASES, KIND_LEASE_REQUEST, LeaseRequest(max_tasks=4), self.worker)
            self.leases = [Lease.model_validate(e["body"]) for e in r.json().get("leases", [])]
            if not self.leases:  # it holds all it may, is banned, or the swarm has no room: drain, another one
                self._drain()
                self.worker = self.s.new_worker()
                self.s.establish(self.worker)
        raise AssertionError(f"no lease for a fresh worker: {r.text[:300]}")

    def _drain(self) -> None:
        """Room for more leases: the trainer takes and acknowledges every group, and the leases the
        fuzz left unsubmitted expire (the clock moves past their time to live and a sweep runs)."""
        from coordinator.service import upkeep

        r = self.s.batch(max_groups=256, min_version=0)
        ids = [g["submission_id"] for g in r.json()["groups"]] if r.status_code == 200 else []
        if ids:
            self.s.ack(ids)
        self.s.clock.advance(self.s.cfg.lease_ttl_s + 1)
        upkeep.sweep(self.s.ctx)

    def _claimed(self) -> str:
        """A submission of the current worker, claimed by the verifier (a new worker when this one
        was banned by a verdict the fuzz sent)."""
        for _ in range(3):
            r = self.s.submit(self.worker, self._lease())
            if r.status_code == 200:
                self.s.claim(64)
                return r.json()["submission_id"]
            self.leases = []
            self.worker = self.s.new_worker()
            self.s.establish(self.worker)
        raise AssertionError(f"no submission taken: {r.text[:200]}")

    def routes(self) -> list[Route]:
        s = self.s
        coord = AUDIENCE_COORDINATOR

        def heartbeat():
            return {"policy_version": 0, "active_lease_ids": [self._lease().lease_id], "tokens_per_s": 10.0,
                    "status": "generating"}, self.worker

        def register():
            return {"hardware": {"cpu_count": 1, "ram_bytes": 1, "gpus": [{"name": "g", "memory_bytes": 1}],
                                 "torch_version": "2", "platform": "linux"}, "client_version": "1",
                    "engine": "t", "pow_nonce": 0}, KeyPair.generate()

        def lease_request():
            return {"max_tasks": 1, "wait_s": 0.0}, s.new_worker()

        def release():
            return {"lease_ids": [self._lease().lease_id]}, self.worker

        def submission():
            lease = self._lease()
            body = json.loads(s.submission(lease).model_dump_json())
            body["claimed_rewards"] = [0.0] * len(body["completions"])
            return body, self.worker

        def verdict():
            return json.loads(s.verdict_body(self._claimed(), True).model_dump_json()), s.verifier

        def ack():
            return {"submission_ids": [self._claimed()], "unused": {}}, s.operator

        def manifest():
            self.version += 1
            m = build_manifest(s.model_dir, run_id=s.cfg.run_id, version=self.version, step=self.version,
                               created_at=s.clock())
            return json.loads(sign_manifest(m, s.operator).model_dump_json())["body"], s.operator

        return [
            Route(routes.REGISTER, KIND_REGISTRATION, coord, register),
            Route(routes.HEARTBEAT, KIND_HEARTBEAT, coord, heartbeat),
            Route(routes.LEASES, KIND_LEASE_REQUEST, coord, lease_request),
            Route(routes.LEASE_RELEASE, KIND_LEASE_RELEASE, coord, release),
            Route(routes.SUBMISSIONS, KIND_SUBMISSION, coord, submission),
            Route(routes.VERIFICATION_CLAIM, KIND_CLAIM, coord, lambda: ({"max_jobs": 2}, s.verifier)),
            Route(routes.VERIFICATION_RESUME, KIND_RESUME, coord, lambda: ({"max_jobs": 2}, s.verifier)),
            Route(routes.VERDICTS, KIND_VERDICT, coord, verdict),
            Route(routes.VERDICTS_BATCH, KIND_VERDICT, coord, verdict, batch=True),
            Route(routes.TRAINER_BATCH, KIND_BATCH_REQUEST, coord,
                  lambda: ({"max_groups": 2, "min_policy_version": 0, "wait_s": 0.0}, s.operator)),
            Route(routes.TRAINER_ACK, KIND_BATCH_ACK, coord, ack),
            Route(routes.TRAINER_EVAL, KIND_EVAL_REPORT, coord,
                  lambda: ({"policy_version": 0, "step": 0, "greedy_accuracy": 0.5, "num_tasks": 10}, s.operator)),
            Route(routes.POLICY, KIND_POLICY_MANIFEST, AUDIENCE_SWARM, manifest),
        ]


def _assert_clear(resp, what) -> None:
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        detail = resp.json().get("detail")
        assert isinstance(detail, str) and 0 < len(detail) < 2000 and "\n" not in detail, (what, resp.text[:300])


def _send(s, route: Route, case: Case, body: dict, key: KeyPair, dt: float, nonce: str):
    raw = _signed(s, route.kind, route.audience, case, body, key, dt, nonce)
    if route.batch:
        raw = b'{"envelopes":[' + raw + b"]}"
    return s.http.post(route.path, content=raw, headers={"content-type": "application/json"})


def fuzz(s, n: int, seed: int) -> dict[str, dict[int, int]]:
    """`n` mutated, re-signed bodies on every signed route; the answers' statuses by route."""
    rng = random.Random(seed)
    bodies = Bodies(s)
    seen: dict[str, dict[int, int]] = {}
    for i, route in enumerate(bodies.routes()):
        mutators = [Mutator(seed * 1000 + i), Mutator(seed * 1000 + i, typed=True)]
        body, key = route.fresh()
        state = s.snapshot()
        for j in range(n):
            case = mutators[j % 2].case(body)
            dt = rng.choice(SKEWS) if rng.random() < 0.05 else 0.0
            s.clock.advance(0.001)
            what = (route.path, case.label, dt)
            resp = _send(s, route, case, body, key, dt, rng.randbytes(16).hex())
            _assert_clear(resp, what)
            if route.batch and resp.status_code == 200:  # each element's own outcome
                refused = all(r.get("status", 200) >= 400 for r in resp.json()["results"])
            else:
                refused = resp.status_code >= 400
            seen.setdefault(route.path, {}).setdefault(resp.status_code, 0)
            seen[route.path][resp.status_code] += 1
            if DEBUG and resp.status_code in DEBUG:
                print(route.path, resp.status_code, case.label[:100], resp.text[:160])
            after = s.snapshot()
            if refused:
                assert after == state, (*what, resp.status_code, resp.text[:200], "a refusal changed state")
            else:  # taken: what it used may be gone (a lease submitted); start again from a fresh body
                body, key = route.fresh()
                after = s.snapshot()
            state = after
    return seen


def _reads_still_answer(s) -> None:
    """Everything the fuzz left behind can still be read: no 5xx from what was taken in."""
    assert s.http.get(routes.HEALTH).status_code == 200
    for path in (routes.STATS, routes.RUN, routes.POLICY, "/v1/dashboard/overview", "/v1/dashboard/workers",
                 "/v1/dashboard/versions", "/v1/dashboard/curve", "/v1/dashboard/rejections", routes.METRICS):
        for headers in ({}, {"authorization": "Bearer harness-operator-token-0123456789"}):
            r = s.http.get(path, headers=headers)
            assert r.status_code < 500, (path, r.status_code, r.text[:300])
    jobs = s.claim(64)
    for job in jobs:
        r = s.http.get(routes.SUBMISSION.format(submission_id=job.submission_id))
        assert r.status_code == 200, r.text[:300]
        r = s.http.get(f"/v1/dashboard/rollouts/{job.submission_id}")
        assert r.status_code < 500, r.text[:300]
    r = s.batch(max_groups=256, min_version=0)
    assert r.status_code == 200, r.text[:300]


@pytest.mark.timeout(240)
def test_mutated_signed_bodies_never_5xx_and_refusals_change_nothing(swarm):
    seen = fuzz(swarm, CASES, seed=1)
    _reads_still_answer(swarm)
    # the fuzz reached past the signature: most routes took some variants and refused others
    taken = [p for p, st in seen.items() if any(c < 300 for c in st)]
    assert len(taken) >= 8, seen


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mutated_signed_bodies_long_run(swarm):
    fuzz(swarm, SLOW_CASES, seed=2)
    _reads_still_answer(swarm)


@pytest.mark.parametrize("head", [
    b"get /health HTTP/1.1\r\nhost: x\r\n\r\n",              # a method the parser does not know
    b"GET /health?\xb2 HTTP/1.1\r\nhost: x\r\n\r\n",         # a byte over 0x7f in the target
    b"GET /health HTTP/1.1\r\nx(a): b\r\n\r\n",              # a header name that is not a token
    b"GET /health HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
])
def test_a_request_the_parser_refuses_leaves_no_warning_in_the_log(swarm, head):
    """Found fuzzing shardcast's front (the same uvicorn protocol): each request httptools cannot
    parse was answered 400 and logged as a warning by uvicorn, before the guard charged anything,
    so one address reconnecting could write the coordinator's log at any rate it liked. It is
    logged at debug level and counted as a `malformed` refusal."""
    import logging
    import socket

    got: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = got.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        port = int(swarm.server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(head)
            status = c.recv(200).split(b"\r\n")[0]
    finally:
        logger.removeHandler(handler)
    assert status.startswith(b"HTTP/1.1 4") and not got, (status, [r.getMessage() for r in got])
    assert swarm.http.get(routes.HEALTH).status_code == 200


@pytest.mark.parametrize("stats", [{"positions": 10**30, "not_argmax": 0}, {"positions": 0, "not_argmax": 10**30},
                                   {"positions": 2**63, "not_argmax": 2**63}, {"positions": 2**62, "not_argmax": 2**62}])
def test_a_verdict_with_sampling_counts_beyond_64_bits_is_refused_and_changes_nothing(swarm, stats):
    """Found by the fuzz (seed 2): a full-check acceptance whose sampling check counted 10^30
    positions or near ties was a 500 (the counts reached the workers table's 64-bit columns)."""
    from protocol.messages import CheckResult
    from tests.verdict_fixtures import passing_checks

    s = swarm
    s.publish(0)
    w = s.new_worker()
    sid = s.submit(w, s.lease(w)[0]).json()["submission_id"]
    s.claim()
    checks = [c if c.name != "sampling" else CheckResult(name="sampling", passed=True, stats=stats)
              for c in passing_checks(True)]
    before = s.snapshot()
    r = s.post(routes.VERDICTS, KIND_VERDICT, s.verdict_body(sid, True, checks=checks), s.verifier)
    _assert_clear(r, stats)
    if r.status_code >= 400:
        assert s.snapshot() == before


READ_VALUES = ["", "x", "-1", "0", str(2**63), "9" * 40, "s-" + "0" * 24, "%00", "%ff", "%ud800", "\u202e", "é",
               "..", "../..", "a" * 5000, ",", ",,,,", ",".join(["s-x"] * 300), "null", "[]", "1e308", "nan", "%2F",
               "%0a", "x%0d%0ay", "%09"]


def test_hostile_values_in_the_read_routes_paths_and_queries(swarm):
    """GET routes (submission statuses, a submission, a worker, the dashboard's views) with odd
    ids and query values, with and without the operator token: below 500, and no row changes."""
    s = swarm
    s.publish(0)
    w = s.new_worker()
    s.submit(w, s.lease(w)[0])
    rng = random.Random(3)
    before = s.snapshot()
    templates = ["/v1/submission-statuses?ids={}", "/v1/submissions/{}", "/v1/workers/{}",
                 "/v1/dashboard/rollouts/{}", "/v1/dashboard/versions?limit={}", "/v1/dashboard/curve?limit={}",
                 "/v1/dashboard/rejections?limit={}", "/v1/stats?full={}", "/v1/submission-statuses?ids={}&ids={}"]
    for _ in range(300):
        path = rng.choice(templates).replace("{}", rng.choice(READ_VALUES))
        headers = {"authorization": f"Bearer {OPERATOR}"} if rng.random() < 0.5 else {}
        r = s.http.get(path, headers=headers)
        _assert_clear(r, path[:100])
    assert s.snapshot() == before
    assert s.http.get(routes.HEALTH).status_code == 200


OPERATOR = "harness-operator-token-0123456789"


def test_a_verdict_batch_whose_verdict_has_a_nul_key_is_refused_not_a_500(swarm):
    """Found by the fuzz (seed 2): a verdict with an extra key "\\x00" in a VerdictBatch."""
    s = swarm
    s.publish(0)
    w = s.new_worker()
    sid = s.submit(w, s.lease(w)[0]).json()["submission_id"]
    s.claim()
    body = {**json.loads(s.verdict_body(sid, True).model_dump_json()), "\x00": None}
    env = s.seal_raw(KIND_VERDICT, body, s.verifier)
    before = s.snapshot()
    r = s.http.post(routes.VERDICTS_BATCH, content=b'{"envelopes":[' + env.model_dump_json().encode() + b"]}",
                    headers={"content-type": "application/json"})
    _assert_clear(r, "nul key")
    assert s.snapshot() == before


@pytest.mark.parametrize("spelling", [lambda v: str(v), lambda v: float(v)])
def test_a_submission_whose_signed_body_only_parses_to_a_valid_one_is_refused_at_intake(swarm, spelling):
    """The judge fuzz found the verifier judging a signed "policy_version": "1" as version 1
    (pydantic's lax mode); the intake took it in too. One rule in protocol.envelope.open_envelope
    for every role: refused 4xx at intake, nothing stored; the same body as the signer wrote it
    (an int) is taken."""
    s = swarm
    s.publish(0)
    w = s.new_worker()
    lease = s.lease(w)[0]
    body = s.submission(lease).model_dump(mode="json")
    body["policy_version"] = spelling(body["policy_version"])
    before = s.snapshot()
    s.clock.advance(0.001)
    r = s.send("/v1/submissions", s.seal_raw(KIND_SUBMISSION, body, w))
    assert r.status_code in (400, 422) and "policy_version" in r.json()["detail"], r.text
    assert s.snapshot() == before
    assert s.submit(w, lease).status_code == 200
