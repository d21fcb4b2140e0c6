"""The proof check: the worker's activation proofs match the verifier's own hidden states.

Per completion, the verifier's prefill hidden states (prompt + completion, claimed policy
version) are compared with the proof chunk by chunk (`protocol.proof.verify_proof`). A chunk
fails when any error measure passes its threshold (`verifier.thresholds`): the share of
top-k values whose exponent differs, the mean or upper-median mantissa error of the others,
or the share of sign flips. Shares, not counts, because a short last chunk compares fewer
than top-k values. Then the whole submission is pooled (every compared value of every
chunk): its exponent-mismatch share and mean mantissa error have their own, tighter limits,
because a small weight change moves every value a little, which one chunk cannot tell
from rounding noise but a group of chunks can. A proof that does not decode fails with the
decoder's reason.
"""

from __future__ import annotations

import torch

from protocol.errors import ProofError
from protocol.messages import CheckResult
from protocol.proof import ChunkStats, from_b64, verify_proof
from verifier.checks import first_failures, result
from verifier.job import OpenedJob
from verifier.thresholds import Thresholds

NAME = "proof"


def chunk_failure(s: ChunkStats, thr: Thresholds) -> str | None:
    """Why one chunk fails the thresholds, or None if it passes."""
    if s.exp_mismatches > thr.exp_mismatch_frac * s.k:
        return f"{s.exp_mismatches}/{s.k} exponents differ"
    if s.mant_err_mean > thr.mant_err_mean:
        return f"mean mantissa error {s.mant_err_mean:.2f} > {thr.mant_err_mean}"
    if s.mant_err_median > thr.mant_err_median:
        return f"median mantissa error {s.mant_err_median:.1f} > {thr.mant_err_median}"
    if s.sign_mismatches > thr.sign_mismatch_frac * s.k:
        return f"{s.sign_mismatches}/{s.k} signs differ"
    return None


def _finite(x: float) -> float:
    return x if x < 1e18 else -1.0  # the reference's 2**64 ("no exponent matched") shown as -1


def check_proof(oj: OpenedJob, hidden: list[torch.Tensor], thr: Thresholds, *, chunk_size: int,
                topk: int) -> CheckResult:
    problems: list[str] = []
    chunks = failed = 0
    compared = mismatched = 0
    mant_sum = 0.0
    worst = {"exp_frac": 0.0, "mant_mean": 0.0, "mant_median": 0.0, "sign_frac": 0.0}
    per_completion = []
    for i, (c, h) in enumerate(zip(oj.submission.completions, hidden)):
        try:
            stats = verify_proof(h, from_b64(c.proof), chunk_size=chunk_size, topk=topk)
        except ProofError as exc:
            problems.append(f"completion {i}: {exc}")
            per_completion.append(None)
            continue
        comp_worst = 0.0
        for j, s in enumerate(stats):
            chunks += 1
            compared += s.k
            mismatched += s.exp_mismatches
            if s.exp_mismatches < s.k:
                mant_sum += s.mant_err_mean * (s.k - s.exp_mismatches)
            frac = s.exp_mismatches / s.k
            comp_worst = max(comp_worst, frac)
            worst["exp_frac"] = max(worst["exp_frac"], frac)
            worst["sign_frac"] = max(worst["sign_frac"], s.sign_mismatches / s.k)
            if s.exp_mismatches < s.k:
                worst["mant_mean"] = max(worst["mant_mean"], s.mant_err_mean)
                worst["mant_median"] = max(worst["mant_median"], s.mant_err_median)
            why = chunk_failure(s, thr)
            if why:
                failed += 1
                problems.append(f"completion {i} chunk {j}: {why}")
        per_completion.append(round(comp_worst, 4))
    group_exp = mismatched / compared if compared else 0.0
    group_mant = mant_sum / (compared - mismatched) if compared > mismatched else 0.0
    if compared and not problems:
        if group_exp > thr.group_exp_mismatch_frac:
            problems.append(f"{mismatched}/{compared} exponents differ over the submission "
                            f"(> {thr.group_exp_mismatch_frac:.0%})")
        elif group_mant > thr.group_mant_err_mean:
            problems.append(f"mean mantissa error {group_mant:.3f} over the submission > {thr.group_mant_err_mean}")
    stats_out = {"chunks": chunks, "failed_chunks": failed, "group_exp_frac": round(group_exp, 5),
                 "group_mant_mean": round(group_mant, 4),
                 **{f"worst_{k}": round(_finite(v), 4) for k, v in worst.items()},
                 "per_completion_worst_exp_frac": per_completion}
    return result(NAME, not problems, stats_out, first_failures(problems))
