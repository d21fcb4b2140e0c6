"""A thread-safe "something changed" signal that asyncio handlers can wait on.

The origin publishes from the trainer's thread and the relay verifies shards in its mirror
threads, while long-polls (`/v1/versions/latest?after=N`) and shard requests for a shard
still in flight wait inside the server's event loop. `Signal.notify()` may be called from
any thread; `await Signal.wait(generation, timeout)` returns as soon as the generation
moved past the one the caller saw before checking its condition, so no notification is
lost between "check" and "wait".
"""

from __future__ import annotations

import asyncio
import threading


class Signal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self.closed = False

    @property
    def generation(self) -> int:
        return self._generation

    def close(self) -> None:
        """The server is stopping: wake every waiter now and never block again."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        with self._lock:
            self._generation += 1
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    async def wait(self, seen: int, timeout_s: float) -> bool:
        """Wait until the generation differs from `seen` or `timeout_s` passes; True if it moved."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            if self._generation != seen or self.closed:
                return True
            self._waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout=max(0.0, timeout_s))
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters = [w for w in self._waiters if w[1] is not fut]


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
