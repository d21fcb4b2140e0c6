"""Group-normalised advantages (GRPO): each completion's reward against its own group.

    A_i = (r_i - mean(r)) / std(r)        std over the group, population form (ddof = 0)
    A_i = r_i - mean(r)                   with `scale` off (Dr. GRPO: `advantage_scale = false`)

A group whose rewards are all equal carries no signal and gets exact zeros (the trainer
drops such groups). Computed once, here, at intake, because they depend on nothing but the
group's rewards, which the coordinator computes at that moment (never a worker's claim): they
are stored with the submission, archived (an auditor reads exactly what the trainer trained
on), and enter the training buffer after an accepting verdict; the trainer trains on them as
they arrive (`trainer.filtering`) and never recomputes them.
"""

from __future__ import annotations

import math

ZERO_STD = 1e-8


def group_advantages(rewards: list[float], scale: bool = True) -> list[float]:
    if not rewards:
        return []
    n = len(rewards)
    mean = sum(rewards) / n
    var = sum((r - mean) ** 2 for r in rewards) / n
    std = math.sqrt(var)
    if std < ZERO_STD:
        return [0.0] * n
    return [(r - mean) / std if scale else r - mean for r in rewards]
