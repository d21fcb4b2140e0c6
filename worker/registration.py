"""Registering again once per forgetting, whichever of the worker's threads learns of it.

The coordinator forgets a worker it has not heard from (or loses its state); the worker then
learns it from a 404/401 on whatever request comes next. Three threads send requests (the
loop's leases, the lease-ahead request, the background sender's submissions), so two of them
can learn it from the same forgetting, and each must not register anew: a second registration
under one identity is a second record the coordinator has to reconcile, and a thread that
checked "am I known?" while another thread's registration was landing took a stale answer
for the truth (it set a finished submission aside as refused).

The rule: a request that may find the worker forgotten reads `epoch()` before it is sent; on
a "forgotten" answer it calls `again(seen, ...)`. Under one lock: if a registration finished
after that request was sent (the epoch moved), it only retries; else it checks (optionally)
that the coordinator still does not know the worker and registers. Every registration goes
through the lock, so a check inside it never races another registration.

Collaborators: `worker.daemon` (the loop and the lease-ahead thread; the registration itself),
`worker.submitter` (the sender thread).
"""

from __future__ import annotations

import threading
from typing import Callable


class Registrations:
    def __init__(self, register: Callable[[threading.Event], None]):
        self._register = register
        self._lock = threading.Lock()
        self._epoch = 0            # registrations completed by this process

    def epoch(self) -> int:
        """Read before a request whose answer may say the worker is forgotten."""
        return self._epoch

    def again(self, seen: int, stop: threading.Event,
              still_forgotten: Callable[[], bool] | None = None) -> bool:
        """Register again unless a registration finished since the epoch `seen`; True if the
        caller should retry its request (registered now or meanwhile), False if
        `still_forgotten` says the coordinator knows this worker (the answer meant something else)."""
        with self._lock:
            if self._epoch != seen:
                return True
            if still_forgotten is not None and not still_forgotten():
                return False
            self._register(stop)
            self._epoch += 1
            return True
