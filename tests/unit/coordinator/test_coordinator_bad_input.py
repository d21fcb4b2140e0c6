"""Bad input at every coordinator endpoint: a clear 4xx, no state change, counted by reason.

Each case builds one hostile or broken request against a coordinator that already holds
real state (a policy version, two workers, leases, a queued submission). The whole database
is snapshotted before and after: equal snapshots mean the request changed nothing.
"""

import base64
import json

import pytest
from coord_harness import proof_for

from protocol.envelope import Envelope
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from protocol.messages import (
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_HEARTBEAT,
    KIND_LEASE_RELEASE,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    BatchRequest,
    ClaimRequest,
    HardwareReport,
    Heartbeat,
    LeaseRelease,
    LeaseRequest,
    Registration,
)


@pytest.fixture
def world(swarm):
    swarm.publish(0)
    a, b = swarm.new_worker(), swarm.new_worker()
    la = swarm.lease(a, 3)
    lb = swarm.lease(b, 1)
    sid = swarm.submit(a, la[0]).json()["submission_id"]
    return {"s": swarm, "a": a, "b": b, "la": la, "lb": lb, "sid": sid}


def _tamper(env: Envelope, **changes) -> str:
    d = json.loads(env.model_dump_json())
    for k, v in changes.items():
        if k.startswith("body."):
            d["body"][k[5:]] = v
        else:
            d[k] = v
    return json.dumps(d)


def case_malformed_json(w):
    return w["s"].send("/v1/submissions", b'{"kind": "submission", "body": {'), 400, "malformed"


def case_not_an_object(w):
    return w["s"].send("/v1/leases", b'[1, 2, 3]'), 400, "malformed"


def case_empty_body(w):
    return w["s"].send("/v1/workers/heartbeat", b""), 400, "malformed"


def case_envelope_wrong_types(w):
    env = w["s"].seal(KIND_HEARTBEAT, Heartbeat(), w["a"])
    return w["s"].send("/v1/workers/heartbeat", _tamper(env, timestamp="yesterday")), 422, "bad_envelope"


def case_body_wrong_types(w):
    s = w["s"]
    sub = json.loads(s.submission(w["la"][1]).model_dump_json())
    sub["policy_version"] = "zero"
    return s.send("/v1/submissions", s.seal_raw(KIND_SUBMISSION, sub, w["a"])), 422, "bad_body"


def case_unknown_field(w):
    s = w["s"]
    env = s.seal_raw(KIND_LEASE_REQUEST, {"max_tasks": 1, "please": "more"}, w["a"])
    return s.send("/v1/leases", env), 422, "bad_body"


def case_oversized_body(w):
    return w["s"].send("/v1/submissions", b" " * (4 * 1024 * 1024 + 10)), 413, "too_large"


def case_oversized_list_in_heartbeat(w):
    s = w["s"]
    env = s.seal_raw(KIND_HEARTBEAT, {"active_lease_ids": [f"l-{i}" for i in range(300)]}, w["a"])
    return s.send("/v1/workers/heartbeat", env), 422, "bad_body"


def case_oversized_token_list(w):
    s = w["s"]
    lease = w["la"][1]
    sub = json.loads(s.submission(lease).model_dump_json())
    sub["completions"][0]["token_ids"] = [5] * 40_000 + [lease.eos_token_id]
    # larger than any submission of this run (group_size x max_tokens): refused on its headers
    return s.send("/v1/submissions", s.seal_raw(KIND_SUBMISSION, sub, w["a"])), 413, "too_large"


def case_oversized_completion_list(w):
    s = w["s"]
    lease = w["la"][1]
    sub = json.loads(s.submission(lease).model_dump_json())
    sub["completions"] = sub["completions"] * 70  # 280 > the protocol's cap of 256
    return s.send("/v1/submissions", s.seal_raw(KIND_SUBMISSION, sub, w["a"])), 413, "too_large"


def case_completion_longer_than_max_tokens(w):
    s = w["s"]
    lease = w["la"][1]
    comps = s.completions(lease, [5] * lease.sampling.max_tokens)
    return s.submit(w["a"], lease, completions=comps), 422, "too_long"


def case_too_many_completions(w):
    s = w["s"]
    lease = w["la"][1]
    return s.submit(w["a"], lease, completions=s.completions(lease) * 2), 422, "wrong_count"


