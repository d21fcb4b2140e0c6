"""Check rates: how much of a worker's output the verifier runs the model on.

A new identity is checked at `initial` (100% by default): a Sybil gains nothing by starting
fresh. Every `halve_every` clean full checks halve the rate, never below `floor`. Only a
full check that passed counts as clean; a cheap-only acceptance earns nothing, so the rate
cannot fall faster than the verifier actually looks. Whether a given submission is fully
checked is decided once, at intake, by a uniform draw `u` (stored with the submission, so a
restart or a second verifier never re-draws it).

What else a worker's standing depends on: the leases it drops (`effective_clean_checks`),
its proofs' drift (`proof_drift`) and its sampling near-ties (`near_ties`); what a verdict
does to all of it is `verdicts.consequences`.
"""

from __future__ import annotations

import math


def check_rate(clean_checks: int, *, initial: float, floor: float, halve_every: int) -> float:
    """Share of a worker's submissions that get a full (model) check."""
    if clean_checks < 0 or halve_every < 1:
        raise ValueError("clean_checks must be >= 0 and halve_every >= 1")
    halvings = min(clean_checks // halve_every, 60)
    return max(floor, initial * 0.5**halvings)


def full_check(rate: float, u: float) -> bool:
    """Decide one submission with a uniform draw `u` in [0, 1)."""
    return u < rate


def effective_clean_checks(clean_checks: int, *, leases_issued: int, leases_dropped: int, drop_share: float,
                           drop_slack: int, halve_every: int) -> int:
    """The clean checks a worker's check rate is computed from, after what its dropped leases cost.

    Releasing a lease, letting it expire, going silent until the sweep closes it (its worker
    'gone') or having it closed as a content duplicate is free up to `drop_share` of the
    leases issued to it plus `drop_slack` (honest workers give leases back when they stop or
    fall behind; one restart gives back a full quota). Beyond that, every dropped lease costs
    `halve_every` clean checks: its check rate doubles, so a worker that leases freely and
    submits only the groups it likes pays with full checks. Derived from counters, never stored, so it is the
    same wherever it is computed."""
    excess = excess_drops(leases_issued, leases_dropped, drop_share=drop_share, drop_slack=drop_slack)
    if excess <= 0:
        return clean_checks
    return max(0, clean_checks - int(math.ceil(excess)) * halve_every)


def excess_drops(leases_issued: int, leases_dropped: int, *, drop_share: float, drop_slack: int) -> float:
    """Dropped leases beyond the free allowance (`effective_clean_checks`); <= 0 within it."""
    return leases_dropped - drop_share * leases_issued - drop_slack


def mostly_dropped(leases_issued: int, leases_dropped: int, *, drop_share: float, drop_slack: int) -> bool:
    """Whether a worker dropped more leases than it kept (submitted or still holds), beyond the
    free allowance: lease sizing then holds it to one lease at a time (`rules.lease_size`).
    Its check rate alone was no cost to a worker that takes leases only to sit on them."""
    return (leases_dropped > leases_issued - leases_dropped
            and excess_drops(leases_issued, leases_dropped, drop_share=drop_share, drop_slack=drop_slack) > 0)
