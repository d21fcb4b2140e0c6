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

Memory: the check never builds a position x vocabulary tensor for a whole completion. It
works on chunks of positions (`position_scores`, which the verifier's prefill calls on each
chunk of logits it computes, so no more than one chunk of logits exists at a time) and,
within a chunk, on slices of the vocabulary, keeping per position only the running best
score and its token. The results are bit for bit those of the one-tensor computation this
replaced: the same float32 operations per element, and a max over slices that keeps the
earliest token on ties and lets NaN win, as `torch.max` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.messages import CheckResult
from protocol.sampling import check_temperatures, fused_max_rows, gumbel_index_at, gumbel_index_rows, gumbel_noise_at, gumbel_table
from verifier.checks import first_failures, result
from verifier.job import OpenedJob

NAME = "sampling"
POSITION_CHUNK = 256  # positions whose logits are held at once
VOCAB_CELLS = 1 << 21  # positions x vocabulary entries of noise built at once
MARGIN = 1.0  # score units below a bound that float32 rounding cannot cross (for |scores| < 2**20)


@dataclass(frozen=True)
class PositionScores:
    """One completion's logits reduced to what this check reads, per position (float32, (T,)):
    `shortfall`, the best perturbed score minus the chosen token's, and `magnitude`, the
    larger |logit| of those two tokens; `finite`: every logit was finite. The prefill builds
    it chunk by chunk (`score_completion`) for the seed and temperature recorded here."""

    shortfall: torch.Tensor
    magnitude: torch.Tensor
    finite: bool
    seed: int
    temperature: float