def case_bad_signature(w):
    s = w["s"]
    env = s.seal(KIND_SUBMISSION, s.submission(w["la"][1]), w["a"])
    return s.send("/v1/submissions", _tamper(env, **{"body.policy_version": 0, "signature": env.signature[:-4] + "AAA="})), 401, "bad_signature"


def case_tampered_body(w):
    s = w["s"]
    env = s.seal(KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), w["a"])
    return s.send("/v1/leases", _tamper(env, **{"body.max_tasks": 64})), 401, "bad_signature"


def case_wrong_key(w):
    """The envelope names worker b as signer, but a signed it."""
    s = w["s"]
    env = s.seal(KIND_SUBMISSION, s.submission(w["lb"][0]), w["a"])
    return s.send("/v1/submissions", _tamper(env, signer=w["b"].public.hex)), 401, "bad_signature"


def case_wrong_kind(w):
    s = w["s"]
    env = s.seal(KIND_HEARTBEAT, Heartbeat(), w["a"])
    return s.send("/v1/submissions", env), 422, "wrong_kind"


def case_stale_timestamp(w):
    s = w["s"]
    return s.send("/v1/workers/heartbeat", s.seal(KIND_HEARTBEAT, Heartbeat(), w["a"], dt=-600)), 400, "stale"


def case_future_timestamp(w):
    s = w["s"]
    return s.send("/v1/leases", s.seal(KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), w["a"], dt=600)), 400, "stale"


def case_replayed_nonce(w):
    s = w["s"]
    env = s.seal(KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), w["a"])
    first = s.send("/v1/leases", env)
    assert first.status_code == 200
    w["snapshot"] = s.snapshot()  # the first one legitimately changed state
    return s.send("/v1/leases", env), 409, "replay"


def case_unknown_worker(w):
    s = w["s"]
    return s.post("/v1/leases", KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), KeyPair.generate()), 404, "unknown_worker"


def case_unknown_lease(w):
    s = w["s"]
    sub = s.submission(w["la"][1]).model_copy(update={"lease_id": "l-000000000000000000000000"})
    return s.post("/v1/submissions", KIND_SUBMISSION, sub, w["a"]), 404, "unknown_lease"


def case_another_workers_lease(w):
    s = w["s"]
    return s.submit(w["a"], w["lb"][0]), 403, "not_your_lease"


def case_expired_lease(w):
    s = w["s"]
    s.clock.advance(s.cfg.lease_ttl_s + 1)
    return s.submit(w["a"], w["la"][1]), 410, "lease_expired"


def case_duplicate_completion(w):
    """Completions identical (tokens and proofs) to a stored submission of the same task."""
    s = w["s"]
    a = w["a"]
    lease = w["la"][1]
    assert s.submit(a, lease).status_code == 200
    # the same task again (a returned task, or the split wrapping around): b leases it
    s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[w["lb"][0].lease_id]), w["b"])
    from coordinator.store import leases as lq

    with s.ctx.db.write() as conn:  # put the task a already answered back in the pool, as re-leasing would
        lq.return_tasks(conn, [lq.get(conn, lease.lease_id)], s.clock())
    again = s.lease(w["b"], 1)[0]
    assert again.task_id == lease.task_id
    # the first refusal closes the lease (test_coordinator_duplicate_lease); a resend changes nothing
    assert s.submit(w["b"], again, completions=s.completions(lease)).status_code == 409
    w["snapshot"] = s.snapshot()
    return s.submit(w["b"], again, completions=s.completions(lease)), 409, "duplicate_completion"


def case_duplicate_submission(w):
    s = w["s"]
    return s.submit(w["a"], w["la"][0]), 409, "duplicate_submission"


def case_banned_worker(w):
    s = w["s"]
    (job,) = s.claim()
    assert s.verdict(job.submission_id, False, reason="sampling check failed").status_code == 200
    w["snapshot"] = s.snapshot()
    return s.post("/v1/leases", KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), w["a"]), 403, "banned"


def case_verdict_from_a_worker_key(w):
    s = w["s"]
    return s.verdict(w["sid"], True, key=w["a"]), 403, "unauthorised_key"


def case_verdict_for_unknown_submission(w):
    return w["s"].verdict("s-nope", True), 404, "unknown_submission"


