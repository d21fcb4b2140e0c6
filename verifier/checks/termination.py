"""The termination check: every completion ends the way the rules say it must.

The rules without the model are `protocol.conformance` (the `termination` problems, which the
coordinator's intake refused too):

- finish_reason "eos": the last token is the lease's EOS and no earlier token is;
- finish_reason "length": exactly the lease's max_tokens tokens and no EOS — this catches a
  completion cut short.

With the model, this check adds what only a prefill can tell: at the end of an "eos"
completion that keeps those rules, EOS must have been the sampled token (its perturbed-score
shortfall at the last position within the sampling tolerance) — this catches a forged EOS.
"""

from __future__ import annotations

from protocol.conformance import TERMINATION, lease_problems
from protocol.messages import CheckResult
from verifier.checks import first_failures, result, within
from verifier.job import OpenedJob

NAME = TERMINATION


def check_termination(oj: OpenedJob, *, last_gaps: list[float | None] | None = None,
                      tolerance: float = 0.0) -> CheckResult:
    """`last_gaps[i]`: the sampling shortfall of completion i's last token (from
    `verifier.checks.sampling.sampling_gaps`), or None when the model was not run."""
    rule = [p for p in lease_problems(oj.lease, oj.submission, signer_id=oj.signer_id) if p.check == TERMINATION]
    problems = [p.detail for p in rule]
    broken = {p.completion for p in rule}
    worst_eos_gap = 0.0
    for i, c in enumerate(oj.submission.completions):
        if c.finish_reason != "eos" or i in broken or last_gaps is None or last_gaps[i] is None:
            continue
        gap = last_gaps[i]
        worst_eos_gap = gap if gap != gap else max(worst_eos_gap, gap)
        if not within(gap, tolerance):
            problems.append(f"completion {i} ends in EOS, but EOS was not the sampled token there "
                            f"(shortfall {gap:.3f} > {tolerance})")
    stats = {"eos": sum(c.finish_reason == "eos" for c in oj.submission.completions),
             "length": sum(c.finish_reason == "length" for c in oj.submission.completions),
             "model_checked": last_gaps is not None, "worst_eos_gap": round(worst_eos_gap, 6)}
    return result(NAME, not problems, stats, first_failures(problems))
