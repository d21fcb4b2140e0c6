"""The proof-drift test: a worker whose proofs keep landing a little off the policy is banned.

One full check judges one submission against limits wide enough for honest rounding noise
between engines (`verifier.thresholds`). A worker running a slightly different model (a
quantized copy, weights with a little noise, an older version) can stay under those limits
on every single submission, above all in bf16, where honest engines on different hardware
already differ by about half a mantissa step. But it stays above the honest level *on
average*, check after check. The coordinator therefore runs a one-sided CUSUM per worker
over the error of each of its full checks:

    error  = mean mantissa error of the submission's proof values, an exponent mismatch
             counting EXP_WEIGHT steps (from the verdict's proof statistics)
    score  = max(0, score + (error - allowance) / limit)        per full check, in the
                                                                dtype the verifier judged in
    ban when score >= 1

and a second one over the submission's *worst* completion (its mean mantissa error), so that
a worker slipping one bad completion into each group, which barely moves the pooled error,
still accumulates evidence check after check.

`allowance` sits above the error honest workers show on average (so their score keeps
returning to 0), `limit` is the excess it takes to ban: a cheat whose error averages `a`
above the allowance is banned after about limit / a full checks. Both are per dtype
(`coordinator.config.ProofDriftConfig`), calibrated by bench/verification.py, which also
prints how many full checks each attack survives.
"""

from __future__ import annotations

import math

EXP_WEIGHT = 8.0  # a differing exponent is off by at least a binade: count it as 8 mantissa steps


def check_error(stats: dict) -> float | None:
    """The drift statistic of one full check from its proof check's statistics, or None when
    they do not hold it (then the check does not move the score)."""
    try:
        mant = float(stats["group_mant_mean"])
        exp = float(stats["group_exp_frac"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(mant) and math.isfinite(exp)) or mant < 0 or not 0 <= exp <= 1:
        return None
    return mant * (1 - exp) + EXP_WEIGHT * exp


def worst_error(stats: dict) -> float | None:
    """The largest per-completion mean mantissa error of one full check (a completion with no
    matching exponent at all, recorded as -1, counts as 64 steps), or None."""
    per = stats.get("per_completion_mant_mean")
    if not isinstance(per, list) or not per:
        return None
    vals = []
    for x in per:
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
            return None
        vals.append(64.0 if x < 0 else float(x))
    return max(vals)


def update(score: float, error: float, *, allowance: float, limit: float) -> float:
    """The worker's score after one more full check with `error`."""
    return max(0.0, score + (error - allowance) / limit)


def banned(score: float) -> bool:
    return score >= 1.0 - 1e-9  # a sum of equal steps that should reach 1 may land a rounding error short