def case_verdict_twice(w):
    s = w["s"]
    assert s.verdict(w["sid"], True).status_code == 200
    w["snapshot"] = s.snapshot()
    return s.verdict(w["sid"], False), 409, "already_decided"


def case_verdict_without_the_required_full_check(w):
    return w["s"].verdict(w["sid"], True, full_check=False), 422, "check_skipped"


def case_claim_from_a_worker_key(w):
    s = w["s"]
    return s.post("/v1/verification/claim", KIND_CLAIM, ClaimRequest(max_jobs=4), w["a"]), 403, "unauthorised_key"


def case_batch_from_a_verifier_key(w):
    s = w["s"]
    return s.post("/v1/trainer/batch", KIND_BATCH_REQUEST, BatchRequest(max_groups=4, min_policy_version=0),
                  s.verifier), 403, "unauthorised_key"


def case_policy_signed_by_a_worker(w):
    s = w["s"]
    m = build_manifest(s.model_dir, run_id=s.cfg.run_id, version=5, step=5)
    return s.send("/v1/policy", sign_manifest(m, w["a"])), 401, "bad_signature"


def case_policy_of_another_run(w):
    s = w["s"]
    m = build_manifest(s.model_dir, run_id="other-run", version=5, step=5)
    return s.send("/v1/policy", sign_manifest(m, s.operator)), 422, "wrong_run"


def case_policy_not_newer(w):
    s = w["s"]
    return s.publish(0), 409, "version_exists"


def case_release_another_workers_lease(w):
    s = w["s"]
    return s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[w["la"][1].lease_id, w["lb"][0].lease_id]),
                  w["a"]), 403, "not_your_lease"


def case_release_unknown_lease(w):
    s = w["s"]
    return s.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[w["la"][1].lease_id, "l-x"]),
                  w["a"]), 404, "unknown_lease"


def case_register_banned_identity_again(w):
    s = w["s"]
    (job,) = s.claim()
    s.verdict(job.submission_id, False, reason="proof mismatch")
    w["snapshot"] = s.snapshot()
    return s.post("/v1/workers/register", KIND_REGISTRATION,
                  Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1)), w["a"]), 403, "banned"


def case_wrong_policy_version(w):
    s = w["s"]
    return s.submit(w["a"], w["la"][1], version=7), 422, "wrong_version"


def case_token_out_of_vocabulary(w):
    s = w["s"]
    lease = w["la"][1]
    return s.submit(w["a"], lease, completions=s.completions(lease, [10_000])), 422, "token_out_of_vocab"


def case_undecodable_proof(w):
    s = w["s"]
    lease = w["la"][1]
    comps = s.completions(lease)
    comps[2] = comps[2].model_copy(update={"proof": "%%%"})
    return s.submit(w["a"], lease, completions=comps), 422, "bad_proof"


def case_proof_that_is_not_a_proof(w):
    s = w["s"]
    lease = w["la"][1]
    comps = s.completions(lease)
    comps[1] = comps[1].model_copy(update={"proof": base64.b64encode(b"\x01" * 300).decode()})
    return s.submit(w["a"], lease, completions=comps), 422, "bad_proof"


def case_proof_of_another_length(w):
    s = w["s"]
    lease = w["la"][1]
    comps = s.completions(lease)
    comps[0] = comps[0].model_copy(update={"proof": proof_for(len(comps[0].token_ids) + 1)})
    return s.submit(w["a"], lease, completions=comps), 422, "bad_proof"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_gets_a_clear_4xx_changes_nothing_and_is_counted(world, case):
    s = world["s"]
    world["snapshot"] = s.snapshot()
    resp, status, reason = case(world)
    before = world["snapshot"]
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str) and 10 < len(detail) < 400 and "\n" not in detail
    assert s.snapshot() == before
    assert s.metric("swarmrl_coordinator_rejections_total", reason=reason) >= 1


def test_a_refused_request_leaves_its_nonce_unused(world):
    """A request refused for a fixable reason can be corrected; its nonce was never recorded."""
    s = world["s"]
    env = s.seal(KIND_SUBMISSION, s.submission(world["la"][1], version=9), world["a"])
    assert s.send("/v1/submissions", env).status_code == 422
    with s.ctx.db.read() as conn:
        from sqlalchemy import select

        from coordinator.store.schema import nonces

        assert conn.execute(select(nonces).where(nonces.c.nonce == env.nonce)).first() is None
