"""Red team (a small sample; bench/verification.py runs thousands): honest rollouts pass
under every allowed variation, and every cheat of issue 3 is rejected at check rate 100%,
by the check that should catch it."""

import random

import pytest
import torch

from tests.adversarial import harness as H


def judge(world, env, sub, key):
    return world.verify(world.job(env, sub, key))


@pytest.mark.parametrize("dtype,batch,threads", [("float32", 1, 1), ("float32", 4, 2), ("bfloat16", 4, 1),
                                                 ("bfloat16", 1, 2)])
def test_honest_rollouts_pass_under_allowed_variation(redteam, key, dtype, batch, threads):
    world = redteam["world"]
    engine = H.engine_for(world.versions[1], 1, dtype=dtype, threads=threads)
    leases = [world.lease(key) for _ in range(2)]
    reqs = [r for lease, _ in leases for r in H._requests(lease)]
    results = [res for i in range(0, len(reqs), batch) for res in engine.generate(reqs[i: i + batch])]
    torch.set_num_threads(2)
    from protocol.proof import build_proofs
    from worker.rollout import build_submission

    proofs = build_proofs([r.hidden for r in results])
    for k, (lease, env) in enumerate(leases):
        n = len(lease.seeds)
        sub = build_submission(lease, results[k * n:(k + 1) * n], proofs[k * n:(k + 1) * n], 1, engine.info())
        v = judge(world, env, sub, key)
        assert v.accepted, v.reason
        assert {c.name for c in v.checks} == {"lease_and_data", "termination", "reward", "replay", "proof", "sampling"}


def _changed_prompt(world, engine, lease):
    p = list(lease.prompt_token_ids)
    p[0] = world.tokenizer.convert_tokens_to_ids("9" if world.tokenizer.convert_ids_to_tokens(p[0]) != "9" else "8")
    return H.generate_with(engine, lease, 1, prompt=p)


ATTACKS = {
    # name: (make(rt, lease, honest_submission) -> cheat, the check that must fail)
    "other_weights": (lambda rt, ls, h: H.generate_with(rt["other"], ls, 1), "proof"),
    "weights_plus_noise": (lambda rt, ls, h: H.generate_with(rt["noisy"], ls, 1), "proof"),
    "previous_version_as_current": (lambda rt, ls, h: H.generate_with(rt["v0"], ls, 1), "proof"),
    "changed_prompt": (lambda rt, ls, h: _changed_prompt(rt["world"], rt["honest"], ls), "proof"),
    "edited_token": (lambda rt, ls, h: H.edit_token(h, random.Random(1), 60, rt["world"].eos), "sampling"),
    "edited_token_reproved": (lambda rt, ls, h: H.reprove(rt["world"], ls, H.edit_token(h, random.Random(2), 60,
                                                                                         rt["world"].eos), 1),
                              "sampling"),
    "other_temperature": (lambda rt, ls, h: H.generate_with(rt["honest"], ls, 1, temperature=3.0), "sampling"),
    "greedy": (lambda rt, ls, h: H.greedy_submission(rt["world"], ls, 1), "sampling"),
    "cherry_picking": (lambda rt, ls, h: H.cherry_pick(rt["world"], rt["honest"], ls, 1, tries=2), "sampling"),
    "truncation": (lambda rt, ls, h: H.truncate(h, forge_eos=False, eos=rt["world"].eos), "termination"),
    "forged_eos": (lambda rt, ls, h: H.reprove(rt["world"], ls, H.truncate(h, forge_eos=True, eos=rt["world"].eos), 1),
                   "termination"),
    "forged_reward": (lambda rt, ls, h: H.with_claimed_rewards(h, 1.0), "reward"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_cheat_is_rejected(redteam, key, name):
    make, must_fail = ATTACKS[name]
    world = redteam["world"]
    lease, env = world.lease(key)
    honest = H.honest_submissions(redteam["honest"], [lease], 1)[0]
    cheat = make(redteam, lease, honest)
    assert cheat.model_dump() != honest.model_dump(), "the cheat changed nothing"
    v = judge(world, env, cheat, key)
    failed = {c.name for c in v.checks if not c.passed}
    assert not v.accepted and must_fail in failed, (failed, v.reason)


def test_replayed_rollout_and_copied_proof_are_rejected(redteam, key):
    world = redteam["world"]
    (l1, e1), (l2, e2) = world.lease(key), world.lease(key)
    s1, s2 = H.honest_submissions(redteam["honest"], [l1, l2], 1)
    assert judge(world, e1, s1, key).accepted
    replay = judge(world, e1, s1, key)  # same lease and completions, new envelope and submission id
    assert not replay.accepted and "replay" in {c.name for c in replay.checks if not c.passed}
    copied = H.copy_proof(s2, s1)
    assert copied.model_dump() != s2.model_dump()
    v = judge(world, e2, copied, key)
    assert not v.accepted and "proof" in {c.name for c in v.checks if not c.passed}


def test_a_rejection_says_why_with_numbers(redteam, key):
    world = redteam["world"]
    lease, env = world.lease(key)
    v = judge(world, env, H.generate_with(redteam["noisy"], lease, 1), key)
    proof = next(c for c in v.checks if c.name == "proof")
    assert not proof.passed and proof.stats["failed_chunks"] >= 1 and proof.stats["worst_exp_frac"] > 0
    assert v.reason.startswith("proof: completion")


@pytest.mark.slow
def test_redteam_at_scale(redteam, key):
    """Every attack on 10 leases each, all rejected (the bench prints the full table)."""
    world = redteam["world"]
    for name, (make, _) in ATTACKS.items():
        leases = [world.lease(key) for _ in range(10)]
        honest = H.honest_submissions(redteam["honest"], [ls for ls, _ in leases], 1)
        for (lease, env), h in zip(leases, honest):
            cheat = make(redteam, lease, h)
            if cheat.model_dump() != h.model_dump():
                assert not judge(world, env, cheat, key).accepted, name
