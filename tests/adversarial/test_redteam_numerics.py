"""Red team, issue 17: the verifier fails closed and nothing a worker declares buys it looser
limits. Cheap copies of the policy (quantized, noisy, one optimiser step away) computed in fp32
are rejected by the proof check on every submission; one bad completion among honest ones
fails the submission; a prefill that produces NaN is a rejection with the non-finite reason; a
dtype the run does not allow (float16) is refused; an fp32 computation declared as bf16 is
judged by the fp32 limits. bench/verification.py measures all of this at scale (and in bf16,
where per-submission detection is weaker and the proof-drift test bans over a sequence)."""

import random

import pytest
import torch

from coordinator.config import CoordinatorConfig
from coordinator.rules import verdicts
from coordinator.service.verification import verdict_rules
from tests.adversarial import harness as H
from verifier.thresholds import BFLOAT16


def judge(world, env, sub, key, **kw):
    return world.verify(world.job(env, sub, key), **kw)


def failed(v) -> set[str]:
    return {c.name for c in v.checks if not c.passed}


@pytest.fixture(scope="module")
def variants(redteam):
    """Engines on cheap copies of the policy (v1), computing in fp32."""
    world, root = redteam["world"], redteam["root"]
    v1 = world.versions[1]
    paths = {q: H.quantized_copy(v1, root / q, scheme=q) for q in H.QUANTIZATIONS}
    for r in (0.003, 0.01, 0.03):
        paths[f"noise {r}"] = H.perturbed_copy(v1, root / f"noise-{r}", rel_noise=r)
    for lr in (1e-5, 1e-4):
        paths[f"adamw {lr}"] = H.next_version(v1, root / f"adamw-{lr}", lr=lr)
    return {name: H.engine_for(p, 1) for name, p in paths.items()}


CHEAP_COPIES = list(H.QUANTIZATIONS) + ["noise 0.003", "noise 0.01", "noise 0.03", "adamw 1e-05", "adamw 0.0001"]


@pytest.mark.parametrize("name", CHEAP_COPIES)
def test_a_cheap_copy_of_the_policy_computed_in_fp32_is_rejected_by_the_proof_check(redteam, variants, key, name):
    world = redteam["world"]
    for _ in range(2):
        lease, env = world.lease(key)
        cheat = H.honest_submissions(variants[name], [lease], 1)[0]
        v = judge(world, env, cheat, key)
        assert not v.accepted and "proof" in failed(v), (name, v.reason)


def test_one_bad_completion_among_honest_ones_fails_the_submission(redteam, variants, key):
    world = redteam["world"]
    lease, env = world.lease(key)
    honest = H.honest_submissions(redteam["honest"], [lease], 1)[0]
    bad = H.honest_submissions(variants["noise 0.03"], [lease], 1)[0]
    i = random.Random(0).randrange(len(lease.seeds))
    v = judge(world, env, H.mixed(honest, bad, i), key)
    proof = next(c for c in v.checks if c.name == "proof")
    assert not v.accepted and f"completion {i}" in proof.detail
    per = proof.stats["per_completion_mant_mean"]
    assert per[i] == max(per) and all(x == 0 for k, x in enumerate(per) if k != i)


def test_a_prefill_that_produces_nan_is_a_rejection_with_the_non_finite_reason(redteam, key, tmp_path):
    """The verifier's own model of the claimed version yields NaN (a policy whose activations
    overflow): typed-in correct answers with proofs are rejected, never accepted on NaN statistics."""
    world = redteam["world"]
    broken = tmp_path / "nan-policy"
    model = H.load_model(str(world.versions[1]))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "norm" in n).fill_(float("nan"))
    model.save_pretrained(broken)
    saved = world.models
    world.models = H.DictModels({**world.versions, 1: broken})
    try:
        lease, env = world.lease(key)
        cheat = H.typed_answers(world, lease, redteam["honest"], 1)
        v = judge(world, env, cheat, key)
    finally:
        world.models = saved
    proof = next(c for c in v.checks if c.name == "proof")
    assert not v.accepted and not proof.passed and "non-finite" in proof.detail
    assert "null" not in v.model_dump_json()


def test_float16_is_not_an_allowed_dtype_whatever_was_computed(redteam, key):
    world = redteam["world"]
    lease, env = world.lease(key)
    sub = H.declared(H.honest_submissions(redteam["honest"], [lease], 1)[0], "float16")
    v = judge(world, env, sub, key)
    data = next(c for c in v.checks if c.name == "lease_and_data")
    assert not v.accepted and not data.passed and "this run allows float32, bfloat16" in data.detail
    assert "proof" not in {c.name for c in v.checks}  # the model is not even run


