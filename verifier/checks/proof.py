"""The proof check: the worker's activation proofs match the verifier's own hidden states.

Per completion, the verifier's prefill hidden states (prompt + completion, claimed policy
version, in the dtype the worker computed in) are compared with the proof chunk by chunk
(`protocol.proof.verify_proof`). Three levels of limits (`verifier.thresholds`), and the
submission fails if any one fails:

- each chunk: the share of top-k values whose exponent differs, the mean or upper-median
  mantissa error of the others, the share of sign flips;
- each completion, pooled over its chunks (exponent share, mean mantissa error): every
  completion stands on its own, so one bad completion cannot hide among good ones;
- the whole submission, pooled over its distinct completions: tighter limits, because a
  small weight change moves every value a little, which one completion cannot tell from
  rounding noise but a group can. Pooling only adds power; it never rescues a completion.
  Copies of one completion (a peaked policy answers alike) are pooled once: their states
  are the same states, and counting one completion's rounding noise once per copy held it
  to a limit meant for independent values (an honest worker was banned for four copies of
  a 2-token completion). With fewer values than the limits were calibrated on
  (`group_min_values`) the pooled limits widen as 1/sqrt(values), up to a completion's.

Failing closed: a proof that does not decode fails with the decoder's reason; a claimed
value that is Inf or NaN never matches the verifier's (finite) value — it counts as an
exponent mismatch, and the count is reported (`claimed_non_finite`). Where the verifier's
value ranks in the top half of the chunk's top-k, a non-finite claim fails the chunk on its
own: any honest prover selected that index, so the value is the prover's. Elsewhere it cannot
be a rejection on its own, because the proof evaluated at an index the prover did not select
yields an arbitrary bit pattern, non-finite 2 times in 256 (measured: honest bf16 workers hit
it near the top-k boundary). Every limit is `within`, so a NaN statistic fails. Shares, not
counts, because a short last chunk compares fewer than top-k values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from protocol.errors import ProofError
from protocol.messages import CheckResult
from protocol.proof import ChunkStats, from_b64, verify_proof
from verifier.checks import first_failures, result, within
from verifier.job import OpenedJob
from verifier.thresholds import Thresholds

NAME = "proof"


def chunk_failure(s: ChunkStats, thr: Thresholds) -> str | None:
    """Why one chunk fails the limits, or None if it passes."""
    if s.k <= 0:  # every position was left out at the top-k boundary: nothing vouches for this chunk
        return f"nothing compared ({s.boundary_skipped} top-k positions at the boundary, every claim off)"
    if s.non_finite_top:
        return f"non-finite value claimed at {s.non_finite_top} of the verifier's top-{max(1, s.k // 2)} positions"
    if not within(s.exp_mismatches, thr.exp_mismatch_frac * s.k):
        return f"{s.exp_mismatches}/{s.k} exponents differ"
    if not within(s.mant_err_mean, thr.mant_err_mean):
        return f"mean mantissa error {s.mant_err_mean:.2f} > {thr.mant_err_mean}"
    if not within(s.mant_err_median, thr.mant_err_median):
        return f"median mantissa error {s.mant_err_median:.1f} > {thr.mant_err_median}"
    if not within(s.sign_mismatches, thr.sign_mismatch_frac * s.k):
        return f"{s.sign_mismatches}/{s.k} signs differ"
    return None


@dataclass
class Pool:
    """Values compared, exponent mismatches and the mantissa-error sum of a set of chunks."""

    compared: int = 0
    mismatched: int = 0
    mant_sum: float = 0.0
    chunks: list[ChunkStats] = field(default_factory=list)

    def add(self, s: ChunkStats) -> None:
        self.chunks.append(s)
        self.compared += s.k
        self.mismatched += s.exp_mismatches
        if s.exp_mismatches < s.k:
            self.mant_sum += s.mant_err_mean * (s.k - s.exp_mismatches)

    def merge(self, other: "Pool") -> None:
        self.compared += other.compared
        self.mismatched += other.mismatched
        self.mant_sum += other.mant_sum

    @property
    def exp_frac(self) -> float:
        return self.mismatched / self.compared if self.compared else 0.0

    @property
    def mant_mean(self) -> float:
        matched = self.compared - self.mismatched
        return self.mant_sum / matched if matched else (float("inf") if self.compared else 0.0)


def completion_pool(hidden: torch.Tensor, proof_b64: str, *, chunk_size: int, topk: int,
                    boundary_ulps: int = 0) -> Pool:
    """The pooled statistics of one completion's proof against `hidden` (ProofError if the
    proof does not decode or does not fit; `boundary_ulps`: `protocol.proof.verify_proof`)."""
    pool = Pool()
    for s in verify_proof(hidden, from_b64(proof_b64), chunk_size=chunk_size, topk=topk,
                          boundary_ulps=boundary_ulps):
        pool.add(s)
    return pool


def completion_failure(p: Pool, thr: Thresholds) -> str | None:
    if not within(p.exp_frac, thr.completion_exp_mismatch_frac):
        return f"{p.mismatched}/{p.compared} exponents differ over the completion (> {thr.completion_exp_mismatch_frac:.0%})"
    if not within(p.mant_mean, thr.completion_mant_err_mean):
        return f"mean mantissa error {p.mant_mean:.3f} over the completion > {thr.completion_mant_err_mean}"
    return None


def group_limits(values: int, thr: Thresholds) -> tuple[float, float]:
    """(exponent share, mean mantissa error) the pooled submission is held to when it compares
    `values` values of distinct completions: the set limits from `thr.group_min_values` on,
    wider by sqrt(group_min_values / values) below it (the pooled mean of n values spreads as
    1/sqrt(n); the limits were calibrated on groups of at least that many), never wider than
    one completion's limits."""
    widen = max(1.0, (thr.group_min_values / max(1, values)) ** 0.5)
    return (min(thr.group_exp_mismatch_frac * widen, max(thr.group_exp_mismatch_frac, thr.completion_exp_mismatch_frac)),
            min(thr.group_mant_err_mean * widen, max(thr.group_mant_err_mean, thr.completion_mant_err_mean)))


