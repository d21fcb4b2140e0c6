"""Retrying calls to another service: exponential backoff with full jitter, the server's
Retry-After on a 429, interruptible by a stop event. The one retry rule of every role.

Every call a role makes to the coordinator, and every loop that keeps a download or a poll
going, goes through `retry_call`; a coordinator down for minutes only pauses the caller:

    what `fn()` does                          what retry_call does
    returns                                   returns the value
    raises Unavailable (no answer, timeout,   waits the next backoff delay, calls again
      5xx) or another type in `retry_on`
    raises Rejected with status 429           waits the server's Retry-After (or the next
                                              backoff delay), calls again
    raises another Rejected (4xx)             raises it at once: resending the same message
                                              gets the same answer (unless `retry_on` names
                                              `Rejected` itself: loops that must go on)
    raises anything else                      raises it
    `stop` is set (before a call, or while    raises `Stopped` (with `first_try_when_stopped`
      waiting)                                the first call is still made)
    failing for longer than give_up_after_s   raises the last error

Delays come from `backoff_delays` (full jitter: uniform in [0, min(cap, base * 2^attempt)]),
so many clients that lost the same service do not come back in step. Waiting is
`stop.wait`, so SIGTERM interrupts a retry within milliseconds. `Reachability` records
whether the service answered last time and since when it does not (the worker's status
view); failures are logged once when they start and once when they end, unless the caller
logs them itself (`on_retry`).

Collaborators: `protocol.http` raises `Rejected`/`Unavailable` (`protocol.errors`); the
worker daemon, the verifier (claims, verdicts, the run, its prefetcher), the worker's policy
sync and the trainer's coordinator link call `retry_call`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from protocol.errors import Rejected, Stopped, Unavailable

T = TypeVar("T")
log = logging.getLogger("swarmrl.retry")

RetryHook = Callable[[BaseException, float], None]


def backoff_delays(base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: an endless iterator of sleep durations."""
    r = rng or random.Random()
    attempt = 0
    while True:
        yield r.uniform(0, min(cap_s, base_s * (2 ** attempt)))
        attempt = min(attempt + 1, 30)


class Reachability:
    """Whether a peer answered last time, and since when it does not (for the status view)."""

    def __init__(self, on_change: Callable[[bool, str], None] | None = None) -> None:
        self.down_since: float | None = None
        self.last_error = ""
        self.on_change = on_change

    @property
    def up(self) -> bool:
        return self.down_since is None


def retry_call(fn: Callable[[], T], what: str, stop: threading.Event | None, *,
               retry_on: tuple[type[BaseException], ...] = (Unavailable,), reach: Reachability | None = None,
               base_s: float = 0.5, cap_s: float = 15.0, give_up_after_s: float | None = None,
               rng: random.Random | None = None, on_retry: RetryHook | None = None,
               first_try_when_stopped: bool = False) -> T:
    """Call `fn` until it returns, by the rule in the module docstring.

    `what` names the call in log lines and in `Stopped` ("stopped while <what>"). `on_retry(exc,
    wait)` is called before each wait (the caller's log line and metrics; then this module does
    not log the failure). `stop` None: nothing can stop the retries but `give_up_after_s`."""
    stop = stop if stop is not None else threading.Event()
    reach = reach or Reachability()
    delays = backoff_delays(base_s, cap_s, rng)
    refusals_retried = Rejected in retry_on
    started = time.monotonic()

    def wait_after(exc: BaseException) -> float:
        if isinstance(exc, Rejected) and exc.status == 429:  # not a failure: the server asks for patience
            wait = exc.retry_after_s if exc.retry_after_s is not None else next(delays)
            if on_retry is not None:
                on_retry(exc, wait)
            else:
                log.info("%s: rate limited by the server; waiting %.1f s", what, wait)
            return wait
        wait = next(delays)
        _note_down(reach, what, str(exc), wait, quiet=on_retry is not None)
        if give_up_after_s is not None and time.monotonic() - started + wait > give_up_after_s:
            raise exc
        if on_retry is not None:
            on_retry(exc, wait)
        return wait

    first = True
    while True:
        if stop.is_set() and not (first and first_try_when_stopped):
            raise Stopped(f"stopped while {what}")
        first = False
        try:
            result = fn()
        except Rejected as exc:
            if exc.status != 429 and not refusals_retried:
                _note_up(reach, what)
                raise
            wait = wait_after(exc)
        except retry_on as exc:
            wait = wait_after(exc)
        else:
            _note_up(reach, what)
            return result
        if stop.wait(wait):
            raise Stopped(f"stopped while {what}")


def log_failures(logger: logging.Logger, what: str) -> RetryHook:
    """An `on_retry` hook for loops that download into a local folder: a local OSError (disk
    full, permissions) is logged as an error, any other failure as a warning, each with the wait."""
    def hook(exc: BaseException, wait: float) -> None:
        if isinstance(exc, OSError):
            logger.error("%s: cannot write to disk: %s (retrying in %.1f s)", what, exc, wait)
        else:
            logger.warning("%s: %s (retrying in %.1f s)", what, exc, wait)

    return hook


def _note_down(reach: Reachability, what: str, err: str, wait: float, *, quiet: bool = False) -> None:
    if reach.down_since is None:
        reach.down_since = time.time()
        if not quiet:
            log.warning("%s failed (%s); retrying with backoff", what, err)
        if reach.on_change:
            reach.on_change(False, err)
    elif not quiet:
        log.debug("%s still failing (%s); next try in %.1f s", what, err, wait)
    reach.last_error = err


def _note_up(reach: Reachability, what: str) -> None:
    if reach.down_since is not None:
        log.warning("%s: reachable again after %.0f s", what, time.time() - reach.down_since)
        reach.down_since = None
        reach.last_error = ""
        if reach.on_change:
            reach.on_change(True, "")
