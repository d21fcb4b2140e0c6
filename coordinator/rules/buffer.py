"""The training buffer's rule: which accepted groups a batch takes.

A group generated with policy version v may train the policy whose current version is c
only while v >= c - async_window. A batch request also names its own lower bound
(`min_policy_version`); the stricter of the two applies. Groups below the window can never
be used again: they are dropped from the buffer and counted (`dropped_stale`). Groups
between the window and the request's bound stay for a later request. Oldest groups first,
each handed out at most once (the store marks them consumed in the same transaction).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    submission_id: str
    policy_version: int


def window_floor(current: int | None, window: int) -> int:
    return 0 if current is None else max(0, current - window)


def select_batch(candidates: list[Candidate], *, current: int | None, window: int,
                 min_policy_version: int, max_groups: int) -> tuple[list[str], list[str]]:
    """Return (ids to hand out, ids that fell out of the window), given candidates oldest first."""
    floor = window_floor(current, window)
    lower = max(floor, min_policy_version)
    take: list[str] = []
    stale: list[str] = []
    for c in candidates:
        if c.policy_version < floor:
            stale.append(c.submission_id)
        elif c.policy_version >= lower and len(take) < max_groups:
            take.append(c.submission_id)
    return take, stale
