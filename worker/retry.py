"""Retrying network calls: exponential backoff with full jitter, interruptible by a stop.

Every call the daemon makes to the coordinator or a relay goes through `retry_call`: an
`Unavailable` (no answer, timeout, 5xx) or a 429 is retried after a delay from
`protocol.http.backoff_delays` (or the server's Retry-After), for as long as it takes — a
coordinator down for minutes only pauses the daemon. Any other `Rejected` (4xx) is returned
to the caller at once: resending the same message would get the same answer. Waiting uses
the stop event, so SIGTERM interrupts a retry loop within milliseconds (raising `Stopped`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

from protocol.http import Rejected, Unavailable, backoff_delays
from worker.errors import Stopped

T = TypeVar("T")
log = logging.getLogger(__name__)


class Reachability:
    """Whether a peer answered last time, and since when it does not (for the status view)."""

    def __init__(self, on_change: Callable[[bool, str], None] | None = None) -> None:
        self.down_since: float | None = None
        self.last_error = ""
        self.on_change = on_change

    @property
    def up(self) -> bool:
        return self.down_since is None


def retry_call(fn: Callable[[], T], what: str, stop: threading.Event, *,
               reach: Reachability | None = None, base_s: float = 0.5, cap_s: float = 15.0,
               give_up_after_s: float | None = None, rng: random.Random | None = None) -> T:
    """Call `fn` until it returns; retry on Unavailable and 429 with backoff + jitter.

    Raises Stopped when `stop` is set while waiting, the last Unavailable after
    `give_up_after_s` (None: never give up), and any other Rejected at once."""
    reach = reach or Reachability()
    delays = backoff_delays(base_s, cap_s, rng)
    started = time.monotonic()
    while True:
        if stop.is_set():
            raise Stopped(f"stopped while {what}")
        try:
            result = fn()
        except Unavailable as exc:
            wait = next(delays)
            _note_down(reach, what, str(exc), wait)
            if give_up_after_s is not None and time.monotonic() - started + wait > give_up_after_s:
                raise
        except Rejected as exc:
            if exc.status != 429:
                _note_up(reach, what)
                raise
            wait = exc.retry_after_s if exc.retry_after_s is not None else next(delays)
            log.info("%s: rate limited by the server; waiting %.1f s", what, wait)
        else:
            _note_up(reach, what)
            return result
        if stop.wait(wait):
            raise Stopped(f"stopped while {what}")


def _note_down(reach: Reachability, what: str, err: str, wait: float) -> None:
    if reach.down_since is None:
        reach.down_since = time.time()
        log.warning("%s failed (%s); retrying with backoff", what, err)
        if reach.on_change:
            reach.on_change(False, err)
    else:
        log.debug("%s still failing (%s); next try in %.1f s", what, err, wait)
    reach.last_error = err


def _note_up(reach: Reachability, what: str) -> None:
    if reach.down_since is not None:
        log.warning("%s: reachable again after %.0f s", what, time.time() - reach.down_since)
        reach.down_since = None
        reach.last_error = ""
        if reach.on_change:
            reach.on_change(True, "")
