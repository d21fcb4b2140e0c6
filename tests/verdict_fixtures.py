"""Checks for hand-made verdicts in tests that stand in for the verifier.

The coordinator refuses an acceptance that does not carry what a real verifier's does
(`coordinator.rules.verdicts.verdict_problems`): a full check needs passing proof and
sampling checks with finite statistics. `passing_checks` gives the smallest such set.
"""

from __future__ import annotations

from protocol.messages import CheckResult


def passing_checks(full_check: bool = True, *, dtype: str = "float32", positions: int = 0,
                   near_ties: int = 0, mant_mean: float = 0.0, per_completion: list[float] | None = None
                   ) -> list[CheckResult]:
    checks = [CheckResult(name="lease_and_data", passed=True, stats={}),
              CheckResult(name="reward", passed=True, stats={})]
    if full_check:
        checks += [CheckResult(name="proof", passed=True, stats={
                       "group_mant_mean": mant_mean, "group_exp_frac": 0.0, "prefill_dtype": dtype,
                       "per_completion_mant_mean": per_completion if per_completion is not None else [mant_mean]}),
                   CheckResult(name="sampling", passed=True, stats={"positions": positions, "not_argmax": near_ties})]
    return checks