def position_scores(logits: torch.Tensor, tokens: torch.Tensor, seeds: list[int], positions: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(shortfall, magnitude, all logits finite) of N positions: logits (N, V), chosen `tokens` (N,), one seed
    and completion position per row.

    On the CPU with finite logits the fused kernel finds each row's best perturbed score
    (`protocol.sampling.fused_max_rows`); otherwise tensor operations do, `VOCAB_CELLS` cells
    at a time. Only tokens that can reach the row's best score get their noise looked up and added. A
    lower bound of the best is known: the chosen token's score, the highest logit's, and the
    best of the slices done so far (the first slice is scored in full). A token below
    (bound - MARGIN) even with the largest noise there is (`gumbel_table()[-1]`) cannot reach
    it: with peaked logits that rules out most tokens by their logit alone. With flat logits
    a token whose noise is below (bound - MARGIN - highest logit/temperature) cannot either,
    and its noise's table index shows that without the lookup (G grows with the index). The
    best score and its earliest token come out the same as from all tokens. A chunk with a
    non-finite or huge value is scored in full."""
    n = logits.shape[0]
    dev = logits.device
    tokens, positions = tokens.to(dev, torch.int64), positions.to(dev, torch.int64)
    lg_chosen = logits.gather(1, tokens[:, None])[:, 0].float()
    chosen = lg_chosen / temperature + gumbel_noise_at(seeds, positions, tokens)
    fused = fused_max_rows(logits, torch.full((n,), temperature), seeds, positions, floor_tokens=tokens)
    if fused is not None:  # all logits finite
        best, best_ids = fused
        finite = True
    else:
        top_logit, top_ids = logits.max(dim=1)
        x_top = top_logit.float() / temperature
        bound = torch.maximum(chosen, x_top + gumbel_noise_at(seeds, positions, top_ids))
        finite = bool(torch.isfinite(top_logit).all()) and bool(torch.isfinite(logits.amin()))  # max, min carry NaN
        best, best_ids = _best_in_slices(logits, seeds, positions, temperature, bound, x_top, finite)
    lg_best = logits.gather(1, best_ids[:, None])[:, 0].float()
    return best - chosen, torch.stack([lg_best, lg_chosen]).abs().max(dim=0).values, finite


def _best_in_slices(logits: torch.Tensor, seeds: list[int], positions: torch.Tensor, temperature: float,
                    bound: torch.Tensor, x_top: torch.Tensor, finite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' best perturbed scores and earliest tokens with tensor operations, `VOCAB_CELLS`
    cells at a time, given a lower `bound` of the best and the highest logit / temperature."""
    n, vocab = logits.shape
    dev = logits.device
    table = gumbel_table(dev)
    prune = finite and bool((bound.abs() < 2**20).all() & (x_top.abs() < 2**20).all())
    g_max = float(table[-1])
    best = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
    best_ids = torch.zeros(n, dtype=torch.int64, device=dev)
    step = max(1, VOCAB_CELLS // max(n, 1))
    for a in range(0, vocab, step):
        b = min(vocab, a + step)
        rows = cols = index = None
        if prune and a > 0:  # the first slice, scored in full, raises the bound to near the best
            low = torch.maximum(bound, best) - MARGIN  # no token below this can reach the best
            mask = logits[:, a:b].float() / temperature >= (low - g_max)[:, None]  # peaked logits: few tokens
            if int(mask.sum()) * 8 < mask.numel():
                rows, cols = mask.nonzero(as_tuple=True)
                index = gumbel_index_at(seeds, positions, cols + a, rows)
            else:  # flat logits: only tokens with large noise
                full = gumbel_index_rows(seeds, positions, vocab, vocab_start=a, vocab_end=b)
                mask = full >= torch.searchsorted(table, (low - x_top).contiguous()).to(torch.int32)[:, None]
                if int(mask.sum()) * 8 < mask.numel():
                    rows, cols = mask.nonzero(as_tuple=True)
                    index = full[rows, cols]
                else:
                    index = full
        if rows is not None:
            s = logits[rows, cols + a].float() / temperature + table[index]
            m = torch.full((n,), float("-inf"), device=dev).scatter_reduce(0, rows, s, "amax")
            hit = s == m[rows]
            i = torch.full((n,), b - a, dtype=torch.int64, device=dev).scatter_reduce(0, rows[hit], cols[hit], "amin")
        else:
            scores = logits[:, a:b].float() / temperature
            scores += table[index if index is not None else
                            gumbel_index_rows(seeds, positions, vocab, vocab_start=a, vocab_end=b)]
            m, i = scores.max(dim=1)
        take = (m > best) | (m.isnan() & ~best.isnan())  # earlier slices win ties; NaN wins, as in torch.max
        best = torch.where(take, m, best)
        best_ids = torch.where(take, i + a, best_ids)
    return best, best_ids


def score_completion(logit_chunks, tokens: list[int], seed: int, temperature: float) -> PositionScores:
    """`PositionScores` of one completion from its logits given as (start, (n, V) logits)
    chunks in position order (a generator, so that only one chunk is held at a time)."""
    check_temperatures(temperature)
    short, mag, finite = [], [], True
    for start, lg in logit_chunks:
        n = min(lg.shape[0], len(tokens) - start)
        if n <= 0:
            continue
        s, m, ok = position_scores(lg[:n], torch.tensor(tokens[start:start + n]), [seed] * n,
                                   torch.arange(start, start + n), temperature)
        finite = finite and ok
        short.append(s.to("cpu"))
        mag.append(m.to("cpu"))
    empty = torch.zeros(0, dtype=torch.float32)
    return PositionScores(torch.cat(short) if short else empty, torch.cat(mag) if mag else empty,
                          finite, seed, temperature)


def _tensor_chunks(logits: torch.Tensor, T: int):
    for a in range(0, T, POSITION_CHUNK):
        yield a, logits[a:min(T, a + POSITION_CHUNK)]


def sampling_gaps(logits: torch.Tensor, tokens: list[int], seed: int, temperature: float) -> torch.Tensor:
    """Shortfall (T,) of each chosen token's perturbed score below the best at its position."""
    if len(tokens) == 0:
        return torch.zeros(0)
    return sampling_gaps_and_ties([logits], [tokens], [seed], temperature)[0][0]


def sampling_gaps_batch(logits: list[torch.Tensor], tokens: list[list[int]], seeds: list[int],
                        temperature: float, *, rounding: float = 0.0) -> list[torch.Tensor]:
    """`sampling_gaps` of every completion of a submission."""
    return sampling_gaps_and_ties(logits, tokens, seeds, temperature, rounding=rounding)[0]


def sampling_gaps_and_ties(logits: list[torch.Tensor | PositionScores], tokens: list[list[int]], seeds: list[int],
                           temperature: float, *, rounding: float = 0.0) -> tuple[list[torch.Tensor], list[int]]:
    """(`sampling_gaps_batch`, per completion the number of tokens that were not the
    verifier's perturbed argmax at all, however small their shortfall: the near-ties that
    the tolerances let through, counted so that a worker's rate of them can be watched).
    `logits[i]`: completion i's (T, V) logits, or their `PositionScores` from the prefill
    (which must have used seed `seeds[i]` and this temperature)."""
    lens = [len(t) for t in tokens]
    if not any(lens):
        return [torch.zeros(0, dtype=torch.float64) for _ in tokens], [0] * len(tokens)
    check_temperatures(temperature)
    gaps_out, ties = [], []
    for lg, toks, seed, n in zip(logits, tokens, seeds, lens):
        ps = lg if isinstance(lg, PositionScores) else score_completion(_tensor_chunks(lg, n), toks, seed, temperature)
        if ps.seed != seed or ps.temperature != temperature or ps.shortfall.numel() != n:
            raise ValueError("the prefill's position scores were computed for another seed, temperature or length")
        gaps = ps.shortfall
        ties.append(int((gaps > 0).sum()))
        if rounding:
            gaps = gaps - rounding * ps.magnitude / temperature
        gaps_out.append(gaps.clamp(min=0).to("cpu", torch.float64))
    return gaps_out, ties


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
