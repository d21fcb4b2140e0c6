"""The learning-rate schedule: linear warm-up, then constant, linear or cosine decay.

A pure function of the policy version being trained (one batch of groups per version, so
the version counts optimizer steps unless `updates_per_batch` > 1, where all updates of one
batch share the version's rate). Every rank computes the same value from the version rank 0
broadcasts, and a resumed trainer continues where it stopped without storing any scheduler
state. `step.run_step` sets it on the optimizer before each step.

    factor(v) = (v + 1) / warmup                                   for v < warmup
              = 1                                                  decay "constant"
              = min + (1 - min) * (1 - p)                          decay "linear"
              = min + (1 - min) * (1 + cos(pi * p)) / 2            decay "cosine"
    with p = min(1, (v - warmup) / decay_versions), min = lr_min_ratio.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from trainer.config import TrainerConfig


def lr_factor(version: int, *, warmup: int, decay: str, decay_versions: int, min_ratio: float) -> float:
    if version < warmup:
        return (version + 1) / warmup
    if decay == "constant" or decay_versions <= 0:
        return 1.0
    p = min(1.0, (version - warmup) / decay_versions)
    if decay == "linear":
        return min_ratio + (1 - min_ratio) * (1 - p)
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * p)) / 2


def lr_schedule(cfg: TrainerConfig) -> Callable[[int], float]:
    """version -> learning rate, from the trainer's config."""
    decay_versions = cfg.lr_decay_versions or max(0, cfg.max_versions - cfg.lr_warmup_versions)
    return lambda v: cfg.lr * lr_factor(v, warmup=cfg.lr_warmup_versions, decay=cfg.lr_decay,
                                        decay_versions=decay_versions, min_ratio=cfg.lr_min_ratio)
