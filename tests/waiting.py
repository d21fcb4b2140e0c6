"""The one polling wait of the test suite: real processes and servers change state in their
own time, so tests wait for a condition (never a fixed sleep) and fail with what they waited
for, plus the log tails of the processes involved when a group of them is given."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(cond: Callable[[], Any], timeout: float = 90.0, what: str = "condition", every: float = 0.1,
               group: Any = None, may_exit: Callable[[str], bool] = lambda name: True) -> Any:
    """Poll `cond` every `every` s until it returns something truthy, and return that.

    `group` (a swarmrl.procs.ProcessGroup): its log tails go into the failure message, and a
    child that exited fails the wait at once unless `may_exit(child name)`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        dead = [c.name for c in group.children if not c.alive and not may_exit(c.name)] if group else []
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:.0f} s"
            tails = "".join(f"\n--- {c.name} ({'alive' if c.alive else 'exited'})\n{c.tail(25)}"
                            for c in (group.children if group else []))
            raise AssertionError(f"{why} waiting for {what}{tails}")
        time.sleep(every)
