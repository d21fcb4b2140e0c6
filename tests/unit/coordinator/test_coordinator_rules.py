"""The coordinator's pure rules, called directly with explicit time and randomness."""

import base64
import random
from types import SimpleNamespace

import pytest

from coordinator.errors import Conflict, Forbidden, Gone, Invalid
from coordinator.rules.advantages import group_advantages
from coordinator.rules.intake import check_completions, check_lease, content_hash
from coordinator.rules.leasing import ReturnedTask, draw_seeds, leases_to_issue, new_id, pick_returned, split_held
from coordinator.rules.limits import RateLimiter
from coordinator.rules.reputation import check_rate, full_check
from protocol.messages import Completion, EngineInfo, Lease, SamplingParams, Submission
from protocol.pow import leading_zero_bits, pow_ok, solve_pow
from protocol.window import allowed_versions, window_floor


# -- reputation -----------------------------------------------------------------------------
def test_check_rate_starts_full_halves_with_clean_checks_and_stops_at_the_floor():
    rate = lambda n: check_rate(n, initial=1.0, floor=0.1, halve_every=20)
    assert rate(0) == 1.0 and rate(19) == 1.0
    assert rate(20) == 0.5 and rate(40) == 0.25 and rate(60) == 0.125
    assert rate(80) == 0.1 and rate(10_000) == 0.1


def test_full_check_draw_is_a_threshold_on_the_uniform_draw():
    assert full_check(1.0, 0.999) and not full_check(0.25, 0.25) and full_check(0.25, 0.2499)
    draws = [full_check(0.3, random.Random(i).random()) for i in range(2000)]
    assert 0.25 < sum(draws) / len(draws) < 0.35