def test_a_run_that_allows_only_fp32_refuses_a_bf16_declaration(redteam, key):
    world = redteam["world"]
    world.allowed_dtypes = ("float32",)
    try:
        lease, env = world.lease(key)
        sub = H.honest_submissions(H.engine_for(world.versions[1], 1, dtype="bfloat16"), [lease], 1)[0]
        v = judge(world, env, sub, key)
    finally:
        world.allowed_dtypes = ("float32", "bfloat16")
    assert not v.accepted and "lease_and_data" in failed(v)


def test_fp32_compute_declared_as_bf16_is_judged_by_the_fp32_limits(redteam, key):
    """The precision probe: an honest fp32 worker that declares bf16 is recognised as fp32 (and
    passes); the same lie with weights changed by less than bf16 could ever show (noise of 0.03%
    and 0.1% of each tensor's std) is judged by the fp32 limits and rejected. (A larger change
    puts the values as far from the fp32 prefill as bf16 rounding does; such a submission is judged
    in bf16: bench/verification.py prints what that costs in detection.)"""
    world, root = redteam["world"], redteam["root"]
    lease, env = world.lease(key)
    honest = H.declared(H.honest_submissions(redteam["honest"], [lease], 1)[0], "bfloat16")
    v = judge(world, env, honest, key, probe_index=0)
    proof = next(c for c in v.checks if c.name == "proof")
    assert v.accepted and proof.stats["prefill_dtype"] == "float32" and "computed in float32" in proof.stats[
        "precision_note"]
    for r in (3e-4, 1e-3):
        engine = H.engine_for(H.perturbed_copy(world.versions[1], root / f"tiny-noise-{r}", rel_noise=r), 1)
        lease, env = world.lease(key)
        cheat = H.declared(H.honest_submissions(engine, [lease], 1)[0], "bfloat16")
        v = judge(world, env, cheat, key, probe_index=0)
        proof = next(c for c in v.checks if c.name == "proof")
        assert not v.accepted and proof.stats["prefill_dtype"] == "float32", (r, proof.stats)
        # declared as what it is, the same submission fails the same way (a fresh ledger: not a replay)
        world.ledger = H.SeenLedger()
        v32 = judge(world, env, H.declared(cheat, "float32"), key)
        assert not v32.accepted and "proof" in failed(v32)


def test_honest_bf16_is_judged_in_bf16_and_accepted(redteam, key):
    world = redteam["world"]
    lease, env = world.lease(key)
    sub = H.honest_submissions(H.engine_for(world.versions[1], 1, dtype="bfloat16"), [lease], 1)[0]
    v = judge(world, env, sub, key)
    proof = next(c for c in v.checks if c.name == "proof")
    assert v.accepted, v.reason
    assert proof.stats["prefill_dtype"] == "bfloat16" and proof.stats["precision_probe"]["fp32_mant_mean"] > 2 * BFLOAT16.higher_precision_floor


# On this test's model bf16 cannot tell these from honest workers on other kernels within 20
# full checks (their pooled proof error is what honest vLLM and eager-attention workers show;
# verifier/thresholds.py gives the measured figures, which include int8 and 1% noise on the
# bench's warm-started model). Caught at every check when the run allows float32 alone.
BF16_BLIND = {"noise 0.003", "adamw 1e-05"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CHEAP_COPIES if n not in BF16_BLIND])
def test_every_systematic_bf16_cheat_is_banned_within_20_full_checks(redteam, key, name, tmp_path):
    """In bf16 one submission may pass (rounding hides the change); the coordinator's own rules
    over the sequence of full checks (rejections, near-ties, proof drift) ban the worker."""
    world = redteam["world"]
    root = redteam["root"]
    v1 = world.versions[1]
    path = {"noise 0.003": lambda: H.perturbed_copy(v1, tmp_path / "n", rel_noise=0.003),
            "noise 0.01": lambda: H.perturbed_copy(v1, tmp_path / "n", rel_noise=0.01),
            "noise 0.03": lambda: H.perturbed_copy(v1, tmp_path / "n", rel_noise=0.03),
            "adamw 1e-05": lambda: H.next_version(v1, root / "adamw-1e-05", lr=1e-5),
            "adamw 0.0001": lambda: H.next_version(v1, root / "adamw-0.0001", lr=1e-4)}.get(
        name, lambda: H.quantized_copy(v1, root / name, scheme=name))()
    engine = H.engine_for(path, 1, dtype="bfloat16")
    rules = verdict_rules(CoordinatorConfig(operator_key="0" * 64, model="x"))
    standing = verdicts.Standing(0, 0, (0.0, 0.0), None)
    for i in range(1, 21):
        lease, env = world.lease(key)
        v = judge(world, env, H.honest_submissions(engine, [lease], 1)[0], key)
        c = verdicts.consequences(v.accepted, True, v.checks, v.reason, received_at=float(i), standing=standing,
                                  rules=rules)
        if c.ban_reason:
            return
        standing = verdicts.standing_after(standing, c)
    pytest.fail(f"{name} in bf16 was not banned within 20 full checks")
