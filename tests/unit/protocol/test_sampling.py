"""Seeded Gumbel-max noise: reproducible, batch-layout independent, well distributed."""

import torch

from protocol.sampling import gumbel_noise, hash32, perturbed_scores, sample_tokens


def test_hash32_matches_reference_lowbias32():
    def ref(x):
        x &= 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 12345, 0xFFFFFFFF, 0x80000000, 987654321]
    assert hash32(torch.tensor(xs, dtype=torch.int64)).tolist() == [ref(x) for x in xs]


def test_noise_depends_only_on_seed_position_and_token():
    a = gumbel_noise(7, torch.tensor([0, 1, 2, 3]), 50)
    b = gumbel_noise(7, torch.tensor([2]), 50)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(gumbel_noise(8, torch.tensor([2]), 50), b)
    assert not torch.equal(a[1], a[2])


def test_noise_is_standard_gumbel():
    g = gumbel_noise(3, torch.arange(400), 500)
    assert abs(g.mean().item() - 0.5772) < 0.02
    assert abs(g.std().item() - 1.2825) < 0.02


def test_batched_sampling_equals_one_at_a_time_and_follows_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    seeds = [11, 22, 33]
    batch = sample_tokens(logits, 0.7, seeds, position=4)
    for i, s in enumerate(seeds):
        assert batch[i] == sample_tokens(logits[i : i + 1], 0.7, [s], position=4)[0]
    # Over many seeds the empirical distribution approaches softmax(logits / T).
    row = logits[0:1]
    counts = torch.zeros(20)
    for s in range(3000):
        counts[perturbed_scores(row, 0.7, s, torch.tensor([0])).argmax()] += 1
    expected = torch.softmax(row[0] / 0.7, dim=-1)
    assert (counts / 3000 - expected).abs().max() < 0.03
