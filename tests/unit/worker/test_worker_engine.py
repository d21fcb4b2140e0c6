"""The transformers engine follows the protocol's sampling rule and returns the hidden states
the verifier's prefill recomputes, whatever the batch layout."""

import torch

from protocol.lm import completion_outputs, load_model
from protocol.proof import build_proof, verify_proof
from protocol.sampling import perturbed_scores
from worker.engines.base import GenerationRequest
from worker.engines.transformers_engine import TransformersEngine


def _engine(path):
    e = TransformersEngine(device="cpu", dtype="float32")
    e.load(path, 0)
    return e


def test_every_token_is_the_seeded_gumbel_argmax_of_the_prefill_logits(tiny_model):
    e = _engine(tiny_model)
    reqs = [GenerationRequest([5, 6, 7, 8][: 2 + i % 3], seed=100 + i, temperature=[1.0, 0.7, 1.5][i % 3],
                              max_tokens=12, eos_token_id=1) for i in range(6)]
    results = e.generate(reqs)
    model = load_model(str(tiny_model))
    for r, res in zip(reqs, results):
        assert 1 <= len(res.token_ids) <= r.max_tokens
        assert res.finish_reason == ("eos" if res.token_ids[-1] == 1 else "length")
        if res.finish_reason == "length":
            assert len(res.token_ids) == r.max_tokens
        assert 1 not in res.token_ids[:-1]
        [(hidden, logits)] = completion_outputs(model, r.prompt_ids, [res.token_ids])
        pos = torch.arange(len(res.token_ids))
        chosen = perturbed_scores(logits, r.temperature, r.seed, pos).argmax(-1)
        assert chosen.tolist() == res.token_ids
        assert res.hidden.shape == hidden.shape
        assert torch.allclose(res.hidden, hidden, atol=1e-4)
        assert all(st.exp_mismatches <= 4 for st in verify_proof(hidden, build_proof(res.hidden)))


def test_batch_layout_does_not_change_the_tokens(tiny_model):
    e = _engine(tiny_model)
    reqs = [GenerationRequest([5, 6, 7][: 1 + i % 3], seed=7 + i, temperature=1.0, max_tokens=10, eos_token_id=1)
            for i in range(5)]
    together = e.generate(reqs)
    alone = [e.generate([r])[0] for r in reqs]
    reversed_ = e.generate(reqs[::-1])[::-1]
    for a, b, c in zip(together, alone, reversed_):
        assert a.token_ids == b.token_ids == c.token_ids
        assert a.finish_reason == b.finish_reason == c.finish_reason


def test_a_new_version_is_loaded_in_place_and_changes_the_output(tiny_model, versions):
    e = _engine(versions.publish(0))
    module = e.model
    req = [GenerationRequest([5, 6], seed=3, temperature=1.0, max_tokens=16, eos_token_id=10**6)]
    before = e.generate(req)[0]
    e.load(versions.publish(1), 1)
    assert e.model is module and e.version == 1          # same module, new weights
    after = e.generate(req)[0]
    assert not torch.equal(before.hidden, after.hidden)


def test_batched_noise_and_sampling_equal_the_one_sample_rule():
    from protocol.sampling import gumbel_noise, gumbel_noise_rows, sample_rows

    seeds = [0, 1, 2**62 + 12345, 987654321987, 2**63 - 1]
    pos = torch.tensor([0, 5, 17, 3, 1000])
    rows = gumbel_noise_rows(seeds, pos, 300)
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    temps = torch.tensor([1.0, 0.7, 1.3, 1.0, 2.0])
    got = sample_rows(logits, temps, seeds, pos)
    for i, s in enumerate(seeds):
        assert torch.equal(rows[i], gumbel_noise(s, pos[i: i + 1], 300)[0])
        assert int(got[i]) == int(perturbed_scores(logits[i: i + 1], float(temps[i]), s, pos[i: i + 1]).argmax(-1)[0])


def test_any_eos_id_of_the_lease_ends_a_completion(tiny_model):
    """With a second EOS id (a lease's `eos_token_ids`), a row stops at the first token that is
    any of them, and the others keep going: the same rows as one unbounded run, cut there."""
    e = _engine(tiny_model)
    free = [GenerationRequest([5, 6, 7][: 1 + i % 3], seed=40 + i, temperature=1.5, max_tokens=16,
                              eos_token_id=10**6) for i in range(8)]
    runs = [r.token_ids for r in e.generate(free)]
    second = next(t for run in runs for t in run[1:])  # a token some row samples after its first
    reqs = [GenerationRequest(r.prompt_ids, seed=r.seed, temperature=r.temperature, max_tokens=16,
                              eos_token_id=10**6, eos_token_ids=(10**6, second)) for r in free]
    for run, res in zip(runs, e.generate(reqs)):
        cut = run.index(second) + 1 if second in run else len(run)
        assert res.token_ids == run[:cut]
        assert res.finish_reason == ("eos" if second in run else "length")
