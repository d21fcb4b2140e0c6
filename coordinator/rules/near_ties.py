"""The near-tie rate test: a worker whose tokens miss the seeded choice too often is banned.

Per token, the verifier's sampling check lets a chosen token trail the best Gumbel-perturbed
score by a little (numeric noise between the worker's engine and the verifier's prefill; for
bf16 also up to two rounding steps of the logits: `verifier.thresholds`). A cheater sampling
at another temperature, or with an older policy, can keep each single deviation inside that
allowance: then no one submission is wrong enough to reject. But it deviates far more often
than noise does. Every full check reports how many of the worker's tokens were not the
verifier's perturbed argmax (`sampling.not_argmax`) out of how many (`sampling.positions`);
the coordinator sums both per worker and bans the worker once its count is implausible for
an honest one:

    P(Poisson(honest_rate x positions) >= near_ties) < alpha.

A sum over the worker's whole life lets honesty be banked: after 1M honest positions a worker
switching to temperature 0.7 (~5% near ties) stayed under the test for ~119,000 fully checked
cheating positions (~1.2M tokens at a 0.1 check rate), each of its checks passing and releasing
its held groups. So a one-sided Bernoulli CUSUM runs beside it, as the proof-drift test does for
proofs (`score`, `banned_by_score`):

    score = max(0, score + ties x ln(r) + (positions - ties) x ln((1 - r p) / (1 - p)))
    ban when score >= ln(1 / alpha)

with p = honest_rate and r = CUSUM_RATIO: the log-likelihood ratio of "r times the honest
rate" against it, which forgets an honest past (its drift is negative at any rate below ~2.2 p)
and bans a worker that starts missing at 5% within ~250 positions of its change (one full check
of an 8 x 32-token group), whatever it banked before. Its false alarms: the chance to climb to
ln(1/alpha) from 0 is at most alpha per excursion at the honest rate (Wald), and far less at
the rates measured below.

Poisson is the binomial's conservative stand-in here (for small rates its upper tail is the
larger, so it bans no sooner). Honest rates measured (bench/verification.py, section 1, and
bench/cross_hardware.py): 0 for fp32 workers and for bf16 workers of the demo model; 0.16%
for 64-token completions of the untrained model in bf16; 0.06% for an H100 worker judged by
a CPU prefill. The default `honest_rate` (0.5%) sits 3x above the worst of them; a worker at
temperature 0.7 instead of 1 misses at ~5% (the bench's "banned after" column says how many
submissions it takes).
"""

from __future__ import annotations

import math


def poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean), accurate far into the tail (summed in log space)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    if k <= mean:  # the tail holds at least about half the mass: no need for precision here
        return 1.0 - sum(math.exp(i * math.log(mean) - mean - math.lgamma(i + 1)) for i in range(k))
    total, i = 0.0, k
    log_term = k * math.log(mean) - mean - math.lgamma(k + 1)
    while True:
        term = math.exp(log_term)
        total += term
        if term < total * 1e-16 or i > k + 100_000:
            return min(1.0, total)
        i += 1
        log_term += math.log(mean) - math.log(i)


def implausible(near_ties: int, positions: int, *, honest_rate: float, alpha: float) -> bool:
    """Whether `near_ties` misses in `positions` checked tokens are too many for an honest worker."""
    if near_ties <= 0 or positions <= 0:
        return False
    return poisson_tail(near_ties, honest_rate * positions) < alpha


CUSUM_RATIO = 4.0   # the rate (times honest_rate) the CUSUM tells from honest: near p's 0.5%, 2%


def score(previous: float, near_ties: int, positions: int, *, honest_rate: float) -> float:
    """The worker's near-tie CUSUM after one more full check (`near_ties` of `positions`)."""
    if positions <= 0:
        return previous
    p, r = honest_rate, CUSUM_RATIO
    if not 0 < r * p < 1:   # a configured rate so high that r x it is no rate: the CUSUM cannot tell
        return 0.0
    ties = min(max(0, near_ties), positions)
    step = ties * math.log(r) + (positions - ties) * math.log((1 - r * p) / (1 - p))
    return max(0.0, previous + step)


def banned_by_score(value: float, *, alpha: float) -> bool:
    return value >= math.log(1 / alpha)

