"""A diagnostic for event-loop stalls: which code held a service's loop, and for how long.

Off unless `SWARMRL_LOOP_WATCH_MS` is set (a number of milliseconds). Then a daemon thread
asks the loop to run a no-op every half of that; when the no-op has not run within the
threshold, it takes the loop thread's stack at that moment, waits for the loop to come back,
and logs one warning with the stall's length, the innermost frames of what was running, and
where the loop thread's time went during the stall (Linux: /proc/self/task/<tid>/schedstat):
`on cpu` (it ran: the code itself was slow), `runnable` (it waited for a CPU other processes
or threads held: the machine was busy) and the rest, `blocked` (it slept: waiting for the
GIL held by another thread, a lock, or disk I/O).

    stop = loopwatch.watch_running_loop("coordinator")   # inside the loop (e.g. an app's lifespan)
    ...
    if stop: stop()

Why: a p99 latency is made of rare stalls, and a sampling profiler spreads them among all the
loop's ordinary work; the stack taken *during* a stall names it (bench/hostile.py's /health
p99 under attack was looked at this way). The watch costs one callback per period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("swarmrl.loopwatch")
ENV = "SWARMRL_LOOP_WATCH_MS"
FRAMES = 8  # innermost frames logged per stall


def threshold_from_env() -> float | None:
    """Seconds from SWARMRL_LOOP_WATCH_MS, or None when unset, not a number or not above 0."""
    try:
        ms = float(os.environ.get(ENV, ""))
    except ValueError:
        return None
    return ms / 1000 if ms > 0 else None


def watch_running_loop(name: str, threshold_s: float | None = None) -> Callable[[], None] | None:
    """Start watching the running loop (call from inside it); returns `stop`, or None when
    neither `threshold_s` nor the environment asks for a watch."""
    threshold = threshold_s if threshold_s is not None else threshold_from_env()
    if threshold is None:
        return None
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    loop_tid = threading.get_native_id()
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            ran = threading.Event()
            t0 = time.monotonic()
            try:
                loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # the loop closed
                return
            before = schedstat(loop_tid)
            if not ran.wait(threshold):
                frame = sys._current_frames().get(loop_thread)
                stack = traceback.format_stack(frame)[-FRAMES:] if frame is not None else []
                ran.wait(60)
                stalled = time.monotonic() - t0
                log.warning("%s: event loop blocked %.0f ms (%s); running then:\n%s", name, stalled * 1000,
                            time_split(before, schedstat(loop_tid), stalled), "".join(stack).rstrip())
            done.wait(threshold / 2)

    threading.Thread(target=run, name=f"loopwatch-{name}", daemon=True).start()
    return done.set


def schedstat(tid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of thread `tid` of this process since it
    started, or None where the kernel does not say (not Linux, or no scheduler statistics)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            on_cpu, waiting, _slices = f.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return None


def time_split(before: tuple[int, int] | None, after: tuple[int, int] | None, stalled_s: float) -> str:
    """Where `stalled_s` of a thread's wall time went, from two `schedstat` readings."""
    if before is None or after is None:
        return "no scheduler statistics"
    on_cpu = (after[0] - before[0]) / 1e6
    runnable = (after[1] - before[1]) / 1e6
    blocked = max(0.0, stalled_s * 1000 - on_cpu - runnable)
    return f"on cpu {on_cpu:.0f} ms, runnable {runnable:.0f} ms, blocked {blocked:.0f} ms"
