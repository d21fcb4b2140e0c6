"""The top-k boundary rule of the proof comparison (`protocol.proof.verify_proof(boundary_ulps=)`):
values one bf16 step apart can swap places across the k-th rank between an honest prover and
the verifier, and the proof read at a position its prover did not select is an arbitrary bit
pattern. The rule leaves such positions out, and only those."""

import torch

from protocol.proof import build_proof, to_b64, verify_proof
from protocol.proof.toploc import bf16_bits
from verifier.checks.proof import Pool, completion_failure, completion_pool, group_failure
from verifier.thresholds import FLOAT32


def hidden(T, H=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, H, generator=g)


def swapped_at_the_boundary(h: torch.Tensor, k: int = 128) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """`h` with the verifier's k-th and (k+1)-th largest |values| a bf16 step apart, and the
    prover's copy in which the (k+1)-th moved two steps up: fp32 noise across a rounding point
    of each, as another kernel's summation order gives. Returns (prover's h, a, b, verifier's h)."""
    flat = h.flatten().clone()
    mags = bf16_bits(flat.view(1, -1)).astype(int)[0] & 0x7FFF
    order = sorted(range(flat.numel()), key=lambda i: (-mags[i], i))
    a, b = order[k - 1], order[k]
    v = float(flat[a].abs())
    step = 2.0 ** (torch.tensor(v).log2().floor().item() - 7)  # one bf16 step at |v|
    flat[a] = torch.sign(flat[a]) * v
    flat[b] = torch.sign(flat[b]) * (v - step)
    prover = flat.clone()
    prover[b] = torch.sign(flat[b]) * (v + step)
    return prover.view_as(h), a, b, flat.view_as(h)


def test_a_swap_across_the_boundary_is_left_out_and_counted():
    h = hidden(2)  # a 2-token completion: top 128 of 256 values, the boundary where values are densest
    prover, a, b, verifier = swapped_at_the_boundary(h)
    blob = build_proof(prover)
    [ref] = verify_proof(verifier, blob)  # the reference's comparison reads garbage at position a
    assert ref.exp_mismatches + (ref.mant_err_mean > 0) >= 1 and ref.boundary_skipped == 0
    [s] = verify_proof(verifier, blob, boundary_ulps=2)
    assert (s.exp_mismatches, s.mant_err_mean, s.sign_mismatches, s.boundary_skipped, s.k) == (0, 0.0, 0, 1, 127)
    # the prover's own values pass untouched either way
    [own] = verify_proof(prover, blob, boundary_ulps=2)
    assert (own.exp_mismatches, own.mant_err_mean, own.boundary_skipped, own.k) == (0, 0.0, 0, 128)


def test_three_honest_swaps_no_longer_fail_a_float32_submission():
    """The false ban of an honest worker seen under load: 4 two-token completions, three with
    one boundary swap each, failed the pooled exponent share (3/512 > 0.5%)."""
    pools = {0: Pool(), 2: Pool()}
    for seed in range(4):
        h = hidden(2, seed=seed)
        prover, _, _, verifier = swapped_at_the_boundary(h) if seed else (h, 0, 0, h)
        proof = to_b64(build_proof(prover))
        for w, pool in pools.items():
            p = completion_pool(verifier, proof, chunk_size=32, topk=128, boundary_ulps=w)
            assert w == 0 or completion_failure(p, FLOAT32) is None
            pool.merge(p)
    # the reference's comparison: a false rejection by the pooled limit as set (512 values are
    # below group_min_values, where the limit now widens to 0.7% and would pass these 3)
    assert group_failure(pools[0], FLOAT32.model_copy(update={"group_min_values": 1})) is not None
    assert FLOAT32.topk_boundary_ulps == 2
    assert group_failure(pools[2], FLOAT32) is None and pools[2].mismatched == 0 and pools[2].compared == 509


def test_changed_values_are_still_caught_everywhere_but_the_boundary():
    h = hidden(64)
    blob = build_proof(h)
    # other values altogether: the band (2 steps above the k-th |value|, ~15 of 4,096 values at
    # |x| ~ 2) is all that is left out; the rest still fails on exponents alone
    far = verify_proof(hidden(64, seed=2), blob, boundary_ulps=2)
    assert all(s.exp_mismatches > 100 and s.boundary_skipped <= 20 for s in far)
    noisy = h * (1 + 0.03 * hidden(64, seed=3))  # 3% noise on every value: a changed computation
    ref = verify_proof(noisy, blob)
    new = verify_proof(noisy, blob, boundary_ulps=2)
    for r, s in zip(ref, new):
        assert s.boundary_skipped <= 12 and s.mant_err_mean > 1.0
        assert s.exp_mismatches >= r.exp_mismatches - s.boundary_skipped
    pool = completion_pool(noisy, to_b64(blob), chunk_size=32, topk=128, boundary_ulps=2)
    assert completion_failure(pool, FLOAT32) is not None


def test_a_chunk_with_every_value_selected_has_no_boundary():
    h = hidden(1)  # 128 values, top-128: every position is selected by any prover
    blob = build_proof(h)
    garbage = h.clone()
    i = int(h.abs().argmin())
    garbage.view(-1)[i] = 1e4  # the smallest value replaced: nothing to leave out
    [s] = verify_proof(garbage, blob, boundary_ulps=2)
    assert s.boundary_skipped == 0 and s.k == 128 and s.exp_mismatches == 1
