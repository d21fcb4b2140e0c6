"""shardcast.front against slow and greedy clients (FrontLimits): slowloris heads and bodies are
cut at their timeouts, connections per address are capped, bodies are capped per route; real
sockets on loopback, short limits."""

from __future__ import annotations

import http.client
import json
import random
import socket
import time

import pytest
from test_shardcast_front import OFFSET, SIZE, Catalog

from shardcast.config import FrontLimits
from shardcast.node_server import NodeServer

LIMITS = FrontLimits(header_timeout_s=1.0, body_timeout_s=1.0, idle_timeout_s=5.0, max_connections_per_address=3,
                     body_caps={"/v1/versions": 64})


@pytest.fixture
def srv(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(1).randbytes(OFFSET + SIZE + 500))
    s = NodeServer(Catalog(blob, tmp_path / "gone"), title="t", host="127.0.0.1", port=0, limits=LIMITS).start()
    yield s
    s.stop()


def refusals(srv, reason: str) -> float:
    return srv.front.m.front_refusals.labels(reason)._value.get()


def raw(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(10)
    return s


def answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def drip(s: socket.socket, data: bytes, every_s: float) -> float:
    """Send `data` a byte at a time; seconds until the server stopped taking it."""
    t0 = time.monotonic()
    for b in data:
        try:
            s.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(every_s)
    return time.monotonic() - t0


def test_a_request_head_sent_a_line_at_a_time_is_cut_at_the_header_timeout(srv):
    s = raw(srv)
    t0 = time.monotonic()
    s.sendall(b"GET /v1/versions HTTP/1.1\r\n")
    for i in range(40):                       # 40 header lines, one every 0.25 s: 10 s if let be
        try:
            s.sendall(b"x-slow-%d: 1\r\n" % i)
        except OSError:
            break
        time.sleep(0.25)
        if i == 8:
            break
    got = answer(s)
    assert got.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4
    assert refusals(srv, "head_timeout") == 1
    s.close()


def test_connections_per_address_are_capped_and_freed_when_closed(srv):
    held = [raw(srv) for _ in range(LIMITS.max_connections_per_address)]
    time.sleep(0.2)
    extra = raw(srv)
    got = answer(extra)
    assert got.startswith(b"HTTP/1.1 503") and b"too many connections" in got
    assert refusals(srv, "connections") == 1
    held.pop().close()
    time.sleep(0.2)
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/v1/versions/0/shards/0", headers={"range": "bytes=0-9"})
    assert c.getresponse().status == 206
    c.close()
    for s in held:
        s.close()


def test_request_bodies_are_capped_per_route_and_must_declare_their_length(srv):
    def post(path: str, headers: str, body: bytes = b"") -> bytes:
        s = raw(srv)
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n".encode() + body)
        try:
            return answer(s)
        finally:
            s.close()

    assert post("/health", "content-length: 1\r\n", b"x").startswith(b"HTTP/1.1 413")  # no prefix: cap 0
    assert post("/v1/versions", "content-length: 65\r\n", b"x" * 65).startswith(b"HTTP/1.1 413")
    assert post("/v1/versions", "transfer-encoding: chunked\r\n").startswith(b"HTTP/1.1 411")
    within = post("/v1/versions", "content-length: 64\r\n", b"x" * 64)   # reaches the app, which has no POST
    assert within.startswith(b"HTTP/1.1 405") and b"connection: close" in within.lower()


def test_a_body_sent_a_byte_at_a_time_is_cut_at_the_body_timeout(srv):
    s = raw(srv)
    s.sendall(b"POST /v1/versions HTTP/1.1\r\nhost: x\r\ncontent-length: 60\r\n\r\n")
    took = drip(s, b"y" * 12, 0.25)            # 60 bytes would take 15 s; the server stops at 1 s
    got = answer(s)
    assert got.startswith(b"HTTP/1.1 408") and took < 4
    s.close()


def test_a_head_that_is_not_http_is_answered_400_and_a_control_request_still_works(srv):
    s = raw(srv)
    s.sendall(b"HELLO THERE\r\n\r\n")
    assert answer(s).startswith(b"HTTP/1.1 400")
    s.close()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/v1/versions")
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read())["versions"] == [0]
    assert r.getheader("connection") == "close"
    c.close()


def test_a_connection_that_never_sends_a_byte_is_closed_at_the_header_timeout_not_the_idle_one(srv):
    """A slowloris that connects and says nothing (tests/hostile/flood.Slowloris, phase "idle")
    held a connection for the whole idle timeout (75 s by default); between the shard requests
    of a kept-alive connection the idle timeout still applies."""
    s = raw(srv)
    t0 = time.monotonic()
    assert answer(s) == b""                                    # closed without an answer...
    assert time.monotonic() - t0 < LIMITS.idle_timeout_s - 2   # ...at the header timeout (1 s here)
    s.close()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    for _ in range(2):  # silent longer than the header timeout between the two: still served
        c.request("GET", "/v1/versions/0/shards/0")
        r = c.getresponse()
        assert r.status == 200 and len(r.read()) == SIZE
        time.sleep(LIMITS.header_timeout_s + 0.5)
    c.close()
