"""The verifier's decision thresholds, with the reasons for their values.

Collaborators: `verifier.checks` applies them; `verifier.config.VerifierConfig.thresholds`
lets an operator override them per run. They must be calibrated per model and hardware:
`python bench/verification.py` measures the honest and dishonest distributions and prints
each statistic's worst honest value next to its threshold.

There are two sets: `Thresholds()` for full precision (the prefill runs in fp32) and
`LOW_PRECISION` for bf16/fp16 (the prefill runs in the worker's declared low-precision dtype;
see `verifier.pipeline`). Calibration: tiny demo model (Qwen2 128x4) and the same model
untrained, CPU, honest workers decoding with a KV cache, batch 1/4/16, 1 or 2 threads,
completions of up to 8 and up to 64 tokens:
- fp32: the worker's decode and the verifier's prefill agree almost bit for bit: pooled
  over a submission the mean mantissa error stays <= 0.001, a chunk's <= 0.01. The limits
  leave a wide margin for other CPUs and thread counts. What they still catch per submission
  (bench/verification.py section 3, warm-started demo model, measured 2026-11-22): weights +
  noise of 1% of each tensor's std 100% (0.3%: 0%); a policy one AdamW step from the claimed
  one 100% at lr 1e-4, 67% at 3e-5, 25% at 1e-5.
- bf16: decode and prefill round differently (the KV-cache path and the batched prefill do
  not accumulate in the same order), and the difference grows with the completion: pooled
  means up to ~1.1 and chunk means up to ~2.7 on the untrained model (far less on a trained
  one). The limits sit about 2x above that; what they still catch is measured per attack by
  the bench. A prefill in the *other* dtype would add ~1 ulp on average, which is why the
  dtype is matched instead of widening every limit. Declaring bf16 buys a cheater only the
  low-precision limits: other weights, weights + 10% noise, prompt and token cheats move the
  numbers far past them (bench/verification.py, section 2), but small weight changes hide in
  bf16 rounding: per submission, noise of 3% of each tensor's std is caught 25% of the time,
  1% not at all, and a policy one AdamW step away (lr 1e-4) not at all (section 3). An
  operator who needs those caught admits fp32 workers only (`match_dtypes = ["float32"]`:
  a bf16 worker is then judged by an fp32 prefill with the fp32 limits, and fails).
- The reference's limits (mean 10, median 8, 38/128 exponents) were set for mixed GPUs; a
  fleet of mixed GPUs needs wider limits, measured the same way.
- sampling: the chosen token must be the Gumbel-perturbed argmax of the verifier's own
  logits; numeric noise can flip a near-tie, so a chosen token may trail the best perturbed
  score by up to `sampling_tolerance` (logit / temperature units). Honest shortfalls
  measured: 0 in fp32, below 0.001 in bf16 (dtype matched), ~0.01 across dtypes. Another
  temperature, greedy decoding, cherry-picking or an edited token produce shortfalls of
  ~0.1 to several units; the tolerance is kept small because a forged token whose
  perturbed score lies within it of the best one is accepted (a near-tie the cheater
  could only exploit by computing the honest scores anyway).
- sampling across hardware (bf16): a GPU worker's bf16 logits and a CPU verifier's bf16
  prefill may each round a logit to a neighbouring point of the bf16 grid (8 significant
  bits: a step is 2^-8..2^-7 of the value, 0.0625 at 10). An honest GPU worker in the demo
  was banned for a shortfall of 0.028 > 0.02 (H100 worker, CPU verifier), and
  bench/cross_hardware.py measures the shortfalls relative to the logits' magnitude. So
  low-precision prefills judge the shortfall beyond `sampling_rel_tolerance` = 2^-6 (two grid
  steps at worst) x the larger |logit| / temperature of the two tokens.
- what the tolerances let through is still counted: the sampling check reports every token
  that was not the perturbed argmax (`not_argmax`), and the coordinator bans a worker whose
  count over its full checks is implausible for honest noise (`coordinator.rules.near_ties`):
  a temperature cheat that hides each token within the allowance misses ~5% of its tokens,
  honest workers 0-0.16%.
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
        0.01, ge=0, description="largest shortfall of a chosen token's perturbed score (logit/temperature "
                                "+ Gumbel noise) below the best one, allowed for honest numeric noise")
    sampling_rel_tolerance: float = Field(
        0.0, ge=0, le=0.1, description="allowance for logits rounded to a low-precision grid: a shortfall is "
                                       "judged after subtracting this x the larger |logit| / temperature of "
                                       "the two tokens (bf16: one grid step is 2^-8..2^-7 of the value)")
    reward_tolerance: float = Field(1e-6, ge=0, description="rewards that differ by more are different")


# bf16 / fp16 prefills: honest decode-vs-prefill rounding noise is much larger (see above).
LOW_PRECISION = Thresholds(exp_mismatch_frac=0.15, mant_err_mean=5.0, mant_err_median=4.0, sign_mismatch_frac=0.05,
                           group_exp_mismatch_frac=0.05, group_mant_err_mean=2.0, sampling_tolerance=0.02,
                           sampling_rel_tolerance=2.0 ** -6)
