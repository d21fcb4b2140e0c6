"""Hostile values in every field of every signed coordinator route: never a 5xx, and a refusal
changes nothing.

For each route the fuzzer starts from a valid, correctly signed body and replaces one field at a
time (nested fields too) with a value an attacker who read the code would try: integers beyond
64 bits or the databases' 32-bit columns, negative numbers, huge floats, NUL and lone-surrogate
text, wrong types, deep nesting. Each variant is signed by a key the route accepts, so it gets
past the signature to the code behind it. Envelope fields are mutated the same way unsigned.
What must hold: the answer is 2xx or a clear 4xx (JSON with a one-line `detail`), a 4xx changes
no row of the database, and the service still answers /health afterwards.
"""

from __future__ import annotations

import copy
import json

import pytest

from protocol import routes
from protocol.envelope import envelope_digest
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_RESUME,
    KIND_EVAL_REPORT,
    KIND_HEARTBEAT,
    KIND_LEASE_RELEASE,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    KIND_VERDICT,
    Heartbeat,
)

def _deep(n: int):
    out: list = [1]
    for _ in range(n):
        out = [out]
    return out


HOSTILE = [None, -1, 2**31, 2**63, 10**30, -(2**70), 1e308, -1e308, 0.5, True, "", "\x00", "\ud800",
           "x" * 5000, [], {}, _deep(40), {"a": {"b": {"c": 1}}}]


def _paths(value, prefix=()):
    """Every path to a value inside a JSON body (list paths use the first element only)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], prefix + (0,))


def _replaced(body, path, new):
    out = copy.deepcopy(body)
    if not path:
        return new
    target = out
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = new
    return out


def _bodies(s):
    """(route, kind, valid JSON body, signing key) for every signed route."""
    s.publish(0)
    a, b = s.new_worker(), s.new_worker()
    la = s.lease(a, 3)
    sid = s.submit(a, la[0]).json()["submission_id"]
    (job,) = s.claim()
    verdict = json.loads(s.verdict_body(sid, True).model_dump_json())
    out = [
        (routes.HEARTBEAT, KIND_HEARTBEAT, {"policy_version": 0, "active_lease_ids": [la[1].lease_id],
                                            "tokens_per_s": 10.0, "status": "generating"}, a),
        (routes.REGISTER, KIND_REGISTRATION, {"hardware": {"cpu_count": 1, "ram_bytes": 1, "gpus": [
            {"name": "g", "memory_bytes": 1}], "torch_version": "2", "platform": "linux"},
            "client_version": "1", "engine": "t"}, KeyPair.generate()),
        (routes.LEASES, KIND_LEASE_REQUEST, {"max_tasks": 1}, b),
        (routes.LEASE_RELEASE, KIND_LEASE_RELEASE, {"lease_ids": [la[2].lease_id]}, a),
        (routes.SUBMISSIONS, KIND_SUBMISSION, json.loads(s.submission(la[1]).model_dump_json()), a),
        (routes.VERIFICATION_CLAIM, KIND_CLAIM, {"max_jobs": 1}, s.verifier),
        (routes.VERIFICATION_RESUME, KIND_RESUME, {"max_jobs": 1}, s.verifier),
        (routes.TRAINER_BATCH, KIND_BATCH_REQUEST, {"max_groups": 1, "min_policy_version": 0}, s.operator),
        (routes.TRAINER_ACK, KIND_BATCH_ACK, {"submission_ids": [sid]}, s.operator),
        (routes.TRAINER_EVAL, KIND_EVAL_REPORT, {"policy_version": 0, "step": 0, "greedy_accuracy": 0.5,
                                                 "num_tasks": 10}, s.operator),
        (routes.VERDICTS, KIND_VERDICT, verdict, s.verifier),
    ]
    assert job.submission_id == sid and envelope_digest(job.submission)
    return out


def _assert_clear(resp, what):
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        detail = resp.json().get("detail")
        assert isinstance(detail, str) and 0 < len(detail) < 2000 and "\n" not in detail, (what, resp.text[:300])


@pytest.mark.timeout(300)
def test_hostile_values_in_every_field_of_every_signed_route(swarm):
    s = swarm
    tried = refused = 0
    state = None  # the database as the last request left it
    for route, kind, body, key in _bodies(s):
        for path in list(_paths(body)):
            for value in HOSTILE:
                mutated = _replaced(body, path, value)
                if not isinstance(mutated, dict):
                    continue
                try:
                    env = s.seal_raw(kind, mutated, key)
                except Exception:  # no canonical form (a lone surrogate): cannot be signed at all
                    continue
                before = s.snapshot() if state is None else state
                resp = s.send(route, env)
                tried += 1
                _assert_clear(resp, (route, path, repr(value)[:40]))
                state = None  # accepted: it may have changed state (heartbeats do)
                if resp.status_code >= 400:
                    refused += 1
                    state = s.snapshot()
                    assert state == before, (route, path, repr(value)[:40], "a refusal changed state")
    assert tried > 500 and refused > tried // 2, (tried, refused)
    assert s.http.get("/health").status_code == 200


def test_hostile_values_in_the_envelope_itself(swarm):
    s = swarm
    s.publish(0)
    a = s.new_worker()
    good = json.loads(s.seal(KIND_HEARTBEAT, Heartbeat(), a).model_dump_json())
    for field in ("kind", "run_id", "audience", "signer", "timestamp", "nonce", "signature", "body"):
        for value in HOSTILE:
            before = s.snapshot()
            raw = json.dumps({**good, field: value})
            resp = s.send(routes.HEARTBEAT, raw.encode())
            _assert_clear(resp, (field, repr(value)[:40]))
            assert resp.status_code >= 400 and s.snapshot() == before, (field, repr(value)[:40])
    assert s.http.get("/health").status_code == 200
