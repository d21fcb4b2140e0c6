"""The verifier's decision limits, one set per compute dtype a run may allow, with the reasons
for their values and what each set can and cannot catch.

Collaborators: `verifier.checks` applies them; `verifier.judge.JudgeSettings.limits` maps each
calibrated dtype (`protocol.dtypes.VERIFIABLE`) to its set; `verifier.config` lets an operator
override them. Every limit is "fail unless provably within" (`verifier.checks.within`): a NaN
statistic fails. `python bench/verification.py` measures the honest and dishonest
distributions and prints each statistic's worst honest value next to its limit.

Calibration (bench/verification.py on this project's test models, CPU, December 2026;
fuller tables in its output and the issue notes):

- float32. Honest workers (batch 1/4/16, 1-2 threads, SDPA or eager attention, 8- and
  64-token completions; >9,000 full checks) stay at or below 0.0156 mantissa steps per chunk
  and per completion, 0.0078 pooled, exponent shares 0.0078 per chunk and 0.001 pooled: the
  limits sit 4-16x above. Every weight change in the red-team list (int8 per tensor and per
  channel, int4, fp8, noise of 0.3-10% of each tensor's std, one AdamW step at 1e-5, the
  previous version, one completion of 8 from changed weights) fails every single submission.
- bfloat16. Honest noise depends on whether the worker runs the verifier's kernels: the same
  kernels stay under 0.07 pooled and 0.25 per completion on the 8-token model, but longer
  sequences (64 tokens) reach 0.81 pooled and 3.2 in a chunk, and another attention kernel
  (eager vs the verifier's SDPA, the stand-in for other hardware) reaches 1.32 pooled, 3.79 in
  a completion and 5.5% differing exponents in a chunk. The limits (1.8 pooled, 5.0 per
  completion and chunk) are set for the second case, because a contributor's GPU rarely runs
  the verifier's kernels. So one bf16 check catches only large changes (int4, 10% noise,
  AdamW at 1e-4, another version, another model, edited tokens, any sampling change); smaller
  ones are left to the per-worker proof-drift test (`coordinator.rules.proof_drift`), whose bf16
  allowance must sit above every honest engine's level: another attention kernel averages 0.41
  (sd 0.14), 64-token completions ~0.5, and vLLM's own CPU kernels 0.61, which the first
  allowance (0.6) banned after 14 honest checks. At the allowance 0.9 it bans fp8 after ~4 full
  checks, 3% noise after 2, AdamW at 1e-5 after ~10, one completion of 8 from 10% noise after
  2-3 (replayed on the recorded checks: bench/verification_drift.py). It does not ban int8 per
  tensor (pooled error 0.75) or per channel (0.64), 0.3% or 1% noise (0.50, 0.84) or one
  completion of 8 from 3% noise within 20 full checks: in bf16 they look like an honest
  contributor on other hardware. A run that must catch them allows float32
  only (`allowed_dtypes`), where they fail every check.
- Declaring bfloat16 while computing in float32 buys wider limits only while the changed
  weights keep the proofs further from the verifier's float32 prefill than bf16 rounding does
  (`higher_precision_floor` 0.15; honest bf16 completions measured 0.30 and more, lowest on
  64-token completions: half that keeps an honest bf16 worker from being judged by the float32
  limits; a real model's deeper stack rounds more, not less): then a
  single check catches int8 0-5%, fp8 15%, 0.3-3% noise 0-75% and AdamW at 1e-5 0% of the
  time instead of 100%; int8 per tensor and 1% noise are then not banned within 20 full checks
  (as when computed in bf16), the others after 1-12 (rejections and drift) instead of 1.
- The top-k boundary (`topk_boundary_ulps`, 2 for both dtypes): positions where the verifier's
  |value| is within 2 bf16 steps of its k-th largest and the claim is further off are left
  out (an honest prover whose values differ by one step may not have selected them, and the
  proof read there is an arbitrary pattern). Measured on honest rollouts (tiny model,
  2/8/40-token completions): float32 had none in ~4,300 chunks in one process, but the
  hostile-swarm test banned an honest worker for them in 2 of ~13 runs; bf16 with another
  attention kernel: chunks with any differing exponent 74% -> 49% (2-token completions),
  82% -> 45% (8 tokens), 82% -> 31% (40 tokens). Wider bands than 2 steps removed almost nothing more. Changed
  values everywhere still fail: other values altogether leave ~110 of 128 differing.
- Non-finite values: a NaN/Inf in the verifier's prefill or in a statistic rejects; a
  non-finite value claimed in a proof at a top-ranked position rejects on its own
  (`verifier.checks.proof`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    """The limits of one compute dtype. Proof statistics are in units of bf16 mantissa steps
    (the proof stores bf16 bit patterns): "mantissa error" is |claimed - recomputed| of the 7
    mantissa bits of a value whose exponent matched; shares are of compared values."""

    # A limit is a finite number: an infinite one (TOML `inf`, or 1e400) would pass every value,
    # the "no exponent matched" 2**64 and an infinite shortfall included.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # one proof chunk (32 tokens x hidden size, its top-128 values)
    topk_boundary_ulps: int = Field(
        2, ge=0, le=64,
        description="positions whose |value| is within this many bf16 steps of the verifier's k-th largest, "
                    "and whose claim is far off, are left out of every statistic: an honest prover whose "
                    "values differ by half this may not have selected them (0 = compare every position, "
                    "as the reference does)")
    exp_mismatch_frac: float = Field(
        0.03, ge=0, le=1,
        description="a proof chunk fails when more than this share of its top-k values has a different "
                    "exponent (the reference uses 38/128 = 0.30, for mixed GPUs)")
    mant_err_mean: float = Field(
        0.25, ge=0, description="a chunk fails when the mean mantissa error of its exponent-matched values exceeds "
                                "this (reference: 10)")
    mant_err_median: float = Field(
        1.0, ge=0, description="... or their upper median exceeds this (reference: 8)")
    sign_mismatch_frac: float = Field(
        0.02, ge=0, le=1, description="... or more than this share of exponent-matched values has the other sign "
                                      "(the reference does not look at signs)")
    # one completion (all its chunks): every completion stands on its own
    completion_exp_mismatch_frac: float = Field(
        0.02, ge=0, le=1, description="a completion fails when more than this share of all its compared values "
                                      "has a different exponent")
    completion_mant_err_mean: float = Field(
        0.1, ge=0, description="... or when the mean mantissa error over all its exponent-matched values exceeds "
                               "this")
    # the whole submission (every completion pooled): adds power, never hides a completion
    group_exp_mismatch_frac: float = Field(
        0.005, ge=0, le=1, description="the submission fails when more than this share of all compared values (every "
                                       "chunk of every completion) has a different exponent")
    group_mant_err_mean: float = Field(
        0.03, ge=0, description="... or when the mean mantissa error over all its exponent-matched values exceeds "
                                "this: pooling separates small weight changes from rounding noise far better "
                                "than one completion can")
    group_min_values: int = Field(
        1024, ge=1, description="the submission's pooled limits hold as set from this many compared values of "
                                "distinct completions (the calibration's smallest groups: 8 completions of one "
                                "128-value chunk); with fewer they widen by sqrt(this / values), never past the "
                                "per-completion limits (a mean of n values spreads as 1/sqrt(n): four copies of "
                                "one 2-token completion held to the 1,024-value limit banned an honest worker)")
    higher_precision_floor: float = Field(
        0.0, ge=0, description="low-precision dtypes only: a completion that the verifier's float32 prefill "
                               "explains better than this (mean mantissa error) was computed in float32, not the "
                               "declared dtype; it is then judged by the float32 limits (0 = no such test)")
    sampling_tolerance: float = Field(
        0.01, ge=0, description="largest shortfall of a chosen token's perturbed score (logit/temperature "
                                "+ Gumbel noise) below the best one, allowed for honest numeric noise")
    sampling_rel_tolerance: float = Field(
        0.0, ge=0, le=0.1, description="allowance for logits rounded to a low-precision grid: a shortfall is "
                                       "judged after subtracting this x the larger |logit| / temperature of "
                                       "the two tokens (bf16: one grid step is 2^-8..2^-7 of the value)")
    reward_tolerance: float = Field(1e-6, ge=0, description="rewards that differ by more are different")


FLOAT32 = Thresholds()

BFLOAT16 = Thresholds(
    exp_mismatch_frac=0.12, mant_err_mean=5.0, mant_err_median=3.0, sign_mismatch_frac=0.05,
    completion_exp_mismatch_frac=0.08, completion_mant_err_mean=5.0,
    group_exp_mismatch_frac=0.06, group_mant_err_mean=1.8, higher_precision_floor=0.15,
    sampling_tolerance=0.02, sampling_rel_tolerance=2.0 ** -6)

CALIBRATED: dict[str, Thresholds] = {"float32": FLOAT32, "bfloat16": BFLOAT16}


def overridden(dtype: str, changes: dict | Thresholds) -> Thresholds:
    """`dtype`'s calibrated limits with the fields an operator set in `changes` replaced (an
    override of one field keeps that dtype's other limits, not the float32 defaults)."""
    if isinstance(changes, Thresholds):
        return changes
    return Thresholds.model_validate({**CALIBRATED[dtype].model_dump(), **changes})
