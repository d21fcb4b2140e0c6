"""The async window, and the trainer's staleness limit: which policy versions a rollout may
come from, and how old a verified group may be when a step takes it.

With current policy version c and window k, rollouts of versions max(0, c - k) .. c are
usable: a lease allows exactly those versions, and the checkpoint archive keeps those versions
(their submissions may still be judged). One setting, the coordinator's `async_window`, served
at GET /v1/run (`RunInfo.async_window`), which the trainer takes at start
(`trainer.config.from_run`).

A group leased at version c is verified and reaches the trainer some time later, when the
current version may have moved past c + k. The trainer's own `max_staleness` (s) says how far
it still trains such a group, with the decoupled importance-weight correction
(`trainer.loss`, `trainer.history.WeightHistory`): its limit is `staleness_limit(k, s)` =
max(k, s) versions, so everything a lease allowed can still be trained once it arrives, and
groups of versions `window_floor(c, limit)` .. c are kept. The trainer asks for batches above
that floor (`BatchRequest.min_policy_version`); the coordinator's buffer keeps groups down to
the lower of its window floor and the floor the trainer last asked for, and drops (counts as
stale) only what lies below it. Issue 23: bench/staleness.py measured what each extra version
costs (the default of `max_staleness` comes from it).
"""

from __future__ import annotations


def window_floor(current: int | None, window: int) -> int:
    """The oldest usable policy version (0 before any version exists)."""
    return 0 if current is None else max(0, current - window)


def allowed_versions(current: int, window: int) -> tuple[int, int]:
    """(oldest, newest) policy version a rollout may use while `current` is the newest."""
    return window_floor(current, window), current


def staleness_limit(async_window: int, max_staleness: int) -> int:
    """How many versions old a group may be when the trainer takes it: never less than the
    async window (a lease's work is always trainable when it arrives in time)."""
    return max(async_window, max_staleness)


def buffer_floor(current: int | None, async_window: int, trainer_floor: int | None) -> int:
    """The oldest version the coordinator's buffer keeps: the async window's floor, or the
    floor the trainer last asked for (`BatchRequest.min_policy_version`) when that is lower."""
    floor = window_floor(current, async_window)
    return floor if trainer_floor is None else max(0, min(floor, trainer_floor))
