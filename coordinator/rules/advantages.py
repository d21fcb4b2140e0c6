"""Group-normalised advantages (GRPO): each completion's reward against its own group.

    A_i = (r_i - mean(r)) / std(r)        std over the group, population form (ddof = 0)

A group whose rewards are all equal carries no signal and gets exact zeros (the trainer
drops such groups). Rewards are the coordinator's own, never a worker's claim; the
advantages depend on nothing else, so they are computed at intake and stored with the
submission, and only enter the training buffer after an accepting verdict.
"""

from __future__ import annotations

import math

ZERO_STD = 1e-8


def group_advantages(rewards: list[float]) -> list[float]:
    if not rewards:
        return []
    n = len(rewards)
    mean = sum(rewards) / n
    var = sum((r - mean) ** 2 for r in rewards) / n
    std = math.sqrt(var)
    if std < ZERO_STD:
        return [0.0] * n
    return [(r - mean) / std for r in rewards]
