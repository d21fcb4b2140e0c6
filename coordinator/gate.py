"""The operator's roles first: a bound on the swarm's requests in progress in one server process.

A request on a route open to anyone who can join (registration, heartbeats, leases, releases,
submissions, the public views) takes one of `limits.swarm_in_flight` places before its body is
parsed and its signature checked, and gives it back when it is answered. The routes of the
trainer, the verifier and the operator (restricted to configured keys, or called with the
operator token) and /health and /metrics never take a place, so they never queue behind the
swarm: with 1,000 unpaced workers on one coordinator, every request, the trainer's and the
verifier's too, waited ~2.5 s in the event loop's one queue, and the trainer took 6 groups a
second while 38 were submitted (bench/many_workers.py, 2026-12-07).

A request without a place waits for one, at most `swarm_wait_s` seconds and behind at most
`swarm_waiting` others; otherwise it is answered 429 `busy` with a Retry-After from the queue
ahead of it (workers spool and retry). Places go to the waiting client addresses in turn (first
come first served within one address; an IPv6 address counts by its /64, as in
`protocol.guard`), so an address with many connections or identities gets no more places than
any other waiting address. A waiting request costs its
headers and the first 64 KiB of its body in memory and no CPU: uvicorn stops reading a body
the app has not asked for. A held lease request gives its place back while it waits for room
(`set_aside`) and takes one again to try; so does a request whose body is not in within
`coordinator.api.BODY_IN_PLACE_S` of taking its place, until the body is in (bodies dripped
in by one address's 32 connections held every place for body_timeout_s).

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

_HELD: contextvars.ContextVar[list | None] = contextvars.ContextVar("swarm_gate_held", default=None)
EWMA = 0.05  # weight of the newest place's hold time in the mean that Retry-After is estimated from


class SwarmGate:
    def __init__(self, places: int, waiting: int, max_wait_s: float,
                 observe_wait: Callable[[float], None] = lambda s: None):
        self.places = places
        self.waiting = waiting
        self.max_wait_s = max_wait_s
        self.observe_wait = observe_wait
        self.busy = 0
        # waiting requests by client address key, the keys in the order they are served (a key
        # whose request was just served goes to the back)
        self.queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self.n_waiting = 0
        self.mean_hold_s = 0.01

    def retry_after_s(self) -> float:
        """Seconds until the queue ahead of a new request has likely drained."""
        return min(30.0, max(1.0, self.n_waiting * self.mean_hold_s / max(1, self.places)))

    async def _take(self, key: str) -> None:
        if self.busy < self.places and not self.n_waiting:
            self.busy += 1
            self.observe_wait(0.0)
            return
        if self.n_waiting >= self.waiting:
            raise RateLimited("busy", f"the coordinator is serving {self.busy} workers' requests with "
                                      f"{self.n_waiting} waiting; retry shortly", self.retry_after_s())
        t0 = time.monotonic()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queues.setdefault(key, collections.deque()).append(fut)
        self.n_waiting += 1
        try:
            await asyncio.wait([fut], timeout=self.max_wait_s)
        except BaseException:  # cancelled (the client went away): a place handed over meanwhile goes on
            if fut.done() and not fut.cancelled():
                self._give()
            else:
                fut.cancel()
                self._forget(key, fut)
            raise
        if not fut.done():
            fut.cancel()
            self._forget(key, fut)
            raise RateLimited("busy", f"no place for a worker's request within {self.max_wait_s:.0f} s "
                                      f"({self.n_waiting} waiting); retry shortly", self.retry_after_s())
        self.observe_wait(time.monotonic() - t0)

    def _forget(self, key: str, fut: asyncio.Future[None]) -> None:
        queue = self.queues.get(key)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(fut)
            self.n_waiting -= 1
        if not queue:
            del self.queues[key]

    def _give(self) -> None:
        """Hand the place to the next address's first waiter (addresses in turn), or free it."""
        while self.queues:
            key = next(iter(self.queues))
            queue = self.queues.pop(key)
            fut = queue.popleft()
            self.n_waiting -= 1
            if queue:
                self.queues[key] = queue  # to the back: every other waiting address comes first
            if not fut.done():
                fut.set_result(None)
                return
        self.busy -= 1

    @contextlib.asynccontextmanager
    async def place(self, key: str = "") -> AsyncIterator[None]:
        """Hold a place for the body of the `async with` (429 `busy` if none comes in time).
        `key`: the client's address key; waiting addresses are served in turn."""
        await self._take(key)
        # [holding, address key, since when]: set_aside clears held[0] while the place is given back
        held = [True, key, time.monotonic()]
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            if held[0]:
                self.mean_hold_s += EWMA * (time.monotonic() - held[2] - self.mean_hold_s)
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
        await self._take(held[1])
        held[0], held[2] = True, time.monotonic()
