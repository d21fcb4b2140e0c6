"""Retries (backoff, 429, stop), the reachability record, JSON log lines and the status view."""

import json
import logging
import random
import threading

import pytest

from protocol.http import Rejected, Unavailable
from worker.errors import Stopped
from worker.retry import Reachability, retry_call
from worker.state import WorkerState
from worker.view import JsonFormatter, render


def flaky(failures):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= len(failures):
            raise failures[calls["n"] - 1]
        return "ok"

    return fn, calls


def test_unavailable_and_429_are_retried_until_success_and_reachability_is_tracked():
    changes = []
    reach = Reachability(lambda up, err: changes.append(up))
    fn, calls = flaky([Unavailable("down"), Rejected(429, "slow down", retry_after_s=0.01), Unavailable("down")])
    assert retry_call(fn, "x", threading.Event(), reach=reach, base_s=0.001, cap_s=0.002,
                      rng=random.Random(0)) == "ok"
    assert calls["n"] == 4 and reach.up and changes == [False, True]


def test_other_4xx_are_not_retried():
    fn, calls = flaky([Rejected(410, "lease expired")])
    with pytest.raises(Rejected):
        retry_call(fn, "x", threading.Event(), base_s=0.001)
    assert calls["n"] == 1


def test_a_stop_interrupts_the_backoff_and_give_up_returns_the_error():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        retry_call(lambda: (_ for _ in ()).throw(Unavailable("down")), "x", stop, base_s=10)
    with pytest.raises(Unavailable):
        retry_call(lambda: (_ for _ in ()).throw(Unavailable("down")), "x", threading.Event(),
                   base_s=0.001, cap_s=0.001, give_up_after_s=0.01)


def test_json_log_lines_carry_the_message_and_extras():
    rec = logging.LogRecord("worker", logging.WARNING, __file__, 1, "lease %s refused", ("l-1",), None)
    rec.lease_id = "l-1"
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "lease l-1 refused" and doc["level"] == "warning" and doc["lease_id"] == "l-1"


def test_status_view_shows_what_the_contributor_needs():
    from rich.console import Console

    st = WorkerState(peer_id="12D3KooWabc", coordinator_url="http://c", run_id="run")
    st.set(policy_version=3, newest_version=4, coordinator_up=False, coordinator_error="connection refused")
    st.progress(4, 5_000_000, 10_000_000)
    st.record_batch(1000, 2.0)
    st.add(submitted=5, accepted=3, rejected=1, credits_tokens=1234)
    console = Console(width=200, record=True)
    console.print(render(st.snapshot()))
    text = console.export_text()
    for part in ("12D3KooWabc", "unreachable", "v3", "newest v4", "downloading v4", "50%", "500.0 tokens/s",
                 "submitted 5", "accepted 3", "rejected 1", "1,234 accepted tokens"):
        assert part in text, part
