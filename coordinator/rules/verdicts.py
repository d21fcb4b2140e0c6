"""What a verifier's verdict does: which buffer state the group enters, what the worker is
credited with, whether held groups are released, and whether the worker is banned.

`verdict_problems` first refuses a verdict that cannot be trusted as a pass (an acceptance
with a failed check, a full-check acceptance without the model checks, a statistic that is
missing, NaN or infinite where a number belongs, or sampling counts no group can have): verification fails closed at the
coordinator too. `consequences` is then a pure function of the verdict's facts, the worker's
standing before it and the configuration; `coordinator.service.verification.verdict`
applies it in one transaction.

    verdict                        group          worker
    rejected                       (rejected)     banned: its queued, held and untrained
                                                  groups are dropped, its leases revoked
    rejected, not the worker's     (rejected)     nothing: neither banned nor debited (a
      fault (`worker_fault` False)                reward dispute between the coordinator's
                                                  and the verifier's scorings)
    accepted, full check           ready          clean check; its held groups received
                                                  before this one become ready; sampling
                                                  counts join the near-tie ledger and its
                                                  CUSUM, the proof error the drift score —
                                                  any of them may ban it (then as rejected)
    accepted, cheap checks only    held, or ready if a clean full check of the worker was
                                   received after it (`hold_until_checked` off: ready)

Holding unchecked groups until the worker's next clean full check bounds what a worker that
turns dishonest after earning a low check rate can get trained: its cheated groups wait for
a full check that, when it cheats on every submission, rejects it and drops them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from coordinator.rules import near_ties, proof_drift
from protocol.messages import MAX_GROUP_SIZE, MAX_TOKENS_PER_SEQUENCE, NO_FAULT_CHECKS

# the most sampled positions (and near ties among them) one group can have: the sampling check's
# counts are added to the worker's 64-bit ledger columns, so a count beyond it is refused
MAX_SAMPLING_COUNT = MAX_GROUP_SIZE * MAX_TOKENS_PER_SEQUENCE


@dataclass(frozen=True)
class Standing:
    """A worker's ledger before the verdict."""

    checked_positions: int
    near_ties: int
    drift: tuple[float, float]          # proof-drift scores: pooled, worst completion
    last_clean_check_at: float | None
    near_tie_score: float = 0.0         # the near-tie CUSUM (rules.near_ties.score)


@dataclass(frozen=True)
class Consequence:
    buffer: str | None                 # 'ready', 'held', or None for a rejection
    clean_check: bool
    positions: int                     # sampling counts added to the near-tie ledger
    near_ties: int
    drift: tuple[float, float]         # the worker's new proof-drift scores
    release_held_up_to: float | None   # held groups received at or before this become ready
    ban_reason: str                    # '' unless the worker is banned
    near_tie_score: float = 0.0        # the worker's new near-tie CUSUM


@dataclass(frozen=True)
class Rules:
    hold_until_checked: bool
    near_ties_enabled: bool
    honest_rate: float
    alpha: float
    drift_enabled: bool
    drift: dict[str, tuple[float, float, float, float]]  # judged dtype -> (allowance, limit, worst ditto)


