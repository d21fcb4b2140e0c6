"""The trainer's and the verifier's clients read the coordinator's answers bounded.

A claim answer (verification jobs with their submissions) and a batch answer (training groups)
are the largest answers in the protocol, so each is capped from what bounds it (the
coordinator's submission cap x jobs or groups asked for, with room), every other answer at a
small general cap. A broken or hostile coordinator (a wrong URL, a compromised host) answering
with a body that never ends must cost the service a clear `Unavailable` (retried like an outage)
within bounded time and memory, never a read without end.

The coordinator here is a raw HTTP/1.1 server on 127.0.0.1 (tests/hostile/raw_coordinator.py), so
its answers can be exactly as broken as a hostile one's.
"""

from __future__ import annotations

import threading
import time

import pytest

from protocol.errors import Stopped, Unavailable
from protocol.identity import KeyPair
from tests.hostile.raw_coordinator import HostileCoordinator, call_within
from tests.hostile.raw_coordinator import endless as endless_answer

ENDLESS_LIMIT = 600 << 20  # the server gives up sending after this much (then holds the body open)


@pytest.fixture
def endless():
    """A coordinator that answers every request with a chunked 200 whose body never ends."""
    c = HostileCoordinator(endless_answer(ENDLESS_LIMIT))
    yield c
    c.stop()


def test_the_trainers_batch_answer_is_cut_at_its_cap(endless):
    """POST /v1/trainer/batch answered without end: read whole, it grew the trainer's memory until
    the server gave up at 600 MiB, then waited on the open body. Bounded: Unavailable (retried as
    an outage, here stopped after the first failure) with at most the batch cap read."""
    from trainer.client import CoordinatorLink, batch_answer_cap

    stop = threading.Event()
    link = CoordinatorLink(endless.url, KeyPair.generate(), stop=stop, timeout_s=5.0, run_id="run")
    orig = link.client.post_signed

    def once(*a, **kw):
        try:
            return orig(*a, **kw)
        finally:
            stop.set()  # one attempt: the retry loop then ends with Stopped

    link.client.post_signed = once
    try:
        finished, exc = call_within(lambda: link.take_batch(16, 0, 0.0), 60.0)
    finally:
        link.close()
    assert finished, f"still reading an endless batch answer after 60 s ({endless.sent >> 20} MiB sent)"
    assert isinstance(exc, Stopped), exc
    cap = batch_answer_cap(16, link.max_submission_bytes)
    assert endless.sent <= cap + (64 << 20), f"{endless.sent >> 20} MiB read, cap {cap >> 20} MiB"


def test_the_trainers_run_info_is_read_at_the_small_cap(endless):
    from trainer.client import CoordinatorLink

    link = CoordinatorLink(endless.url, KeyPair.generate(), timeout_s=5.0, run_id="run")
    try:
        finished, exc = call_within(lambda: link.client.get("/v1/run"), 30.0)
    finally:
        link.close()
    assert finished and isinstance(exc, Unavailable), exc
    assert endless.sent <= 64 << 20, f"{endless.sent >> 20} MiB read for GET /v1/run"


def test_the_verifiers_claim_answer_is_cut_and_the_service_carries_on(endless):
    """POST /v1/verification/claim answered without end: the verifier's work loop read it whole
    (600 MiB, then a wait on the open body). Bounded: each claim fails at its cap with a clear
    error in /health's last_error, the loop retries, and a stop ends it promptly."""
    from protocol.http import SignedClient
    from verifier.service import VerifierService, claim_answer_cap
    from verifier.metrics import VerifierMetrics

    key = KeyPair.generate()
    client = SignedClient(endless.url, key, timeout_s=5.0, run_id="run")  # as the claim is read: its own cap
    service = VerifierService(client, coordinator_key=KeyPair.generate().public, tokenizer=None, models=None,
                              settings=None, ledger=None, metrics=VerifierMetrics(), batch_jobs=2)
    stop = threading.Event()
    t = threading.Thread(target=service.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while endless.requests < 2 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.1)
    try:
        assert t.is_alive(), "the work loop ended"
        assert endless.requests >= 2, (f"one claim answer still being read after 60 s "
                                       f"({endless.sent >> 20} MiB sent)")
        assert "passed the" in service.status()["last_error"], service.status()
        assert "coordinator_max_body_bytes" in service.status()["last_error"]  # what to raise, if honest
        cap = claim_answer_cap(2, service.max_submission_bytes)
        assert endless.sent <= endless.requests * (cap + (16 << 20)), f"{endless.sent >> 20} MiB read"
    finally:
        stop.set()
        t.join(30)
        client.close()
    assert not t.is_alive()
