"""Waits the coordinator asks for are untrusted input (protocol.http.sane_wait):
a Retry-After of text, NaN, infinity, 1e308, a negative number or 0, and an empty lease
answer's retry_after_s of 1e308, neither crash a worker thread, put it to sleep for years,
nor make it retry in a busy loop."""

from __future__ import annotations

import math
import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from protocol.errors import Rejected, Stopped
from protocol.http import MAX_RETRY_AFTER_S, MIN_RETRY_AFTER_S, ServerThread
from protocol.identity import KeyPair
from protocol.retry import retry_call
from tests.waiting import wait_until
from worker.coordinator_client import CoordinatorClient


@pytest.fixture
def limiter():
    """A coordinator whose every GET /v1/policy answers 429 with the Retry-After it is told."""
    app = FastAPI()
    box = {"retry_after": "1", "calls": 0}

    @app.get("/v1/policy")
    def policy():
        box["calls"] += 1
        return JSONResponse({"detail": "slow down"}, status_code=429, headers={"retry-after": box["retry_after"]})

    server = ServerThread(app).start()
    box["url"] = server.url
    try:
        yield box
    finally:
        server.stop()


@pytest.mark.parametrize("header, expected", [
    ("soon", None), ("nan", None), ("inf", None), ("-inf", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ("1e308", MAX_RETRY_AFTER_S), ("1e9", MAX_RETRY_AFTER_S), ("-5", MIN_RETRY_AFTER_S), ("0", MIN_RETRY_AFTER_S),
    ("3", 3.0),
])
def test_a_retry_after_header_is_read_as_a_bounded_number_or_not_at_all(limiter, header, expected):
    limiter["retry_after"] = header
    coord = CoordinatorClient(limiter["url"], KeyPair.generate())
    try:
        with pytest.raises(Rejected) as info:
            coord.policy()
    finally:
        coord.close()
    assert info.value.status == 429
    got = info.value.retry_after_s
    assert got == expected and (got is None or math.isfinite(got))


@pytest.mark.parametrize("header", ["soon", "1e308", "-5"])
def test_a_thread_retrying_under_a_hostile_retry_after_keeps_retrying_and_stops_on_request(limiter, header):
    """Before: 'soon' raised ValueError and 1e308 OverflowError out of retry_call (the sender or
    housekeeping thread died silently), and -5 retried in a busy loop."""
    limiter["retry_after"] = header
    coord = CoordinatorClient(limiter["url"], KeyPair.generate())
    stop = threading.Event()
    out: list[BaseException] = []

    def run():
        try:
            retry_call(coord.policy, "asking for the policy", stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        time.sleep(1.5)
        assert t.is_alive(), out
        assert 1 <= limiter["calls"] <= 6, limiter["calls"]  # waited between tries, never a busy loop
    finally:
        stop.set()
        t.join(10)
        coord.close()
    assert not t.is_alive() and len(out) == 1 and isinstance(out[0], Stopped), out


def test_an_empty_lease_answer_with_a_huge_retry_after_neither_crashes_nor_stalls_the_daemon(
        fake, versions, start_daemon, monkeypatch):
    """Before: retry_after_s=1e308 (finite, so the wire type accepts it) raised OverflowError out
    of the main loop, and 1e9 would have slept for 31 years; now it is capped at MAX_IDLE_WAIT_S."""
    import worker.daemon

    monkeypatch.setattr(worker.daemon, "MAX_IDLE_WAIT_S", 1.0, raising=False)
    versions.publish(0)
    fake.tasks_left = 0
    fake.empty_retry_s = 1e308
    r = start_daemon()
    wait_until(lambda: len(fake.lease_waits) >= 1, what="a first lease request", timeout=30)
    time.sleep(0.5)
    fake.tasks_left = None   # work again: picked up within the capped wait
    wait_until(lambda: fake.submissions, what="a submission after the capped wait", timeout=30)
    r.stop()
    assert r.error is None, r.error
