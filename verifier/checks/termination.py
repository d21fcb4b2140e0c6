"""The termination check: every completion ends the way the rules say it must.

- finish_reason "eos": the last token is the lease's EOS and no earlier token is; with the
  model, EOS must also have been the sampled token there (its perturbed-score shortfall at
  the last position within the sampling tolerance) — this catches a forged EOS;
- finish_reason "length": exactly the lease's max_tokens tokens and no EOS — this catches a
  completion cut short.
"""

from __future__ import annotations

from protocol.messages import CheckResult
from verifier.checks import first_failures, result, within
from verifier.job import OpenedJob

NAME = "termination"


def check_termination(oj: OpenedJob, *, last_gaps: list[float | None] | None = None,
                      tolerance: float = 0.0) -> CheckResult:
    """`last_gaps[i]`: the sampling shortfall of completion i's last token (from
    `verifier.checks.sampling.sampling_gaps`), or None when the model was not run."""
    eos, max_tokens = oj.lease.eos_token_id, oj.lease.sampling.max_tokens
    problems: list[str] = []
    worst_eos_gap = 0.0
    for i, c in enumerate(oj.submission.completions):
        toks = c.token_ids
        early_eos = eos in toks[:-1]
        if c.finish_reason == "eos":
            if not toks or toks[-1] != eos:
                problems.append(f"completion {i} claims EOS but does not end with token {eos}")
            elif early_eos:
                problems.append(f"completion {i} has an EOS before its end")
            elif last_gaps is not None and last_gaps[i] is not None:
                gap = last_gaps[i]
                worst_eos_gap = gap if gap != gap else max(worst_eos_gap, gap)
                if not within(gap, tolerance):
                    problems.append(f"completion {i} ends in EOS, but EOS was not the sampled token there "
                                    f"(shortfall {last_gaps[i]:.3f} > {tolerance})")
        else:
            if len(toks) != max_tokens:
                problems.append(f"completion {i} stopped for length after {len(toks)} tokens, "
                                f"the lease's max_tokens is {max_tokens}")
            if eos in toks:
                problems.append(f"completion {i} contains EOS but claims finish reason 'length'")
    stats = {"eos": sum(c.finish_reason == "eos" for c in oj.submission.completions),
             "length": sum(c.finish_reason == "length" for c in oj.submission.completions),
             "model_checked": last_gaps is not None, "worst_eos_gap": round(worst_eos_gap, 6)}
    return result(NAME, not problems, stats, first_failures(problems))
