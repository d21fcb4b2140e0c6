"""Check rates: how much of a worker's output the verifier runs the model on.

A new identity is checked at `initial` (100% by default): a Sybil gains nothing by starting
fresh. Every `halve_every` clean full checks halve the rate, never below `floor`. Only a
full check that passed counts as clean; a cheap-only acceptance earns nothing, so the rate
cannot fall faster than the verifier actually looks. Whether a given submission is fully
checked is decided once, at intake, by a uniform draw `u` (stored with the submission, so a
restart or a second verifier never re-draws it).
"""

from __future__ import annotations


def check_rate(clean_checks: int, *, initial: float, floor: float, halve_every: int) -> float:
    """Share of a worker's submissions that get a full (model) check."""
    if clean_checks < 0 or halve_every < 1:
        raise ValueError("clean_checks must be >= 0 and halve_every >= 1")
    halvings = min(clean_checks // halve_every, 60)
    return max(floor, initial * 0.5**halvings)


def full_check(rate: float, u: float) -> bool:
    """Decide one submission with a uniform draw `u` in [0, 1)."""
    return u < rate
