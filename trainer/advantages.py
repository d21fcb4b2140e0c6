"""Advantages and online data filtering: which accepted groups a step trains on, and with what weight.

The coordinator sends each `TrainingGroup` with group-normalised advantages; the trainer
recomputes them from the rewards (the single source of truth is the reward, which the
coordinator computed itself) and counts disagreements, so a buggy or tampered advantage can
never steer a step. Groups whose advantages are all zero (every sample got the same reward)
carry no GRPO signal and are dropped and counted; an optional pass-rate window drops tasks
that are too easy or too hard (offline difficulty filtering by measured pass rate).

Pure functions: they take groups and return decisions; counters are the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

ADV_EPS = 1e-6
ADV_TOLERANCE = 1e-3


def group_advantages(rewards: Sequence[float], scale: bool = True) -> list[float]:
    """(r - mean) / std over one group (population std, as the coordinator computes it), or r - mean
    when not `scale`.
    A group whose rewards are all equal gets all-zero advantages."""
    n = len(rewards)
    if n == 0:
        return []
    mean = sum(rewards) / n
    centred = [r - mean for r in rewards]
    if not scale:
        return centred
    std = math.sqrt(sum(c * c for c in centred) / n)
    if std < ADV_EPS:
        return [0.0] * n
    return [c / std for c in centred]


def advantages_agree(ours: Sequence[float], theirs: Sequence[float], tol: float = ADV_TOLERANCE) -> bool:
    """True when the coordinator's advantages match ours (same length, each within `tol`)."""
    return len(ours) == len(theirs) and all(abs(a - b) <= tol for a, b in zip(ours, theirs))


@dataclass
class FilterCounts:
    kept: int = 0
    zero_advantage: int = 0
    outside_pass_window: int = 0
    advantage_mismatch: int = 0  # kept, with our recomputed advantages
    dropped_ids: list[str] = field(default_factory=list)


def filter_groups(groups: Sequence, *, scale: bool = True, min_pass_rate: float = 0.0,
                  max_pass_rate: float = 1.0) -> tuple[list[tuple[object, list[float]]], FilterCounts]:
    """Keep groups with signal: returns [(group, our advantages)] and what was dropped and why.

    `groups` are `protocol.messages.TrainingGroup`s (anything with `rewards`, `advantages`,
    `submission_id`). Pass rate = share of samples with reward > 0; a group outside
    [min_pass_rate, max_pass_rate] is dropped (the default window keeps everything)."""
    kept: list[tuple[object, list[float]]] = []
    counts = FilterCounts()
    for g in groups:
        rewards = [float(r) for r in g.rewards]
        pass_rate = sum(1 for r in rewards if r > 0) / max(1, len(rewards))
        if not (min_pass_rate <= pass_rate <= max_pass_rate):
            counts.outside_pass_window += 1
            counts.dropped_ids.append(g.submission_id)
            continue
        adv = group_advantages(rewards, scale=scale)
        if all(a == 0.0 for a in adv):
            counts.zero_advantage += 1
            counts.dropped_ids.append(g.submission_id)
            continue
        if not advantages_agree(adv, g.advantages):
            counts.advantage_mismatch += 1
        kept.append((g, adv))
        counts.kept += 1
    return kept, counts
