"""The verifier's decision thresholds, with the reasons for their values.

Collaborators: `verifier.checks` applies them; `verifier.config.VerifierConfig.thresholds`
lets an operator override them per run (they must be calibrated per model: bench/
verification.py measures the honest and dishonest distributions and prints them).

Calibration on the tiny demo model (Qwen2, hidden 128, 4 layers, CPU), honest workers
decoding with a KV cache in fp32 or bf16, batch 1/4/16, 1 or 2 threads, against the
verifier's fp32 prefill (figures from `python bench/verification.py`):
- proof: honest chunks show at most a few exponent mismatches per 128 values in fp32 and
  more in bf16, where the worker's values carry bf16 rounding error; the mantissa error
  mean stays small. Other weights, a changed prompt or an edited token move most of the
  top-k (exponent mismatches near k, or mean mantissa errors of tens). The limits sit
  well above the honest maximum and well below what cheats reach.
- sampling: the chosen token must be the Gumbel-perturbed argmax of the verifier's own
  logits; honest numeric noise can flip a near-tie, so a chosen token may trail the best
  perturbed score by up to `sampling_tolerance` (in units of logit / temperature). fp32
  workers differ from the prefill by ~1e-5 in logits; bf16 workers by up to a few 1e-2.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exp_mismatch_frac: float = Field(
        0.15, ge=0, le=1,
        description="a proof chunk fails when more than this share of its top-k values has a different "
                    "exponent (the reference uses 38/128 = 0.30 for large GPU models)")
    mant_err_mean: float = Field(
        4.0, ge=0, description="a chunk fails when the mean |mantissa difference| of exponent-matched "
                               "values exceeds this (reference: 10)")
    mant_err_median: float = Field(
        4.0, ge=0, description="... or their upper median exceeds this (reference: 8)")
    sign_mismatch_frac: float = Field(
        0.05, ge=0, le=1, description="... or more than this share of exponent-matched values has the "
                                      "other sign (the reference does not look at signs)")
    group_exp_mismatch_frac: float = Field(
        0.05, ge=0, le=1, description="the whole submission fails when more than this share of all compared "
                                      "values (every chunk of every completion) has a different exponent")
    group_mant_err_mean: float = Field(
        1.5, ge=0, description="... or when the mean mantissa error over all its exponent-matched values "
                               "exceeds this: pooling a group's chunks separates small weight changes "
                               "from honest rounding noise far better than any single chunk can")
    sampling_tolerance: float = Field(
        0.05, ge=0, description="largest shortfall of a chosen token's perturbed score (logit/temperature "
                                "+ Gumbel noise) below the best one, allowed for honest numeric noise")
    reward_tolerance: float = Field(1e-6, ge=0, description="rewards that differ by more are different")
