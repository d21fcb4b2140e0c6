"""protocol.guard: the address rules, and the read-only services (verifier, worker status) served
behind it on 127.0.0.1 (body refused on its headers, slow and idle connections closed)."""

import json

from protocol.guard import Networks, ServerLimits, address_key, forwarded_client, guard_of
from protocol.http import ServerThread
from tests.hostile.flood import Slowloris, connect
from tests.waiting import wait_until

FAST = ServerLimits(header_timeout_s=0.3, body_timeout_s=0.3, max_connections_per_address=2)


def test_forwarded_for_is_honoured_only_from_trusted_proxies():
    proxies = Networks(["10.0.0.0/8", "192.0.2.1"])
    assert forwarded_client("203.0.113.5", "198.51.100.7", proxies) == "203.0.113.5"  # not a proxy: ignored
    assert forwarded_client("192.0.2.1", "198.51.100.7", proxies) == "198.51.100.7"
    # the right-most hop that is not a trusted proxy; what the client wrote to its left is ignored
    assert forwarded_client("10.1.1.1", "127.0.0.1, 198.51.100.7, 10.2.2.2", proxies) == "198.51.100.7"
    assert forwarded_client("10.1.1.1", "10.3.3.3, 10.2.2.2", proxies) == "10.3.3.3"
    assert forwarded_client("10.1.1.1", "not-an-address", proxies) == "10.1.1.1"
    assert forwarded_client("10.1.1.1", None, proxies) == "10.1.1.1"
    assert forwarded_client("::ffff:10.1.1.1", "2001:db8::1", proxies) == "2001:db8::1"  # IPv4-mapped peer
    assert "10.9.9.9" in proxies and "11.0.0.1" not in proxies and "garbage" not in proxies


def test_ipv6_clients_are_limited_per_64():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.7") == "192.0.2.7" and address_key("::ffff:192.0.2.7") == "192.0.2.7"


def _guarded_servers():
    from verifier.app import create_app
    from verifier.metrics import VerifierMetrics
    from worker.state import WorkerState
    from worker.status_server import make_app

    yield "verifier", create_app(lambda: {"state": "idle"}, VerifierMetrics(), {"verifier_id": "v"}, FAST)
    yield "worker", make_app(WorkerState(), FAST)


def test_read_only_services_refuse_bodies_and_close_slow_connections():
    for name, app in _guarded_servers():
        assert guard_of(app) is not None, name
        server = ServerThread(app).start()
        try:
            with connect("127.0.0.1", server.port) as s:
                s.sendall(b"POST /health HTTP/1.1\r\nHost: v\r\nContent-Length: 10000000\r\n\r\n")
                answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 413 "), (name, answer)
            assert "no request body" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]
            with Slowloris("127.0.0.1", server.port, n=2, interval_s=0.05, phase="headers", path="/health") as lor:
                wait_until(lambda: lor.open_count() == 0, 10, f"{name} to close slow connections")
            with Slowloris("127.0.0.1", server.port, n=3, interval_s=0.05, phase="idle") as idle:
                wait_until(lambda: idle.closed_by_server() >= 1, 10, "the third connection's refusal")
                assert idle.answers[2].startswith(b"HTTP/1.1 429 "), (name, idle.answers)
            with connect("127.0.0.1", server.port) as s:  # and it still serves
                s.sendall(b"GET /health HTTP/1.1\r\nHost: v\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200 "), name
        finally:
            server.stop()
