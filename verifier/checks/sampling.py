"""The sampling check: every chosen token is the seeded Gumbel-max choice of the claimed model.

Workers must pick token t of sample s as argmax_v(logits[t, v] / temperature + G(seed_s, t, v))
(`protocol.sampling`). The verifier regenerates G from the lease's seeds and its own prefill
logits, and measures each chosen token's shortfall ("gap"): the best perturbed score minus
the chosen token's. An honest worker has gap 0, except where numeric noise between its
engine and the verifier's prefill flips a near-tie; such flips are tiny, so a gap up to
`tolerance` (logit/temperature units) is allowed. Another temperature, greedy decoding,
re-sampling until correct (cherry-picking) or edited tokens produce gaps of order 1.

Low-precision prefills: bf16 logits are rounded to 8 significant bits, so a logit of 10 sits
on a grid of 0.0625, and a worker on other hardware (a GPU's bf16 kernels against the
verifier's CPU) may land one step off on either of two near-tied logits. `rounding` (the
thresholds' `sampling_rel_tolerance`) discounts that: the gap reported and judged is the
shortfall beyond `rounding` x the larger magnitude of the two logits (per temperature). It is
0 for fp32 prefills, whose logits agree to far below the absolute tolerance.
"""

from __future__ import annotations

import torch

from protocol.messages import CheckResult
from protocol.sampling import gumbel_noise_rows, perturbed_scores
from verifier.checks import first_failures, result
from verifier.job import OpenedJob

NAME = "sampling"


def sampling_gaps(logits: torch.Tensor, tokens: list[int], seed: int, temperature: float) -> torch.Tensor:
    """Shortfall (T,) of each chosen token's perturbed score below the best at its position."""
    T = len(tokens)
    if T == 0:
        return torch.zeros(0)
    pos = torch.arange(T, dtype=torch.int64, device=logits.device)
    scores = perturbed_scores(logits[:T], temperature, seed, pos)
    chosen = scores.gather(1, torch.tensor(tokens, dtype=torch.int64, device=scores.device)[:, None])[:, 0]
    return (scores.max(dim=1).values - chosen).clamp(min=0).to("cpu", torch.float64)


def sampling_gaps_batch(logits: list[torch.Tensor], tokens: list[list[int]], seeds: list[int],
                        temperature: float, *, rounding: float = 0.0) -> list[torch.Tensor]:
    """`sampling_gaps` of every completion of a submission with one noise computation (the
    same values: `gumbel_noise_rows` row i is `gumbel_noise(seed_i, position_i)`)."""
    return sampling_gaps_and_ties(logits, tokens, seeds, temperature, rounding=rounding)[0]


def sampling_gaps_and_ties(logits: list[torch.Tensor], tokens: list[list[int]], seeds: list[int],
                           temperature: float, *, rounding: float = 0.0) -> tuple[list[torch.Tensor], list[int]]:
    """(`sampling_gaps_batch`, per completion the number of tokens that were not the
    verifier's perturbed argmax at all, however small their shortfall: the near-ties that
    the tolerances let through, counted so that a worker's rate of them can be watched)."""
    lens = [len(t) for t in tokens]
    if not any(lens):
        return [torch.zeros(0, dtype=torch.float64) for _ in tokens], [0] * len(tokens)
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    lg = torch.cat([x[:n].float() for x, n in zip(logits, lens)])
    pos = torch.cat([torch.arange(n, dtype=torch.int64) for n in lens]).to(lg.device)
    flat_seeds = [s for s, n in zip(seeds, lens) for _ in range(n)]
    scores = lg / temperature + gumbel_noise_rows(flat_seeds, pos, lg.shape[-1])
    chosen_ids = torch.tensor([t for toks in tokens for t in toks], dtype=torch.int64, device=lg.device)
    chosen = scores.gather(1, chosen_ids[:, None])[:, 0]
    best_score, best_ids = scores.max(dim=1)
    gaps = best_score - chosen
    ties = [int(t.sum()) for t in torch.split((gaps > 0).to("cpu"), lens)]
    if rounding:
        pair = torch.stack([lg.gather(1, best_ids[:, None])[:, 0], lg.gather(1, chosen_ids[:, None])[:, 0]])
        gaps = gaps - rounding * pair.abs().max(dim=0).values / temperature
    gaps = gaps.clamp(min=0).to("cpu", torch.float64)
    return list(torch.split(gaps, lens)), ties


def check_sampling(oj: OpenedJob, gaps: list[torch.Tensor], *, tolerance: float,
                   ties: list[int] | None = None) -> CheckResult:
    """`ties`: `sampling_gaps_and_ties`'s count per completion of tokens off the argmax."""
    problems: list[str] = []
    worst, not_argmax, over, positions = 0.0, 0, 0, 0
    per_completion = []
    for i, g in enumerate(gaps):
        positions += int(g.numel())
        gmax = float(g.max()) if g.numel() else 0.0
        per_completion.append(round(gmax, 6))
        worst = gmax if gmax != gmax else max(worst, gmax)  # NaN stays (and fails below)
        not_argmax += int((~(g <= 0)).sum())
        bad = (~(g <= tolerance)).nonzero().flatten().tolist()  # NaN fails
        over += len(bad)
        if bad:
            problems.append(f"completion {i}: token {bad[0]} was not the seeded sample "
                            f"(shortfall {float(g[bad[0]]):.3f} > {tolerance}; {len(bad)} such tokens)")
    if ties is not None:
        not_argmax = sum(ties)
    stats = {"positions": positions, "not_argmax": not_argmax, "over_tolerance": over,
             "worst_gap": round(worst, 6), "tolerance": tolerance, "per_completion_worst": per_completion}
    return result(NAME, not problems, stats, first_failures(problems))
