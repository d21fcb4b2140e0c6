"""protocol.loopwatch: a blocked event loop is reported with the code that blocked it; an idle
loop is not; off without the environment variable."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from protocol import loopwatch


def a_blocking_call() -> None:
    time.sleep(0.25)


def test_a_stall_is_logged_with_its_length_and_the_code_that_held_the_loop(caplog):
    caplog.set_level(logging.WARNING, logger="swarmrl.loopwatch")

    async def main() -> None:
        stop = loopwatch.watch_running_loop("test", threshold_s=0.05)
        try:
            await asyncio.sleep(0.3)          # idle: nothing to report
            assert not caplog.records
            a_blocking_call()                 # the loop is held 250 ms
            await asyncio.sleep(0.2)
        finally:
            stop()

    asyncio.run(main())
    (rec,) = caplog.records
    msg = rec.getMessage()
    assert "test: event loop blocked" in msg and "a_blocking_call" in msg
    assert 200 <= float(msg.split("blocked ")[1].split(" ms")[0]) < 1000


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv(loopwatch.ENV, raising=False)

    async def main():
        return loopwatch.watch_running_loop("test")

    assert asyncio.run(main()) is None
    monkeypatch.setenv(loopwatch.ENV, "nonsense")
    assert loopwatch.threshold_from_env() is None
    monkeypatch.setenv(loopwatch.ENV, "40")
    assert loopwatch.threshold_from_env() == 0.04


def a_spinning_call() -> None:
    end = time.thread_time() + 0.25
    while time.thread_time() < end:
        pass


def _split_of(caplog, run) -> dict[str, float]:
    caplog.clear()

    async def main() -> None:
        stop = loopwatch.watch_running_loop("test", threshold_s=0.05)
        try:
            run()
            await asyncio.sleep(0.2)
        finally:
            stop()

    asyncio.run(main())
    (rec,) = caplog.records
    split = rec.getMessage().split("(", 1)[1].split(")", 1)[0]   # "on cpu 250 ms, runnable 0 ms, blocked 1 ms"
    return {part.rsplit(" ", 2)[0]: float(part.rsplit(" ", 2)[1]) for part in split.split(", ")}


def test_a_stall_says_whether_the_loop_thread_ran_or_slept(caplog):
    """A loop held by code that sleeps (as a thread waiting for the GIL, a lock or the disk
    does) is `blocked`; one held by code that computes is `on cpu` or `runnable` (waiting
    for a CPU on a busy machine)."""
    if loopwatch.schedstat(threading.get_native_id()) is None:
        pytest.skip("this kernel gives no per-thread scheduler statistics")
    caplog.set_level(logging.WARNING, logger="swarmrl.loopwatch")
    slept = _split_of(caplog, a_blocking_call)
    assert slept["blocked"] >= 200 and slept["on cpu"] < 50
    spun = _split_of(caplog, a_spinning_call)
    assert spun["on cpu"] >= 200 and spun["blocked"] < 100
