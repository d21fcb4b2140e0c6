"""`protocol.conformance.lease_problems`, the one lease-conformance rule: the coordinator's intake
answers its first problem (tests/unit/coordinator/test_coordinator_rules.py), the verifier reports
every one (tests/unit/verifier/test_verifier_checks.py) — the same problems, in the same order."""

from __future__ import annotations

import base64

import torch

from protocol.conformance import LEASE_AND_DATA, TERMINATION, lease_problems
from protocol.messages import Completion, EngineInfo, Lease, SamplingParams, Submission
from protocol.proof import build_proof

EOS = 1
LEASE = Lease(lease_id="l-1", run_id="r", worker_id="W", task_id="t", prompt_token_ids=[2], seeds=[1, 2, 3],
              sampling=SamplingParams(temperature=1.0, max_tokens=4), eos_token_id=EOS, min_policy_version=3,
              max_policy_version=5, issued_at=0.0, expires_at=100.0, allowed_dtypes=["float32", "bfloat16"])


def _c(tokens, reason="eos", proof_tokens=None):
    n = len(tokens) if proof_tokens is None else proof_tokens
    return Completion(token_ids=tokens, finish_reason=reason,
                      proof=base64.b64encode(build_proof(torch.randn(n, 16))).decode())


def _sub(comps, version=4, dtype="bf16"):
    return Submission(lease_id="l-1", policy_version=version, engine=EngineInfo(name="t", dtype=dtype),
                      completions=comps)


def test_a_conforming_submission_has_no_problem_and_an_alias_of_an_allowed_dtype_is_allowed():
    sub = _sub([_c([5, EOS]), _c([5, 6, 7, 8], "length"), _c([EOS])])
    assert lease_problems(LEASE, sub, signer_id="W", run_id="r", vocab_size=10, hidden_size=16) == []


def test_every_problem_in_order_and_the_first_alone_for_intake():
    sub = _sub([_c([5, 6, 7, 8, 9, EOS]), _c([5, EOS, 7], "length"), _c([5, 12, EOS], proof_tokens=2)], version=7)
    found = lease_problems(LEASE, sub, signer_id="X", run_id="other", vocab_size=10)
    assert [(p.reason, p.check, p.completion) for p in found] == [
        ("wrong_run", LEASE_AND_DATA, None), ("not_your_lease", LEASE_AND_DATA, None),
        ("wrong_version", LEASE_AND_DATA, None),
        ("too_long", LEASE_AND_DATA, 0),
        ("bad_termination", TERMINATION, 1), ("bad_termination", TERMINATION, 1),
        ("token_out_of_vocab", LEASE_AND_DATA, 2), ("bad_proof", LEASE_AND_DATA, 2)]
    assert lease_problems(LEASE, sub, signer_id="X", run_id="other", vocab_size=10, first=True) == found[:1]
    assert "stopped for length after 3 tokens" in found[4].detail and "contains EOS" in found[5].detail
    assert "proof covers 2 tokens, the completion has 3" in found[7].detail
