"""A coordinator the contributor does not control (a wrong or compromised URL) answers with
what no coordinator would: a body that never ends, a body dripped a byte at a time, a gzip
bomb, a 200 that is no JSON, an error body nested past the parser's recursion limit, an error
detail of megabytes. The worker's client (worker.coordinator_client over protocol.http) must
turn each into `Unavailable`/`Rejected` (what its threads handle) within bounded time and
memory: never an exception that ends a thread or the daemon, never a read without end.

The coordinator here is a raw HTTP/1.1 server on 127.0.0.1 (http.server), so the answers can
be exactly as broken as a hostile one's.
"""

from __future__ import annotations

import time
import tracemalloc
import zlib

import pytest

from protocol.errors import Rejected, Unavailable
from protocol.identity import KeyPair
from protocol.messages import Heartbeat
from tests.hostile.raw_coordinator import HostileCoordinator, call_within, endless, head
from worker.coordinator_client import MAX_ANSWER_BYTES, CoordinatorClient


@pytest.fixture
def hostile():
    made: list[HostileCoordinator] = []

    def make(answer) -> HostileCoordinator:
        made.append(HostileCoordinator(answer))
        return made[-1]

    yield make
    for h in made:
        h.stop()


def _client(url: str, timeout_s: float = 5.0) -> CoordinatorClient:
    c = CoordinatorClient(url, KeyPair.generate(), timeout_s=timeout_s)
    c.http.run_id = "run"  # as after GET /v1/run: signed requests can be sent
    return c


def test_an_endless_answer_is_cut_at_the_cap(hostile):
    """GET /v1/run answered with a chunked body that never ends (1 MiB chunks, until the client
    leaves; this server stops at 400 MiB and then holds the body open): read without a cap it grew
    the worker's memory without end."""
    coord = hostile(endless(400 << 20))
    c = _client(coord.url, timeout_s=5.0)
    try:
        finished, exc = call_within(c.run_info, 30.0)
    finally:
        c.close()
    assert finished, f"still reading an endless answer after 30 s ({coord.sent / 2**20:.0f} MiB sent)"
    assert isinstance(exc, Unavailable), exc
    assert coord.sent <= MAX_ANSWER_BYTES + (64 << 20), f"{coord.sent / 2**20:.0f} MiB read"


def test_a_dripped_answer_has_a_deadline(hostile):
    """A head at once, then the body a byte every 0.2 s: each read came within httpx's timeout,
    so a 1 MB body took 2.3 days. The answer must be complete within the client's timeout."""
    def drip(h, owner) -> None:
        owner.write(h, head(length=1_000_000).encode())
        while not owner.done.is_set():
            owner.write(h, b" ")
            time.sleep(0.2)

    coord = hostile(drip)
    c = _client(coord.url, timeout_s=2.0)
    try:
        t0 = time.monotonic()
        finished, exc = call_within(c.run_info, 20.0)
    finally:
        c.close()
    assert finished, "a dripped answer held the client for 20 s with a 2 s timeout"
    assert isinstance(exc, Unavailable), exc
    assert time.monotonic() - t0 < 10.0


