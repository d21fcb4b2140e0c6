"""The fused CPU kernel (protocol.sampling_fused) picks what the tensor definition picks: the same
best perturbed score and the same earliest token, bit for bit, whatever the logits look like."""

import pytest
import torch

from protocol import sampling
from protocol.sampling import fused_max_rows, perturbed_max_rows, sample_tokens


def tensor_max_rows(logits, temps, seeds, positions):
    noise = torch.stack([sampling.gumbel_noise(s, p.reshape(1), logits.shape[-1])[0] for s, p in zip(seeds, positions)])
    return (logits.float() / temps[:, None] + noise).max(dim=1)


def rows_of(kind: str, n: int, vocab: int, g: torch.Generator) -> torch.Tensor:
    if kind == "flat":
        return torch.randn(n, vocab, generator=g) * 0.05
    if kind == "spread":
        return torch.randn(n, vocab, generator=g) * 3
    if kind == "peaked":
        return torch.randn(n, vocab, generator=g) * 40
    if kind == "ascending":  # the best block comes last: every earlier block is scored before it
        return torch.linspace(-5, 5, vocab).repeat(n, 1) + torch.randn(n, vocab, generator=g) * 0.01
    if kind == "ties":  # equal logits so large that the noise vanishes in float32: every token ties
        return torch.full((n, vocab), 2.0**30)
    if kind == "huge":  # beyond the pruning margin's range: scored without pruning
        return torch.randn(n, vocab, generator=g) * 2.0**22
    if kind == "bf16":
        return (torch.randn(n, vocab, generator=g) * 4).to(torch.bfloat16)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["flat", "spread", "peaked", "ascending", "ties", "huge", "bf16"])
@pytest.mark.parametrize("vocab", [4099, 20000])  # neither a multiple of the kernel's block
def test_the_fused_kernel_picks_what_the_tensor_definition_picks(kind, vocab):
    g = torch.Generator().manual_seed(vocab)
    n = 12
    logits = rows_of(kind, n, vocab, g)
    seeds = [int(x) for x in torch.randint(0, 2**62, (n,), generator=g)]
    positions = torch.randint(0, 5000, (n,), generator=g)
    temps = torch.tensor([0.3, 0.7, 1.0, 1.3] * (n // 4), dtype=torch.float32)
    ref_best, ref_ids = tensor_max_rows(logits, temps, seeds, positions)
    fused = fused_max_rows(logits, temps, seeds, positions)
    assert fused is not None, "the kernel should serve finite CPU logits of this vocabulary"
    assert torch.equal(fused[0], ref_best) and torch.equal(fused[1], ref_ids)
    if kind == "ties":
        assert fused[1].tolist() == [0] * n  # the earliest of equal scores, as torch.max
    # a floor token (the best one, or any other) changes nothing
    for toks in (ref_ids, torch.randint(0, vocab, (n,), generator=g)):
        again = fused_max_rows(logits, temps, seeds, positions, floor_tokens=toks)
        assert torch.equal(again[0], ref_best) and torch.equal(again[1], ref_ids)


def test_decoding_with_the_kernel_gives_the_tokens_of_the_plain_rule():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9000, generator=g) * 2
    seeds = [11, 12, 13, 14, 15, 16]
    temps = torch.full((6,), 0.8)
    tokens = sampling.sample_rows(logits, temps, seeds, torch.full((6,), 17))
    for i, s in enumerate(seeds):
        assert int(tokens[i]) == int(sample_tokens(logits[i:i + 1], 0.8, [s], 17)[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [7, 4999])  # in a whole block, in the last partial one
def test_a_non_finite_logit_anywhere_leaves_the_rows_to_the_tensor_path(bad, where):
    logits = torch.randn(3, 5000, generator=torch.Generator().manual_seed(4))
    logits[1, where] = bad
    assert fused_max_rows(logits, torch.ones(3), [1, 2, 3], torch.arange(3)) is None


def test_non_finite_logits_and_small_vocabularies_take_the_tensor_path():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5000, generator=g)
    logits[1, 7] = float("nan")
    temps = torch.ones(3)
    best, ids = perturbed_max_rows(logits, temps, [1, 2, 3], torch.arange(3))
    assert int(ids[1]) == 7 and best[1].isnan()  # NaN wins, as torch.max
    assert fused_max_rows(torch.randn(2, 100), torch.ones(2), [1, 2], torch.arange(2)) is None


def test_a_floor_token_outside_the_vocabulary_is_refused():
    logits = torch.zeros(2, 5000)
    with pytest.raises(ValueError, match="floor tokens"):
        fused_max_rows(logits, torch.ones(2), [1, 2], torch.arange(2), floor_tokens=torch.tensor([3, 5000]))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused_on_every_path(bad):
    from verifier.checks.sampling import score_completion

    logits = torch.randn(2, 5000, generator=torch.Generator().manual_seed(5))
    temps = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match="temperature"):
        fused_max_rows(logits, temps, [1, 2], torch.arange(2))
    with pytest.raises(ValueError, match="temperature"):
        perturbed_max_rows(logits[:, :100], temps, [1, 2], torch.arange(2))  # the tensor path
    with pytest.raises(ValueError, match="temperature"):
        score_completion(iter([(0, logits)]), [3, 4], 7, bad)
