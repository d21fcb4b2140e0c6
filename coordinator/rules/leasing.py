"""Lease decisions: which policy versions a lease allows, its seeds, ids, and which task goes
out next.

- Allowed versions follow the async window (`protocol.window.allowed_versions`). No lease is
  issued before the trainer has published version 0.
- Seeds are drawn by the coordinator (63-bit, from the `rng` it is given), one per sample:
  a worker cannot choose them, so it cannot re-draw a sample until it likes the answer.
- Tasks come from the source's train split in order (a persistent counter). A task whose
  lease expired or was given back returns to a pool and is handed out first, preferably to
  a worker other than the one that dropped it; it gets fresh seeds and a new lease id.
- A worker holds at most `max_leases` active leases, and never two active leases of one task
  (`split_held`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def draw_seeds(rng: random.Random, n: int) -> list[int]:
    return [rng.getrandbits(63) for _ in range(n)]


def new_id(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.getrandbits(96):024x}"


def leases_to_issue(requested: int, held: int, max_leases: int) -> int:
    """How many leases a request gets: bounded by the request and by the worker's quota."""
    return max(0, min(requested, max_leases - held))


@dataclass(frozen=True)
class ReturnedTask:
    task_index: int
    previous_worker: str


def pick_returned(n: int, returned: list[ReturnedTask], worker_id: str) -> list[int]:
    """Up to `n` returned task indices for `worker_id`, oldest first, skipping the tasks this
    worker gave up itself (another worker should get them). The rest of the `n` come from
    the counter."""
    chosen: list[int] = []
    for r in returned:
        if len(chosen) >= n:
            break
        if r.previous_worker != worker_id:
            chosen.append(r.task_index)
    return chosen


def split_held(candidates: list[tuple[int, str]], held_task_ids: set[str]) -> tuple[list[int], list[int]]:
    """(task indices to lease, task indices to put back) of `candidates` ((index, task id) in
    order) for a worker whose active leases are of `held_task_ids`.

    A worker never holds two active leases of one task (indices repeat a task past the end of
    the train split; a worker that leases ahead holds two batches): a policy that answers a
    task alike every time (a peaked policy on a short answer) would give the second lease the
    first one's group, which `submit` refuses as a content duplicate (409 duplicate_completion),
    and the worker would lose that credit. The tasks put back go to the returned pool, for any
    worker (this one too, once it no longer holds the task)."""
    take: list[int] = []
    back: list[int] = []
    seen = set(held_task_ids)
    for index, task_id in candidates:
        if task_id in seen:
            back.append(index)
        else:
            seen.add(task_id)
            take.append(index)
    return take, back