def test_a_compressed_answer_is_not_inflated(hostile):
    """A 200 with content-encoding gzip: 0.26 MB on the wire, 256 MiB inflated in the worker's
    memory before parsing failed. The worker asks for identity and refuses anything else unread."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join([*(z.compress(zeros) for _ in range(256)), z.flush()])

    def gzipped(h, owner) -> None:
        owner.write(h, head(length=len(bomb), extra="content-encoding: gzip").encode() + bomb)

    coord = hostile(gzipped)
    c = _client(coord.url)
    tracemalloc.start()
    try:
        with pytest.raises(Unavailable):
            c.run_info()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        c.close()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated for a {len(bomb) / 1e6:.2f} MB answer"


@pytest.mark.parametrize("body", [b"<html>busy</html>", b"[" * 100_000])
def test_a_200_that_is_no_json_is_unavailable(hostile, body):
    """Heartbeats and releases read their 200 as plain JSON: text raised JSONDecodeError (a
    ValueError) and deep nesting RecursionError, neither of which the housekeeping thread or the
    daemon's release catch: the thread died (no more heartbeats, verdicts, ban checks) or the
    daemon ended with a traceback."""
    def garbage(h, owner) -> None:
        owner.write(h, head(length=len(body)).encode() + body)

    c = _client(hostile(garbage).url)
    try:
        with pytest.raises(Unavailable, match="not JSON"):
            c.heartbeat(Heartbeat())
        with pytest.raises(Unavailable, match="not JSON"):
            c.release(["lease-1"])
    finally:
        c.close()


@pytest.mark.parametrize("status", [503, 409])
def test_an_error_body_nested_past_the_recursion_limit_is_still_an_error(hostile, status):
    """A 503 (or 4xx) whose body is 100,000 '[': reading its detail raised RecursionError out
    of `check_response`, past `retry_call`: GET /v1/run at start-up ended the daemon, at every
    restart (a crash loop for as long as the coordinator answers so)."""
    body = b"[" * 100_000

    def nested(h, owner) -> None:
        owner.write(h, head(status=status, length=len(body)).encode() + body)

    c = _client(hostile(nested).url)
    try:
        with pytest.raises(Unavailable if status >= 500 else Rejected) as info:
            c.run_info()
    finally:
        c.close()
    assert len(str(info.value)) < 1000


def test_an_error_detail_of_megabytes_is_cut(hostile):
    """The detail of a refusal goes into log lines and the status page; 8 MB of it made each
    refusal an 8 MB log line (a heartbeat's every 5 s: the log's disk filled within hours)."""
    body = b'{"detail": "' + b"A" * 8_000_000 + b'"}'

    def wordy(h, owner) -> None:
        owner.write(h, head(status=400, length=len(body)).encode() + body)

    c = _client(hostile(wordy).url)
    try:
        with pytest.raises(Rejected) as info:
            c.heartbeat(Heartbeat())
    finally:
        c.close()
    assert info.value.status == 400
    assert len(info.value.detail) <= 1000 and len(str(info.value)) <= 1100


def test_a_dripped_answer_head_has_a_deadline(hostile):
    """The answer's head itself dripped, a byte every 0.5 s (a 10 KB header: h11 accepts up to
    16 KiB): every read came within httpx's timeout, so the client waited as long as the
    coordinator liked (still waiting after 15 s with a 2 s timeout; 16 KiB at one byte per 29 s
    would be five days). The head must be complete within the client's timeout."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-pad: " + b"a" * 10_000

    def drip_head(h, owner) -> None:
        for b in head:
            if owner.done.is_set():
                return
            owner.write(h, bytes([b]))
            time.sleep(0.5)

    c = _client(hostile(drip_head).url, timeout_s=2.0)
    try:
        t0 = time.monotonic()
        finished, exc = call_within(c.run_info, 15.0)
    finally:
        c.close()
    assert finished, "a dripped head held the client for 15 s with a 2 s timeout"
    assert isinstance(exc, Unavailable), exc
    assert time.monotonic() - t0 < 6.0


def test_a_redirect_is_not_followed(hostile):
    """A 302 to another host (or a loop back to itself) is not followed: it is no answer of the
    coordinator's, and the other host never sees the worker's (signed) request. Checked, no hole:
    httpx does not follow redirects unless asked; kept as a regression test."""
    elsewhere = hostile(lambda h, owner: owner.write(h, head(length=2).encode() + b"{}"))

    def redirect(h, owner) -> None:
        owner.write(h, head(status=302, length=0, extra=f"location: {elsewhere.url}/v1/run").encode())

    c = _client(hostile(redirect).url)
    try:
        with pytest.raises(Unavailable):
            c.run_info()
        with pytest.raises(Unavailable):
            c.heartbeat(Heartbeat())
    finally:
        c.close()
    assert elsewhere.sent == 0
