"""The one retry rule of every role (`protocol.retry.retry_call`): backoff with jitter while a
service is unavailable, the server's Retry-After on a 429, other refusals raised at once, a stop
interrupting the wait. Real servers on loopback: tests/unit/trainer/test_trainer_run_terms.py
(the trainer waits out a 429) and the verifier's and worker's own tests."""

import random
import threading
import time

import pytest

from protocol.errors import ProtocolError, Rejected, Stopped, Unavailable
from protocol.retry import Reachability, retry_call


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


def test_retry_on_names_more_errors_and_refusals_are_retried_only_when_named_themselves():
    fn, calls = flaky([OSError("disk full"), ProtocolError("relay down")])
    assert retry_call(fn, "x", threading.Event(), retry_on=(ProtocolError, OSError), base_s=0.001) == "ok"
    assert calls["n"] == 3
    fn, calls = flaky([Rejected(403, "not an operator key")])
    with pytest.raises(Rejected):  # a ProtocolError, but not named itself: raised at once
        retry_call(fn, "x", threading.Event(), retry_on=(ProtocolError,), base_s=0.001)
    fn, calls = flaky([Rejected(403, "not yet"), Unavailable("down")])
    assert retry_call(fn, "x", threading.Event(), retry_on=(Unavailable, Rejected), base_s=0.001) == "ok"
    assert calls["n"] == 3


def test_the_callers_hook_sees_every_wait_and_a_429_waits_as_long_as_the_server_says():
    seen = []
    fn, calls = flaky([Unavailable("down"), Rejected(429, "busy", retry_after_s=0.2)])
    t0 = time.monotonic()
    assert retry_call(fn, "x", None, base_s=0.001, cap_s=0.001, on_retry=lambda e, w: seen.append((type(e), w))) == "ok"
    assert time.monotonic() - t0 >= 0.2
    assert [t for t, _ in seen] == [Unavailable, Rejected] and seen[1][1] == 0.2


def test_a_stopped_caller_may_still_make_its_first_attempt():
    stop = threading.Event()
    stop.set()
    assert retry_call(lambda: "sent", "delivering a verdict", stop, first_try_when_stopped=True) == "sent"
    fn, calls = flaky([Unavailable("down")])
    with pytest.raises(Stopped, match="stopped while delivering a verdict"):
        retry_call(fn, "delivering a verdict", stop, first_try_when_stopped=True, base_s=10)
    assert calls["n"] == 1