def group_failure(p: Pool, thr: Thresholds) -> str | None:
    exp_limit, mant_limit = group_limits(p.compared, thr)
    if not within(p.exp_frac, exp_limit):
        return f"{p.mismatched}/{p.compared} exponents differ over the submission (> {exp_limit:.1%})"
    if not within(p.mant_mean, mant_limit):
        return f"mean mantissa error {p.mant_mean:.3f} over the submission > {mant_limit:.3g}"
    return None


def _finite(x: float) -> float:
    return x if x < 1e18 else -1.0  # the reference's 2**64 ("no exponent matched") shown as -1


def check_proof(oj: OpenedJob, hidden: list[torch.Tensor], thr: Thresholds, *, chunk_size: int,
                topk: int) -> CheckResult:
    problems: list[str] = []
    group = Pool()
    failed_chunks = n_chunks = claimed_non_finite = top_non_finite = boundary_skipped = 0
    worst = {"exp_frac": 0.0, "mant_mean": 0.0, "mant_median": 0.0, "sign_frac": 0.0}
    per_completion: list[float | None] = []
    pooled: set[tuple[int, ...]] = set()  # token sequences whose proof is in `group`
    for i, (c, h) in enumerate(zip(oj.submission.completions, hidden)):
        try:
            pool = completion_pool(h, c.proof, chunk_size=chunk_size, topk=topk,
                                   boundary_ulps=thr.topk_boundary_ulps)
        except ProofError as exc:
            problems.append(f"completion {i}: {exc}")
            per_completion.append(None)
            continue
        n_chunks += len(pool.chunks)
        claimed_non_finite += sum(s.non_finite for s in pool.chunks)
        top_non_finite += sum(s.non_finite_top for s in pool.chunks)
        boundary_skipped += sum(s.boundary_skipped for s in pool.chunks)
        for j, s in enumerate(pool.chunks):
            if s.k:
                worst["exp_frac"] = max(worst["exp_frac"], s.exp_mismatches / s.k)
                worst["sign_frac"] = max(worst["sign_frac"], s.sign_mismatches / s.k)
            if s.exp_mismatches < s.k:
                worst["mant_mean"] = max(worst["mant_mean"], s.mant_err_mean)
                worst["mant_median"] = max(worst["mant_median"], s.mant_err_median)
            why = chunk_failure(s, thr)
            if why:
                failed_chunks += 1
                problems.append(f"completion {i} chunk {j}: {why}")
        why = completion_failure(pool, thr)
        if why:
            problems.append(f"completion {i}: {why}")
        per_completion.append(round(_finite(pool.mant_mean), 4))
        if tuple(c.token_ids) not in pooled:  # a copy's states are the same states: no new evidence
            pooled.add(tuple(c.token_ids))
            group.merge(pool)
    if group.compared:
        why = group_failure(group, thr)
        if why:
            problems.append(why)
    stats_out = {"chunks": n_chunks, "failed_chunks": failed_chunks, "claimed_non_finite": claimed_non_finite,
                 "claimed_non_finite_top": top_non_finite,
                 "values": group.compared, "boundary_skipped": boundary_skipped, "group_exp_frac": round(group.exp_frac, 5),
                 "group_mant_mean": round(_finite(group.mant_mean), 4),
                 **{f"worst_{k}": round(_finite(v), 4) for k, v in worst.items()},
                 "per_completion_mant_mean": per_completion}
    return result(NAME, not problems, stats_out, first_failures(problems))

