"""The verifier's checks: pure functions from (opened job, model outputs) to `CheckResult`s.

Each module holds one check (or two closely tied ones) and takes everything it needs as
arguments — thresholds, the replay ledger, decoded texts, the prefill's hidden states and
logits — so that tests, the service and bench scripts call the same code.

    check            module        needs the model   what it catches
    signatures       (judge)       no                envelopes that do not open
    lease_and_data   data          no (vocab: yes)   a submission that does not answer its lease:
                                                     other lease, version outside the lease,
                                                     wrong counts, lengths, malformed proofs
    termination      termination   partly            a completion cut short, a forged EOS
    reward           reward        no                a forged reward claim, a wrong reward
    replay           replay        no                the same lease, envelope or sample seen
                                                     under another submission
    proof            proof         yes               other weights, other prompt, edited tokens
    sampling         sampling      yes               other temperature, greedy, cherry-picking

Stats in each result are small JSON values (worst values and counts), so a verdict stays
readable for an auditor.
"""

from __future__ import annotations

from typing import Any

from protocol.messages import CheckResult

MAX_DETAIL = 2000


def result(name: str, passed: bool, stats: dict[str, Any] | None = None, detail: str = "") -> CheckResult:
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    return CheckResult(name=name, passed=passed, stats=stats or {}, detail=detail)


def first_failures(problems: list[str], limit: int = 3) -> str:
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
