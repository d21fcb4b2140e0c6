"""coordinator.fairpool: per-key turns, the established lane first, new keys never hold every
thread, cancelled work skipped, errors handed back, close cancels what waits."""

from __future__ import annotations

import threading
import time

import pytest

from coordinator.fairpool import FairPool


class Gate:
    """Work items that record their start order and wait for the test to let them finish."""

    def __init__(self):
        self.started: list[str] = []
        self.events: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def item(self, name: str):
        ev = self.events.setdefault(name, threading.Event())

        def run():
            with self.lock:
                self.started.append(name)
            assert ev.wait(10), f"{name} was never released"
            return name
        return run

    def release(self, name: str) -> None:
        self.events.setdefault(name, threading.Event()).set()

    def wait_started(self, name: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while name not in self.started:
            assert time.monotonic() < deadline, f"{name} did not start; started: {self.started}"
            time.sleep(0.005)


@pytest.fixture
def gate():
    g = Gate()
    yield g
    for ev in g.events.values():
        ev.set()


def test_a_key_with_many_items_waiting_delays_another_by_one_item(gate):
    """One thread: A's five items are queued first, then B's one; B runs right after A's first
    (in a first-in-first-out pool it ran after all five)."""
    pool = FairPool(1)
    try:
        futs = [pool.submit("A", False, gate.item(f"a{i}")) for i in range(5)]
        gate.wait_started("a0")
        fb = pool.submit("B", False, gate.item("b0"))
        for name in ("a0", "b0", "a1", "a2", "a3", "a4"):
            gate.wait_started(name)
            gate.release(name)
        assert [f.result(5) for f in futs] == [f"a{i}" for i in range(5)] and fb.result(5) == "b0"
        assert gate.started == ["a0", "b0", "a1", "a2", "a3", "a4"]
    finally:
        pool.close()


def test_established_keys_go_first(gate):
    """New keys' items wait while an established key's item is queued behind them; among new
    keys, new2's first item goes before new1's second."""
    pool = FairPool(1)
    try:
        pool.submit("new1", False, gate.item("n0"))
        gate.wait_started("n0")
        pool.submit("new1", False, gate.item("n1"))
        pool.submit("new2", False, gate.item("m0"))
        pool.submit("honest", True, gate.item("h0"))
        for name in ("n0", "h0", "m0", "n1"):
            gate.wait_started(name)
            gate.release(name)
        assert gate.started == ["n0", "h0", "m0", "n1"]
    finally:
        pool.close()


def test_new_keys_never_hold_every_thread(gate):
    """Two threads: new keys' work holds one, the second new item waits, and an established
    item runs on the free thread at once."""
    pool = FairPool(2)
    try:
        pool.submit("evil1", False, gate.item("e1"))
        pool.submit("evil2", False, gate.item("e2"))
        gate.wait_started("e1")
        time.sleep(0.1)
        assert gate.started == ["e1"]            # e2 waits: new keys may hold one thread of two
        fh = pool.submit("honest", True, gate.item("h"))
        gate.wait_started("h")
        gate.release("h")
        assert fh.result(5) == "h"
        assert "e2" not in gate.started
        gate.release("e1")
        gate.wait_started("e2")
        gate.release("e2")
    finally:
        pool.close()


def test_one_thread_serves_new_keys_too(gate):
    pool = FairPool(1)
    try:
        assert pool.submit("new", False, lambda: 7).result(5) == 7
    finally:
        pool.close()


def test_cancelled_work_is_skipped_and_errors_are_handed_back(gate):
    pool = FairPool(1)
    try:
        pool.submit("A", True, gate.item("a0"))
        gate.wait_started("a0")
        ran = []
        gone = pool.submit("B", True, lambda: ran.append("b"))
        assert gone.cancel()
        bad = pool.submit("C", True, lambda: 1 / 0)
        gate.release("a0")
        with pytest.raises(ZeroDivisionError):
            bad.result(5)
        assert ran == [] and pool.waiting() == 0
    finally:
        pool.close()


def test_close_cancels_waiting_work_and_lets_running_work_finish(gate):
    pool = FairPool(1)
    running = pool.submit("A", True, gate.item("a0"))
    gate.wait_started("a0")
    waiting = pool.submit("A", True, gate.item("a1"))
    closer = threading.Thread(target=pool.close)
    closer.start()
    time.sleep(0.05)
    assert waiting.cancelled()
    gate.release("a0")
    closer.join(5)
    assert not closer.is_alive() and running.result(5) == "a0" and gate.started == ["a0"]
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("A", True, lambda: None)
