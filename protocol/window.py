"""The async window: which policy versions a rollout may come from.

With current policy version c and window k, rollouts of versions max(0, c - k) .. c are
usable: a lease allows exactly those versions, the coordinator's buffer drops accepted groups
below the floor (stale: they can never be trained on), the checkpoint archive keeps those
versions (their submissions may still be judged), and the trainer drops a group below its own
floor. One rule, here; one setting, the coordinator's `async_window`, served at GET /v1/run
(`RunInfo.async_window`), which the trainer takes at start (`trainer.config.from_run`).
"""

from __future__ import annotations


def window_floor(current: int | None, window: int) -> int:
    """The oldest usable policy version (0 before any version exists)."""
    return 0 if current is None else max(0, current - window)


def allowed_versions(current: int, window: int) -> tuple[int, int]:
    """(oldest, newest) policy version a rollout may use while `current` is the newest."""
    return window_floor(current, window), current
