"""Threads that run submitted work fairly: per-key queues served in turn, in two lanes.

The coordinator scores submissions on threads (`coordinator.api.Intake`): a scorer may take its
whole time limit on hostile text (3 s an item). With one first-in-first-out pool, every honest
submission queued behind an attacker's batch of such texts waited for all of them
(bench/hostile.py: submit p99 doubled under the payload and spam attackers). Here:

- each key (a submission's signer) has its own queue, and the keys with work waiting are served
  in turn, one item each (start-time fair queueing: each item is tagged with the lane's
  virtual time when its key starts waiting, or one past the key's previous item, and the
  lowest tag goes next): a key with 50 items waiting delays another key's item by the one in
  progress, not by 50, and a key that comes back at once does not jump the others;
- keys are in one of two lanes, `established` (workers with verified work accepted) and new
  (everyone else: fresh identities are free to make); established keys are served first, and
  new keys may occupy at most `threads - 1` of the threads (all of them when there is only one),
  so a thread is always free for established work when there are two or more.

The standard library's pools are first-in-first-out with no notion of who submitted what, hence
this small scheduler. `submit` returns a `concurrent.futures.Future`; a future cancelled before
its turn (its request went away) is skipped. Threads start on the first submission and end at
`close` (which waits for running work and cancels what waits).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

ESTABLISHED, NEW = True, False


class FairPool:
    def __init__(self, threads: int, name: str = "fairpool"):
        if threads < 1:
            raise ValueError("a FairPool needs at least one thread")
        self.threads = threads
        self.name = name
        self.new_limit = max(1, threads - 1)   # threads that new keys' work may hold at once
        self._cv = threading.Condition()
        self._queues: dict[tuple[bool, str], deque[tuple[Callable[[], Any], Future]]] = {}
        # per lane: waiting key -> (its next item's start tag, arrival order); the lane's virtual
        # time (the tag of the item started last); keys' finish tags still ahead of that time
        self._turns: dict[bool, dict[str, tuple[int, int]]] = {ESTABLISHED: {}, NEW: {}}
        self._vtime: dict[bool, int] = {ESTABLISHED: 0, NEW: 0}
        self._finish: dict[bool, dict[str, int]] = {ESTABLISHED: {}, NEW: {}}
        self._arrivals = 0
        self._running_new = 0
        self._workers: list[threading.Thread] = []
        self._closed = False

    def submit(self, key: str, established: bool, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            q = self._queues.get((established, key))
            if q is None:
                q = self._queues[(established, key)] = deque()
                self._arrivals += 1
                start = max(self._vtime[established], self._finish[established].pop(key, 0))
                self._turns[established][key] = (start, self._arrivals)
            q.append((fn, fut))
            if len(self._workers) < self.threads:
                t = threading.Thread(target=self._serve, name=f"{self.name}-{len(self._workers)}", daemon=True)
                self._workers.append(t)
                t.start()
            self._cv.notify()
        return fut

    def waiting(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Cancel what waits, let running work finish, end the threads."""
        with self._cv:
            self._closed = True
            for q in self._queues.values():
                for _, fut in q:
                    fut.cancel()
            self._queues.clear()
            for turns in (*self._turns.values(), *self._finish.values()):
                turns.clear()
            self._cv.notify_all()
            workers, self._workers = self._workers, []
        for t in workers:
            t.join()

    # -- the threads ------------------------------------------------------------------------------
    def _next(self) -> tuple[Callable[[], Any], Future, bool] | None:
        """The next item to run (under the lock), or None when nothing may run now."""
        lanes = (ESTABLISHED, NEW) if self._running_new < self.new_limit else (ESTABLISHED,)
        for lane in lanes:
            turns = self._turns[lane]
            while turns:
                key = min(turns, key=turns.__getitem__)   # the lowest start tag, then the earliest arrival
                q = self._queues[(lane, key)]
                fn, fut = q.popleft()
                tag, order = turns[key]
                self._vtime[lane] = tag
                finish = self._finish[lane]
                for k in [k for k, f in finish.items() if f <= tag]:   # no longer ahead: forget
                    del finish[k]
                if q:
                    turns[key] = (tag + 1, order)
                else:
                    del self._queues[(lane, key)], turns[key]
                    finish[key] = tag + 1
                if fut.set_running_or_notify_cancel():
                    return fn, fut, lane
        return None

    def _serve(self) -> None:
        while True:
            with self._cv:
                item = self._next()
                while item is None:
                    if self._closed:
                        return
                    self._cv.wait()
                    item = self._next()
                fn, fut, lane = item
                if lane is NEW:
                    self._running_new += 1
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)
            finally:
                with self._cv:
                    if lane is NEW:
                        self._running_new -= 1
                    self._cv.notify_all()
