"""Seeded mutation fuzz of the judge (`tests/adversarial/judge_fuzz.py`): honest submissions
of the tiny model, in float32 and bfloat16, changed in what a worker controls, re-signed with
the worker's key, judged by the verifier's real pipeline. Every mutant gets a verdict (no
exception escapes); a mutant that changed anything the run binds is rejected by a named
check; a descriptive change is accepted (each such mutation says why). The default run
judges a few dozen mutants; the `slow` one a few hundred per seed."""

from __future__ import annotations

import random

import pytest

from protocol.identity import KeyPair
from tests.adversarial import harness as H
from tests.adversarial import judge_fuzz as F
from verifier.prefill import vocab_size

DTYPES = ("float32", "bfloat16")


def _cases(world, dtype: str, n: int = 3) -> list[F.Case]:
    """`n` honest submissions of `world` computed in `dtype` (leases allowing versions 0..1, computed on 1)."""
    key = KeyPair.generate()
    vocab = vocab_size(world.models.model(1))
    engine = H.engine_for(world.versions[1], 1, dtype=dtype)
    leases = [world.lease(key, min_version=0) for _ in range(n)]
    bodies = [s.model_dump(mode="json") for s in H.honest_submissions(engine, [ls for ls, _ in leases], 1)]
    return [F.Case(world=world, key=key, lease=ls, lease_env=env, body=b, donors=[d for d in bodies if d is not b],
                   vocab=vocab, dtype=dtype) for (ls, env), b in zip(leases, bodies)]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    """Per dtype, honest submissions of two models: the random tiny model (completions run to
    max_tokens, 'length') and the same after 60 supervised steps (short, EOS-ended ones)."""
    from protocol.lm import load_tokenizer
    from swarmrl.modelkit import init_tiny_model, warm_start

    root = tmp_path_factory.mktemp("judge_fuzz")
    world = H.make_world(root / "random", hidden=64, layers=2, group_size=4, max_tokens=10)
    init_tiny_model(root / "warm" / "v0", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, seed=0)
    warm_start(root / "warm" / "v0", seconds=120, max_steps=60, seed=0)
    v1 = H.next_version(root / "warm" / "v0", root / "warm" / "v1")
    warm = H.World(versions={0: root / "warm" / "v0", 1: v1}, tokenizer=load_tokenizer(str(v1)), group_size=4,
                   max_tokens=10)
    return {dtype: _cases(world, dtype) + _cases(warm, dtype) for dtype in DTYPES}


def run_fuzz(cases: list[F.Case], seed: int, n: int, names: list[str] | None = None) -> dict[str, int]:
    """Judge `n` mutants drawn from `cases` with `seed`; assert every expectation; the count per outcome."""
    rng = random.Random(seed)
    problems: list[str] = []
    seen = {"not_applicable": 0, "judged": 0, F.REJECT: 0, F.ACCEPT: 0, F.EITHER: 0, "either_accepted": 0}
    for k in range(n):
        case = cases[k % len(cases)]
        found = F.mutants(case, rng, 1, names)
        if not found:  # the mutation has nothing to change here (e.g. no EOS-ended completion)
            seen["not_applicable"] = seen.get("not_applicable", 0) + 1
            continue
        (m,) = found
        probe = rng.randrange(len(case.lease.seeds))
        try:
            v = F.judge(case, m.body, probe_index=probe)
        except Exception as exc:  # noqa: BLE001 - the finding: an exception escaped the judge
            problems.append(f"[seed {seed} #{k}] {m.name}: {type(exc).__name__}: {exc}")
            continue
        seen["judged"] += 1
        seen[m.expect] += 1
        failed = {c.name for c in v.checks if not c.passed}
        for name in failed:
            seen[f"failed:{name}"] = seen.get(f"failed:{name}", 0) + 1
        if any(c.name == "proof" for c in v.checks):
            seen["model_checked"] = seen.get("model_checked", 0) + 1
        if m.expect == F.REJECT:
            if v.accepted or not failed:
                problems.append(f"[seed {seed} #{k}] {m.name}: ACCEPTED a binding change")
            elif not failed <= F.CHECKS or not v.reason:
                problems.append(f"[seed {seed} #{k}] {m.name}: rejected without a named check ({failed}, {v.reason!r})")
        elif m.expect == F.ACCEPT:
            assert m.why, m.name  # a harmless mutation says why
            if not v.accepted:
                problems.append(f"[seed {seed} #{k}] {m.name}: a descriptive change was rejected: {v.reason}")
        else:
            assert m.why, m.name
            seen["either_accepted"] += v.accepted
    assert not problems, "\n".join(problems)
    return seen


@pytest.mark.parametrize("dtype", DTYPES)
def test_honest_submissions_are_accepted(fuzz, dtype):
    for case in fuzz[dtype]:
        v = F.judge(case, case.body, probe_index=0)
        assert v.accepted, v.reason


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_mutation_kind_once(fuzz, dtype):
    """Each mutation on its own, at least once per dtype."""
    for i, name in enumerate(sorted(F.MUTATIONS)):
        seen = run_fuzz(fuzz[dtype], seed=1000 + i, n=len(fuzz[dtype]), names=[name])
        assert seen["judged"] >= 1, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_judge_fuzz(fuzz, dtype):
    seen = run_fuzz(fuzz[dtype], seed=0, n=48)
    assert seen["judged"] >= 40 and seen[F.REJECT] >= 24 and seen.get("model_checked", 0) >= 12


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_judge_fuzz_at_scale(fuzz, dtype, seed):
    seen = run_fuzz(fuzz[dtype], seed=seed, n=300)
    assert seen["judged"] >= 250


# -- findings of the fuzz, each reduced to a regression test --------------------------------------
@pytest.mark.parametrize("path,value", [(("policy_version",), "1"), (("policy_version",), 1.0),
                                        (("completions", 0, "token_ids", 0), None),
                                        (("completions", 0, "token_ids", 0), True)])
def test_a_body_that_only_parses_to_the_honest_one_is_rejected(fuzz, path, value):
    """Finding (seed 1029, `version_change['1']`): pydantic's lax mode parsed a signed
    `"policy_version": "1"` (or `1.0`, or a token id as a string) to the honest values and the
    submission was accepted: what was signed was not what was judged. The verifier now
    rejects a body that is not the canonical form of the submission it parses to."""
    case = fuzz["float32"][0]
    body = F.copy.deepcopy(case.body)
    where = body
    for p in path[:-1]:
        where = where[p]
    where[path[-1]] = value if value is not None else str(where[path[-1]])
    v = F.judge(case, body, probe_index=0)
    assert not v.accepted and v.reason
    assert {c.name for c in v.checks if not c.passed} <= F.CHECKS


def test_an_integer_where_a_float_goes_is_the_same_number(fuzz):
    """The one leniency of the canonical-form rule: JSON clients write 1 for 1.0 (a true
    reward claim written as integers is accepted, as the float one is)."""
    case = next(c for c in fuzz["float32"] if c.world.task_of(c.lease))
    body = F.copy.deepcopy(case.body)
    body["claimed_rewards"] = [int(F._reward(case.world, case.lease, c["token_ids"])) for c in body["completions"]]
    v = F.judge(case, body, probe_index=0)
    assert v.accepted, v.reason
