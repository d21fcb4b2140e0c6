"""The chunked sampling check computes exactly what the one-tensor version did (frozen below):
bit for bit gaps and tie counts, on random inputs, across position and vocabulary chunks."""

import pytest
import torch

from protocol import sampling as protocol_sampling
from protocol.sampling import gumbel_noise, gumbel_noise_at, gumbel_noise_rows
from verifier.checks import sampling
from verifier.checks.sampling import sampling_gaps, sampling_gaps_and_ties, score_completion


def reference_gaps_and_ties(logits, tokens, seeds, temperature, rounding=0.0):
    """`sampling_gaps_and_ties` as it was before chunking: the whole (positions, vocab) noise at once."""
    lens = [len(t) for t in tokens]
    lg = torch.cat([x[:n].float() for x, n in zip(logits, lens)])
    rows = []
    for s, n in zip(seeds, lens):
        rows.append(gumbel_noise(s, torch.arange(n), lg.shape[-1]))  # the plain int64 definition
    scores = lg / temperature + torch.cat(rows)
    chosen_ids = torch.tensor([t for toks in tokens for t in toks], dtype=torch.int64)
    chosen = scores.gather(1, chosen_ids[:, None])[:, 0]
    best_score, best_ids = scores.max(dim=1)
    gaps = best_score - chosen
    ties = [int(t.sum()) for t in torch.split(gaps > 0, lens)]
    if rounding:
        pair = torch.stack([lg.gather(1, best_ids[:, None])[:, 0], lg.gather(1, chosen_ids[:, None])[:, 0]])
        gaps = gaps - rounding * pair.abs().max(dim=0).values / temperature
    return list(torch.split(gaps.clamp(min=0).to(torch.float64), lens)), ties


def test_fast_noise_equals_the_reference_definition_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    seeds = [int(x) for x in torch.randint(0, 2**62, (40,), generator=g)] + [0, 2**63 - 1]
    pos = torch.randint(0, 1 << 20, (len(seeds),), generator=g)
    rows = gumbel_noise_rows(seeds, pos, 3001)
    sliced = gumbel_noise_rows(seeds, pos, 3001, vocab_start=1000, vocab_end=2100)
    toks = torch.randint(0, 3001, (len(seeds),), generator=g)
    at = gumbel_noise_at(seeds, pos, toks)
    for i, s in enumerate(seeds):
        ref = gumbel_noise(s, pos[i:i + 1], 3001)[0]
        assert torch.equal(rows[i], ref)
        assert torch.equal(sliced[i], ref[1000:2100])
        assert torch.equal(at[i], ref[toks[i]])


@pytest.mark.parametrize("path", ["fused", "tensor"])  # the CPU kernel (protocol.sampling_fused) or tensor slices
@pytest.mark.parametrize("rounding", [0.0, 0.004])
@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0])  # flat, spread and peaked logits: pruning from none to most
def test_chunked_gaps_and_ties_equal_the_one_tensor_version(monkeypatch, rounding, scale, path):
    monkeypatch.setattr(protocol_sampling, "FUSED_MIN_VOCAB", 1 if path == "fused" else 1 << 40)
    monkeypatch.setattr(sampling, "POSITION_CHUNK", 7)  # many position and vocabulary chunks
    monkeypatch.setattr(sampling, "VOCAB_CELLS", 7 * 50)
    g = torch.Generator().manual_seed(2)
    V, seeds, temp = 997, [5, 2**40 + 3, 77], 0.7
    lens = [23, 1, 40]
    logits = [torch.randn(n + 2, V, generator=g) * scale for n in lens]
    logits[1] = logits[1].to(torch.bfloat16)  # low-precision logits are widened the same way
    tokens = []
    for lg, s, n in zip(logits, seeds, lens):  # mostly honest picks, some other tokens, some near-ties
        honest = (lg[:n].float() / temp + gumbel_noise(s, torch.arange(n), V)).argmax(-1)
        other = torch.randint(0, V, (n,), generator=g)
        tokens.append(torch.where(torch.rand(n, generator=g) < 0.6, honest, other).tolist())
    logits[2][5, :] = logits[2][5, 0]  # a row of exact ties
    gaps, ties = sampling_gaps_and_ties(logits, tokens, seeds, temp, rounding=rounding)
    ref_gaps, ref_ties = reference_gaps_and_ties(logits, tokens, seeds, temp, rounding)
    assert ties == ref_ties and 0 < sum(ties) < sum(lens)
    for a, b in zip(gaps, ref_gaps):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for lg, toks, s, b in zip(logits, tokens, seeds, ref_gaps):  # one at a time too
        if not rounding:
            assert torch.equal(sampling_gaps(lg, toks, s, temp), b)