# -- advantages -----------------------------------------------------------------------------
def test_group_advantages_are_zero_mean_unit_std_and_zero_for_flat_groups():
    adv = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert adv == [1.0, -1.0, -1.0, 1.0]
    adv = group_advantages([1.0, 0.0, 0.0, 0.0])
    assert adv[0] == pytest.approx(3 / 3**0.5) and adv[1] == pytest.approx(-1 / 3**0.5)
    assert group_advantages([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    assert group_advantages([]) == []
    assert group_advantages([1.0, 0.0, 0.0, 0.0], scale=False) == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_advantages([1.0, 1.0], scale=False) == [0.0, 0.0]


# -- leasing --------------------------------------------------------------------------------
def test_allowed_versions_follow_the_async_window():
    assert allowed_versions(0, 2) == (0, 0)
    assert allowed_versions(5, 2) == (3, 5)
    assert allowed_versions(5, 0) == (5, 5)
    assert window_floor(None, 2) == 0 and window_floor(1, 2) == 0 and window_floor(9, 2) == 7


def test_seeds_and_ids_come_from_the_given_rng():
    a, b = random.Random(7), random.Random(7)
    assert draw_seeds(a, 4) == draw_seeds(b, 4)
    assert new_id(a, "l-") == new_id(b, "l-") != new_id(b, "l-")
    assert all(0 <= s < 2**63 for s in draw_seeds(a, 100))


def test_lease_quota_bounds_what_a_request_gets():
    assert leases_to_issue(8, 0, 64) == 8
    assert leases_to_issue(8, 60, 64) == 4
    assert leases_to_issue(8, 64, 64) == 0
    assert leases_to_issue(8, 70, 64) == 0


def test_returned_tasks_go_to_other_workers_oldest_first():
    returned = [ReturnedTask(3, "A"), ReturnedTask(9, "B"), ReturnedTask(4, "A"), ReturnedTask(1, "C")]
    assert pick_returned(2, returned, "A") == [9, 1]
    assert pick_returned(10, returned, "B") == [3, 4, 1]
    assert pick_returned(1, returned, "Z") == [3]


# -- limits ---------------------------------------------------------------------------------
def test_token_bucket_allows_the_burst_then_the_rate():
    lim = RateLimiter(rate=2.0, burst=3)
    assert [lim.take("k", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("k", 100.0) == pytest.approx(0.5)
    assert lim.take("other", 100.0) == 0.0
    assert lim.take("k", 100.5) == 0.0
    assert lim.take("k", 100.5) > 0


def test_token_bucket_forgets_least_recent_keys_beyond_its_bound():
    lim = RateLimiter(rate=1.0, burst=1, max_keys=2)
    lim.take("a", 0.0), lim.take("b", 0.0), lim.take("c", 0.0)
    assert lim.take("a", 0.0) == 0.0  # 'a' was forgotten: a full bucket again
    assert lim.take("c", 0.0) > 0


# -- proof of work --------------------------------------------------------------------------
def test_proof_of_work_round_trip_and_refusals():
    nonce = solve_pow("chal", "ab" * 32, 8)
    assert pow_ok("chal", "ab" * 32, nonce, 8)
    assert not pow_ok("chal", "cd" * 32, nonce, 24)  # another key needs its own work
    assert not pow_ok("chal", "ab" * 32, None, 8)
    assert pow_ok("chal", "ab" * 32, None, 0)
    assert leading_zero_bits(b"\x00\x0f") == 12 and leading_zero_bits(b"\x80") == 0


# -- intake ----------------------------------------------------------------------------------
# The rule is protocol.conformance's (the verifier's too, tests/unit/verifier/test_verifier_checks.py);
# intake answers its first problem, with its reason.
EOS, H = 1, 16
LEASE = Lease(lease_id="l-1", run_id="r", worker_id="W", task_id="t", prompt_token_ids=[2], seeds=[1, 2],
              sampling=SamplingParams(temperature=1.0, max_tokens=4), eos_token_id=EOS, min_policy_version=3,
              max_policy_version=5, issued_at=0.0, expires_at=100.0)
STATE = SimpleNamespace(lease_id="l-1", worker_id="W", status="active", expires_at=100.0)


def _proof(n, hidden=H, **kw):
    import torch

    from protocol.proof import build_proof

    return base64.b64encode(build_proof(torch.randn(n, hidden), **kw)).decode()


def _sub(comps, version=4, dtype="float32"):
    return Submission(lease_id="l-1", policy_version=version, engine=EngineInfo(name="t", dtype=dtype),
                      completions=[Completion(token_ids=t, finish_reason=f, proof=p if p is not None else _proof(len(t)))
                                   for t, f, p in comps])


GOOD = [([5, 6, EOS], "eos", None), ([5, 6, 7, 8], "length", None)]


def test_a_good_submission_passes_and_counts_its_tokens():
    check_lease(STATE, "W", now=50.0)
    assert check_completions(_sub(GOOD), LEASE, "W", vocab_size=10, hidden_size=H) == 7


@pytest.mark.parametrize("state,signer,now,err,reason", [
    (STATE, "X", 50.0, Forbidden, "not_your_lease"),
    (SimpleNamespace(**{**vars(STATE), "status": "submitted"}), "W", 50.0, Conflict, "duplicate_submission"),
    (SimpleNamespace(**{**vars(STATE), "status": "expired"}), "W", 50.0, Gone, "lease_closed"),
    (STATE, "W", 100.5, Gone, "lease_expired"),
])
def test_lease_checks_refuse_with_a_reason(state, signer, now, err, reason):
    with pytest.raises(err) as e:
        check_lease(state, signer, now)
    assert e.value.reason == reason


@pytest.mark.parametrize("comps,version,reason", [
    (GOOD, 2, "wrong_version"),
    (GOOD, 6, "wrong_version"),
    (GOOD[:1], 4, "wrong_count"),
    ([([5, 6, 7, 8, EOS], "eos", None), GOOD[1]], 4, "too_long"),
    ([([5, 10, EOS], "eos", None), GOOD[1]], 4, "token_out_of_vocab"),
    ([([5, 6], "eos", None), GOOD[1]], 4, "bad_termination"),
    ([([EOS, 6, EOS], "eos", None), GOOD[1]], 4, "bad_termination"),
    ([([], "eos", None), GOOD[1]], 4, "bad_termination"),
    ([GOOD[0], ([5, 6, 7], "length", None)], 4, "bad_termination"),
    ([GOOD[0], ([5, EOS, 7, 8], "length", None)], 4, "bad_termination"),
    ([GOOD[0], ([5, 6, 7, 8], "length", "not base64!")], 4, "bad_proof"),
    ([GOOD[0], ([5, 6, 7, 8], "length", "")], 4, "bad_proof"),
    ([GOOD[0], ([5, 6, 7, 8], "length", base64.b64encode(b"\x01" * 10).decode())], 4, "bad_proof"),
    ([GOOD[0], ([5, 6, 7, 8], "length", base64.b64encode(b"\x01" * 2000).decode())], 4, "bad_proof"),
])
def test_completion_checks_refuse_with_a_reason(comps, version, reason):
    with pytest.raises(Invalid) as e:
        check_completions(_sub(comps, version), LEASE, "W", vocab_size=10, hidden_size=H)
    assert e.value.reason == reason


def test_a_dtype_the_lease_does_not_allow_is_refused_first():
    with pytest.raises(Invalid) as e:
        check_completions(_sub(GOOD, version=9, dtype="float16"), LEASE, "W", vocab_size=10)
    assert e.value.reason == "dtype_not_allowed" and "allows float32" in e.value.detail


@pytest.mark.parametrize("proof,words", [
    (_proof(3, hidden=H), "covers 3 tokens"),
    (_proof(4, topk=8), "top-k 8"),
    (_proof(4, hidden=8), "hidden size 8"),
    (base64.b64encode(b"\x00" * (2 * 258 + 16)).decode(), "does not decode"),
    (base64.b64encode(base64.b64decode(_proof(4))[:-1]).decode(), "does not decode"),
], ids=["short", "topk", "hidden", "zeros", "truncated"])  # proofs hold random bytes: not an id
def test_proofs_must_decode_to_the_completion_with_the_protocols_layout(proof, words):
    with pytest.raises(Invalid) as e:
        check_completions(_sub([GOOD[0], ([5, 6, 7, 8], "length", proof)]), LEASE, "W", vocab_size=10, hidden_size=H)
    assert e.value.reason == "bad_proof" and words in e.value.detail


def test_content_hash_depends_on_tokens_proofs_and_finish_reasons():
    c = Completion(token_ids=[1, 2], proof="AA==", finish_reason="eos")
    h = content_hash([c])
    assert h == content_hash([c.model_copy()])
    assert h != content_hash([c.model_copy(update={"token_ids": [1, 3]})])
    assert h != content_hash([c.model_copy(update={"token_ids": [1, 2, 0]})])
    assert h != content_hash([c.model_copy(update={"proof": "AB=="})])
    assert h != content_hash([c.model_copy(update={"finish_reason": "length"})])
    assert h != content_hash([c, c])
    assert content_hash([c.model_copy(update={"token_ids": [1]}), c]) != content_hash([c.model_copy(update={"token_ids": [1, 1]}), c.model_copy(update={"token_ids": [2]})])


def test_taskbook_decodes_exactly_like_the_verifier(tiny_model):
    from coordinator.taskbook import TaskBook
    from protocol.lm import decode_completion

    book = TaskBook.load(str(tiny_model), "arithmetic", 0, {})
    rng = random.Random(0)
    seqs = [[rng.randrange(book.vocab_size) for _ in range(rng.randrange(0, 40))] for _ in range(50)]
    assert book.decode(seqs) == [decode_completion(book.tokenizer, s) for s in seqs]


def test_coordinator_signs_over_exactly_the_protocol_bytes():
    from protocol.canonical import canonical_bytes
    from protocol.envelope import envelope_signing_bytes, seal
    from protocol.identity import KeyPair
    from protocol.messages import Heartbeat

    key = KeyPair.generate()
    rng = random.Random(1)
    for i in range(50):
        env = seal("heartbeat", Heartbeat(tokens_per_s=rng.random() * 10 ** rng.randint(-5, 9), status="é∑" * (i % 3)),
                   key, now=rng.uniform(0, 2e9), run_id=rng.choice(["r", "run-1", "Z.z:9"]),
                   audience=rng.choice(["coordinator", "worker", "swarm", "a", "zz"]))
        body = {"x": [rng.random(), None, True, "ü", {"b": 1, "a": [1.5e300, -0.0]}], "n": i}
        env = env.model_copy(update={"body": body})
        assert env.signing_bytes_with(canonical_bytes(env.body)) == envelope_signing_bytes(
            env.kind, env.body, env.signer, env.timestamp, env.nonce, run_id=env.run_id, audience=env.audience)


def test_poisson_tail_on_hand_checked_numbers():
    import math

    from coordinator.rules.near_ties import poisson_tail

    assert poisson_tail(0, 3.0) == 1.0 and poisson_tail(1, 0.0) == 0.0
    assert poisson_tail(3, 1.0) == pytest.approx(1 - math.exp(-1) * 2.5, rel=1e-12)       # 0.0803
    assert poisson_tail(1, 2.0) == pytest.approx(1 - math.exp(-2), rel=1e-12)
    assert poisson_tail(10, 0.5) == pytest.approx(sum(math.exp(-0.5) * 0.5**i / math.factorial(i)
                                                      for i in range(10, 40)), rel=1e-9)
    assert 0 < poisson_tail(400, 10.0) < 1e-300 or poisson_tail(400, 10.0) == 0.0  # far tail: no overflow


def test_near_tie_test_bans_a_five_percent_rate_and_spares_honest_noise():
    from coordinator.rules.near_ties import implausible

    kw = dict(honest_rate=0.005, alpha=1e-6)
    assert not implausible(0, 10_000, **kw) and not implausible(3, 0, **kw)
    assert not implausible(5, 1000, **kw)          # 0.5%: exactly the honest rate
    assert not implausible(3, 100, **kw)           # P(Poisson(0.5) >= 3) = 0.014
    assert implausible(10, 200, **kw)              # 5% over 200 tokens: P ~ 1e-7
    assert implausible(60, 4000, **kw)             # 1.5% over 4,000: P ~ 1e-15
    assert not implausible(30, 4000, **kw)         # 0.75%: P ~ 0.08


def test_a_worker_is_not_leased_a_task_it_holds_nor_one_task_twice():
    assert split_held([(10, "t0"), (11, "t1"), (12, "t2"), (13, "t0")], {"t1"}) == ([10, 12], [11, 13])
    assert split_held([], {"t1"}) == ([], [])
