"""protocol.loopwatch: a blocked event loop is reported with the code that blocked it; an idle
loop is not; off without the environment variable."""

from __future__ import annotations

import asyncio
import logging
import time

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
