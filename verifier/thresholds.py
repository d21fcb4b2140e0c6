"""The verifier's decision thresholds, with the reasons for their values.

Collaborators: `verifier.checks` applies them; `verifier.config.VerifierConfig.thresholds`
lets an operator override them per run. They must be calibrated per model and hardware:
`python bench/verification.py` measures the honest and dishonest distributions and prints
each statistic's worst honest value next to its threshold.

Calibration (tiny demo model, Qwen2 128x4, CPU; honest workers decoding with a KV cache in
fp32 or bf16, batch 1/4/16, 1 or 2 threads; the verifier's prefill in the dtype the worker
declares, see `verifier.pipeline`):
- proof: a dtype-matched honest worker agrees with the prefill almost bit for bit: pooled
  over a submission, at most ~0.1% of exponents differ and the mean mantissa error stays
  below ~0.02 (a chunk alone below ~0.1). A prefill in the *other* dtype would differ by
  ~1 ulp on average, which is why the dtype is matched rather than the thresholds widened.
  The limits below leave a wide margin (10x and more) for other CPUs and thread counts, and
  still catch a weight change of ~0.3% of each tensor's std, or a policy one AdamW step
  (lr 1e-5) away from the claimed one; other weights, another prompt or an edited token
  move the numbers by orders of magnitude more. The reference's own limits (mean 10,
  median 8, 38/128 exponents) were set for GPUs of different makes; a fleet of mixed GPUs
  needs wider limits, measured the same way.
- sampling: the chosen token must be the Gumbel-perturbed argmax of the verifier's own
  logits; numeric noise can flip a near-tie, so a chosen token may trail the best perturbed
  score by up to `sampling_tolerance` (logit / temperature units). Honest shortfalls
  measured: 0 when dtypes match, up to ~0.01 across dtypes; another temperature, greedy
  decoding, cherry-picking or an edited token produce shortfalls of ~0.1 to several units.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exp_mismatch_frac: float = Field(
        0.05, ge=0, le=1,
        description="a proof chunk fails when more than this share of its top-k values has a different "
                    "exponent (the reference uses 38/128 = 0.30, for mixed GPUs)")
    mant_err_mean: float = Field(
        1.0, ge=0, description="a chunk fails when the mean |mantissa difference| of exponent-matched "
                               "values exceeds this (reference: 10)")
    mant_err_median: float = Field(
        1.0, ge=0, description="... or their upper median exceeds this (reference: 8)")
    sign_mismatch_frac: float = Field(
        0.02, ge=0, le=1, description="... or more than this share of exponent-matched values has the "
                                      "other sign (the reference does not look at signs)")
    group_exp_mismatch_frac: float = Field(
        0.01, ge=0, le=1, description="the whole submission fails when more than this share of all compared "
                                      "values (every chunk of every completion) has a different exponent")
    group_mant_err_mean: float = Field(
        0.2, ge=0, description="... or when the mean mantissa error over all its exponent-matched values "
                               "exceeds this: pooling a group's chunks separates small weight changes "
                               "from rounding noise far better than any single chunk can")
    sampling_tolerance: float = Field(
        0.05, ge=0, description="largest shortfall of a chosen token's perturbed score (logit/temperature "
                                "+ Gumbel noise) below the best one, allowed for honest numeric noise")
    reward_tolerance: float = Field(1e-6, ge=0, description="rewards that differ by more are different")