def test_non_finite_logits_give_nan_gaps_as_before():
    V, temp = 64, 1.0
    lg = torch.randn(4, V)
    lg[1, 10] = float("nan")
    lg[2, 3] = float("inf")
    toks = [0, 1, 3, 5]
    gaps, ties = sampling_gaps_and_ties([lg], [toks], [9], temp)
    ref, ref_ties = reference_gaps_and_ties([lg], [toks], [9], temp)
    assert ties == ref_ties
    assert torch.equal(gaps[0].isnan(), ref[0].isnan()) and bool(gaps[0][1].isnan())
    keep = ~ref[0].isnan()
    assert torch.equal(gaps[0][keep], ref[0][keep])
    ps = score_completion(iter([(0, lg)]), toks, 9, temp)
    assert not ps.finite


def test_position_scores_from_the_prefill_must_match_the_lease():
    lg = torch.randn(3, 50)
    ps = score_completion(iter([(0, lg[:2]), (2, lg[2:])]), [1, 2, 3], 4, 0.9)
    gaps, ties = sampling_gaps_and_ties([ps], [[1, 2, 3]], [4], 0.9)
    assert torch.equal(gaps[0], reference_gaps_and_ties([lg], [[1, 2, 3]], [4], 0.9)[0][0])
    with pytest.raises(ValueError):
        sampling_gaps_and_ties([ps], [[1, 2, 3]], [5], 0.9)


def test_the_prefill_holds_one_chunk_of_logits_and_judges_as_full_logits_do(world, worker_key, monkeypatch):
    """The verifier's prefill runs the LM head on at most POSITION_CHUNK positions at a time,
    and its position scores give the same gaps as the whole (T, V) logits of the same model."""
    from protocol.lm import completion_outputs
    from tests.adversarial.harness import engine_for, honest_submissions
    from verifier.checks.sampling import PositionScores
    from verifier.job import open_job
    from verifier.prefill import prefill

    monkeypatch.setattr(sampling, "POSITION_CHUNK", 5)
    engine = engine_for(world.versions[1], 1)
    lease, env = world.lease(worker_key)
    sub = honest_submissions(engine, [lease], 1)[0]
    oj = open_job(world.job(env, sub, worker_key), world.coordinator.public)
    model = world.models.model(1, "float32")
    head = model.get_output_embeddings()
    rows = []
    hook = head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        out = prefill(model, oj)
    finally:
        hook.remove()
    lens = [len(c) for c in oj.completions]
    assert max(lens) > 5 and max(rows) == 5 and sum(rows) == sum(lens)
    assert all(isinstance(ps, PositionScores) for ps in out.logits) and not out.non_finite
    full = [lg for _, lg in completion_outputs(model, list(lease.prompt_token_ids), oj.completions)]
    seeds, temp = list(lease.seeds), lease.sampling.temperature
    got = sampling_gaps_and_ties(out.logits, oj.completions, seeds, temp, rounding=0.004)
    want = reference_gaps_and_ties(full, oj.completions, seeds, temp, 0.004)
    assert got[1] == want[1]
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # the same model; logits from other matmul shapes
