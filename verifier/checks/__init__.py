"""The verifier's checks: pure functions from (opened job, model outputs) to `CheckResult`s.

Each module holds one check (or two closely tied ones) and takes everything it needs as
arguments — thresholds, the replay ledger, decoded texts, the prefill's hidden states and
logits — so that tests, the service and bench scripts call the same code.

    check            module        needs the model   what it catches
    signatures       (judge)       no                envelopes that do not open
    lease_and_data   data          no (vocab: yes)   a submission that does not answer its lease:
                                                     other lease, version outside the lease,
                                                     wrong counts, lengths, malformed proofs
                                                     (`protocol.conformance`, intake's rule too)
    termination      termination   partly            a completion cut short, a forged EOS
    reward           reward        no                a forged reward claim, a wrong reward
    replay           replay        no                the same lease, envelope or sample seen
                                                     under another submission
    proof            proof         yes               other weights, other prompt, edited tokens
    sampling         sampling      yes               other temperature, greedy, cherry-picking

Stats in each result are small JSON values (worst values and counts), so a verdict stays
readable for an auditor.

Failing closed: every limit is applied with `within(value, limit)`, which is False for NaN
(a plain `value > limit` is False for NaN too, and would let it pass), and `result` turns any
non-finite number in a check's statistics into a failure of that check, with the number kept
as the string "nan"/"inf" (JSON has no NaN; pydantic would sign it as null).
"""

from __future__ import annotations

import math
from typing import Any

from protocol.messages import CheckResult

MAX_DETAIL = 2000
NON_FINITE = "non-finite"


def within(value: float, limit: float) -> bool:
    """value <= limit, and False whenever either is NaN."""
    return bool(value <= limit)


def _clean(v: Any, bad: list[str], path: str) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        bad.append(path)
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _clean(x, bad, f"{path}.{k}" if path else str(k)) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x, bad, f"{path}[{i}]") for i, x in enumerate(v)]
    try:
        return _clean(float(v), bad, path)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(v)


def result(name: str, passed: bool, stats: dict[str, Any] | None = None, detail: str = "") -> CheckResult:
    bad: list[str] = []
    clean = _clean(stats or {}, bad, "")
    if bad:
        passed = False
        detail = f"{NON_FINITE} statistic ({', '.join(bad[:3])}): the check cannot pass" + (f"; {detail}" if detail else "")
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    return CheckResult(name=name, passed=passed, stats=clean, detail=detail)


def first_failures(problems: list[str], limit: int = 3) -> str:
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
