"""Online data filtering: which accepted groups a step trains on.

Each `TrainingGroup` arrives with the advantages the coordinator computed once, at intake, from
its own rewards (`coordinator.rules.advantages`; archived with the submission): the trainer
trains on them as they are. Groups whose advantages are all zero (every sample got the same
reward) carry no GRPO signal and are dropped and counted; an optional pass-rate window drops
tasks that are too easy or too hard (offline difficulty filtering by measured pass rate).

Pure functions: they take groups and return decisions; counters are the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class FilterCounts:
    kept: int = 0
    zero_advantage: int = 0
    outside_pass_window: int = 0
    dropped_ids: list[str] = field(default_factory=list)


def filter_groups(groups: Sequence, *, min_pass_rate: float = 0.0,
                  max_pass_rate: float = 1.0) -> tuple[list[tuple[object, list[float]]], FilterCounts]:
    """Keep groups with signal: returns [(group, its advantages)] and what was dropped and why.

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
        adv = [float(a) for a in g.advantages]
        if all(a == 0.0 for a in adv):
            counts.zero_advantage += 1
            counts.dropped_ids.append(g.submission_id)
            continue
        kept.append((g, adv))
        counts.kept += 1
    return kept, counts
