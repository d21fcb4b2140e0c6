"""The operator's roles first: a bound on the swarm's requests in progress in one server process.

A request on a route open to anyone who can join (registration, heartbeats, leases, releases,
submissions, the public views) takes one of `limits.swarm_in_flight` places before its body is
parsed and its signature checked, and gives it back when it is answered. The routes of the
trainer, the verifier and the operator (restricted to configured keys, or called with the
operator token) and /health and /metrics never take a place, so they never queue behind the
swarm: with 1,000 unpaced workers on one coordinator, every request, the trainer's and the
verifier's too, waited ~2.5 s in the event loop's one queue, and the trainer took 6 groups a
second while 38 were submitted (bench/many_workers.py, 2026-12-07).

A request without a place waits for one, first come first served, at most `swarm_wait_s`
seconds and behind at most `swarm_waiting` others; otherwise it is answered 429 `busy` with a
Retry-After from the queue ahead of it (workers spool and retry). A waiting request costs its
headers and the first 64 KiB of its body in memory and no CPU: uvicorn stops reading a body
the app has not asked for. A held lease request gives its place back while it waits for room
(`set_aside`) and takes one again to try.

Runs on the event loop only (no locks): places are handed from a finishing request straight to
the next waiter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable

from coordinator.errors import RateLimited

_HELD: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("swarm_gate_held", default=None)
EWMA = 0.05  # weight of the newest place's hold time in the mean that Retry-After is estimated from


class SwarmGate:
    def __init__(self, places: int, waiting: int, max_wait_s: float,
                 observe_wait: Callable[[float], None] = lambda s: None):
        self.places = places
        self.waiting = waiting
        self.max_wait_s = max_wait_s
        self.observe_wait = observe_wait
        self.busy = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.mean_hold_s = 0.01

    def retry_after_s(self) -> float:
        """Seconds until the queue ahead of a new request has likely drained."""
        return min(30.0, max(1.0, len(self.waiters) * self.mean_hold_s / max(1, self.places)))

    async def _take(self) -> None:
        if self.busy < self.places and not self.waiters:
            self.busy += 1
            self.observe_wait(0.0)
            return
        if len(self.waiters) >= self.waiting:
            raise RateLimited("busy", f"the coordinator is serving {self.busy} workers' requests with "
                                      f"{len(self.waiters)} waiting; retry shortly", self.retry_after_s())
        t0 = time.monotonic()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait([fut], timeout=self.max_wait_s)
        except BaseException:  # cancelled (the client went away): a place handed over meanwhile goes on
            if fut.done() and not fut.cancelled():
                self._give()
            else:
                fut.cancel()
                self._forget(fut)
            raise
        if not fut.done():
            fut.cancel()
            self._forget(fut)
            raise RateLimited("busy", f"no place for a worker's request within {self.max_wait_s:.0f} s "
                                      f"({len(self.waiters)} waiting); retry shortly", self.retry_after_s())
        self.observe_wait(time.monotonic() - t0)

    def _forget(self, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(fut)

    def _give(self) -> None:
        """Hand the place to the first waiter still waiting, or free it."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.busy -= 1

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """Hold a place for the body of the `async with` (429 `busy` if none comes in time)."""
        await self._take()
        held = [True]  # set_aside clears it while the place is given back
        token = _HELD.set(held)
        t0 = time.monotonic()
        try:
            yield
        finally:
            _HELD.reset(token)
            if held[0]:
                self.mean_hold_s += EWMA * (time.monotonic() - t0 - self.mean_hold_s)
                self._give()

    @contextlib.asynccontextmanager
    async def set_aside(self) -> AsyncIterator[None]:
        """Inside `place`: give the place back for the body (a wait that needs no CPU), then
        take one again (which may wait, or raise 429 `busy`). Outside one: nothing."""
        held = _HELD.get()
        if held is None or not held[0]:
            yield
            return
        held[0] = False
        self._give()
        yield  # an exception here ends the request: no place is taken again
        await self._take()
        held[0] = True