def _numbers(v: Any, path: str, out: list[str]) -> None:
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        out.append(path)
    elif isinstance(v, dict):
        for k, x in v.items():
            _numbers(x, f"{path}.{k}", out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _numbers(x, f"{path}[{i}]", out)


def verdict_problems(accepted: bool, full_check: bool, checks: list[Any], worker_fault: bool = True) -> str:
    """Why an acceptance cannot be trusted, or a rejection cannot be no fault of the worker, or
    ''. `checks`: the verdict's CheckResults."""
    if not worker_fault:
        failed = {c.name for c in checks if not c.passed}
        if accepted or not failed:
            return "a verdict without a failed check that says the worker was not at fault"
        if not failed <= NO_FAULT_CHECKS:
            return (f"a rejection not counted against the worker with failed checks ({', '.join(sorted(failed))}) "
                    f"beyond those that can be no doing of a worker ({', '.join(sorted(NO_FAULT_CHECKS))})")
        return ""
    if not accepted:
        return ""
    failed = [c.name for c in checks if not c.passed]
    if failed:
        return f"an acceptance with failed checks ({', '.join(failed)})"
    names = {c.name for c in checks}
    if full_check and not {"proof", "sampling"} <= names:
        return "a full-check acceptance without the proof and sampling checks"
    missing: list[str] = []
    for c in checks:
        _numbers(c.stats, c.name, missing)
    if missing:
        return f"an acceptance with missing or non-finite statistics ({', '.join(missing[:3])})"
    for c in checks:
        if c.name != "sampling":
            continue
        for key in ("positions", "not_argmax"):
            n = c.stats.get(key)
            if isinstance(n, (int, float)) and not isinstance(n, bool) and not 0 <= n <= MAX_SAMPLING_COUNT:
                return f"an acceptance whose sampling.{key} ({n:.6g}) is outside [0, {MAX_SAMPLING_COUNT}]"
    return ""


def standing_after(standing: Standing, c: Consequence) -> Standing:
    """The worker's ledger once `c` is applied (what `coordinator.service.verification` writes:
    its sampling counts added, its drift and near-tie scores, its newest clean check); for the
    benches and tests that replay a worker's verdicts through these rules."""
    return Standing(checked_positions=standing.checked_positions + c.positions, near_ties=standing.near_ties + c.near_ties,
                    drift=c.drift, near_tie_score=c.near_tie_score,
                    last_clean_check_at=(c.release_held_up_to if c.release_held_up_to is not None
                                         else standing.last_clean_check_at))


def _sampling_counts(checks: list[Any]) -> tuple[int, int]:
    for c in checks:
        if c.name == "sampling":
            try:
                return max(0, int(c.stats.get("positions", 0))), max(0, int(c.stats.get("not_argmax", 0)))
            except (TypeError, ValueError):
                return 0, 0
    return 0, 0


def _proof_stats(checks: list[Any]) -> dict:
    return next((c.stats for c in checks if c.name == "proof"), {})


def consequences(accepted: bool, full_check: bool, checks: list[Any], reason: str, *, received_at: float,
                 standing: Standing, rules: Rules, worker_fault: bool = True) -> Consequence:
    if not accepted:
        ban = (reason or "rejected by the verifier") if worker_fault else ""
        return Consequence(None, False, 0, 0, standing.drift, None, ban, standing.near_tie_score)
    if not full_check:
        checked_after = standing.last_clean_check_at is not None and standing.last_clean_check_at >= received_at
        held = rules.hold_until_checked and not checked_after
        return Consequence("held" if held else "ready", False, 0, 0, standing.drift, None, "",
                           standing.near_tie_score)
    positions, ties = _sampling_counts(checks)
    ban = ""
    tie_score = standing.near_tie_score
    if rules.near_ties_enabled:
        tie_score = near_ties.score(tie_score, ties, positions, honest_rate=rules.honest_rate)
    if rules.near_ties_enabled and ties:
        total_ties, total_pos = standing.near_ties + ties, standing.checked_positions + positions
        if near_ties.implausible(total_ties, total_pos, honest_rate=rules.honest_rate, alpha=rules.alpha):
            ban = (f"{total_ties} of {total_pos} fully checked tokens were not the seeded sample (each within the "
                   f"sampling tolerance): P < {rules.alpha:g} at the honest rate {rules.honest_rate:g} (another "
                   "temperature or policy?)")
        elif near_ties.banned_by_score(tie_score, alpha=rules.alpha):
            ban = (f"its fully checked tokens stopped being the seeded sample (within the sampling tolerance) far "
                   f"more often than at the honest rate {rules.honest_rate:g}, check after check (near-tie score "
                   f"{tie_score:.1f}; another temperature or policy since?)")
    scores = standing.drift
    stats = _proof_stats(checks)
    limits = rules.drift.get(str(stats.get("prefill_dtype", "")))
    if rules.drift_enabled and limits is not None:
        pooled, worst = proof_drift.check_error(stats), proof_drift.worst_error(stats)
        scores = (scores[0] if pooled is None else proof_drift.update(scores[0], pooled, allowance=limits[0],
                                                                          limit=limits[1]),
                  scores[1] if worst is None else proof_drift.update(scores[1], worst, allowance=limits[2],
                                                                         limit=limits[3]))
        if not ban and (proof_drift.banned(scores[0]) or proof_drift.banned(scores[1])):
            which = "" if proof_drift.banned(scores[0]) else "worst completions' "
            ban = (f"the proofs of this worker's full checks drift from the policy's: their {which}error stays above "
                   f"the honest allowance for {stats.get('prefill_dtype')} check after check (another or a quantized "
                   "model?)")
    return Consequence("ready", True, positions, ties, scores, received_at, ban, tie_score)
