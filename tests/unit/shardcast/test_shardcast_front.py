"""shardcast.front: shard bodies with sendfile on the node's public port, the rest of the API
spliced to the FastAPI app; real sockets on loopback, a catalog whose shards are files."""

import contextlib
import http.client
import json
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from protocol.errors import MessageError
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from shardcast.client import ShardcastClient
from shardcast.config import FrontLimits
from shardcast.node_server import NodeServer
from shardcast.metrics import NodeMetrics
from shardcast.serving import ShardLocation
from shardcast.signal import Signal

SIZE = 30 * 1024 * 1024
OFFSET = 1000


class Catalog:
    """Version 0 with shard 0 (verified, `SIZE` bytes at `OFFSET` of `blob`), shard 1 (in
    flight until `verify_1`), shard 2 (verified on paper, its file gone: pruned)."""

    role = "relay"

    def __init__(self, blob, gone):
        self.signal, self.metrics = Signal(), NodeMetrics("relay")
        self.blob, self.gone = blob, gone
        self.one_verified = False

    def versions(self):
        return [0]

    complete_versions = versions

    def manifest_bytes(self, v):
        return b'{"manifest": 0}' if v == 0 else None

    def shard(self, v, i):
        if v != 0 or i not in (0, 1, 2):
            raise LookupError(f"version {v} has no shard {i}")
        if i == 1 and not self.one_verified:
            return None
        if i == 2:
            return ShardLocation(self.gone, 0, 10, "2" * 64)
        return ShardLocation(self.blob, OFFSET, SIZE, "0" * 64)

    def verify_1(self):
        self.one_verified = True
        self.signal.notify()


@contextlib.contextmanager
def served_shard(tmp_path: Path, max_transfers: int):
    """A NodeServer serving one SIZE-byte shard cut from a random blob: (server, catalog, bytes)."""
    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(1).randbytes(OFFSET + SIZE + 500))
    cat = Catalog(blob, tmp_path / "pruned")
    srv = NodeServer(cat, title="t", host="127.0.0.1", port=0, max_transfers=max_transfers).start()
    try:
        yield srv, cat, blob.read_bytes()[OFFSET:OFFSET + SIZE]
    finally:
        srv.stop()


@pytest.fixture
def node(tmp_path):
    with served_shard(tmp_path, max_transfers=1) as served:
        yield served


def conn(srv):
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)


def get(c, path, headers=None, method="GET"):
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    return r, r.read()


def served(cat):
    return cat.metrics.bytes_served._value.get()


def test_whole_shard_ranges_and_head_on_one_keep_alive_connection(node):
    srv, cat, data = node
    c = conn(srv)
    r, body = get(c, "/v1/versions/0/shards/0?wait_s=1")
    assert r.status == 200 and body == data
    assert r.getheader("content-length") == str(SIZE) and r.getheader("etag") == '"' + "0" * 64 + '"'
    assert r.getheader("accept-ranges") == "bytes"
    sock = c.sock
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=10-19"})
    assert r.status == 206 and body == data[10:20]
    assert r.getheader("content-range") == f"bytes 10-19/{SIZE}"
    r, body = get(c, "/v1/versions/0/shards/0", {"range": f"bytes={SIZE - 5}-"})
    assert r.status == 206 and body == data[-5:]
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=-7"})
    assert r.status == 206 and body == data[-7:]
    r, body = get(c, "/v1/versions/0/shards/0", method="HEAD")
    assert r.status == 200 and body == b"" and r.getheader("content-length") == str(SIZE)
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=5-9"})
    assert r.status == 206 and body == data[5:10]
    assert c.sock is sock  # every answer above kept the connection
    assert served(cat) == SIZE + 10 + 5 + 7 + 5  # HEAD sent no body
    c.close()


def test_bad_ranges_unknown_unverified_and_pruned_shards(node):
    srv, cat, _ = node
    c = conn(srv)
    r, body = get(c, "/v1/versions/0/shards/0", {"range": f"bytes={SIZE}-"})
    assert r.status == 416 and r.getheader("content-range") == f"bytes */{SIZE}"
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=50-40"})
    assert r.status == 416
    r, body = get(c, "/v1/versions/0/shards/7")
    assert r.status == 404 and "no shard 7" in json.loads(body)["detail"]
    r, body = get(c, "/v1/versions/3/shards/0")
    assert r.status == 404
    r, body = get(c, "/v1/versions/0/shards/1?wait_s=0")
    assert r.status == 503 and r.getheader("retry-after") == "1"
    r, body = get(c, "/v1/versions/0/shards/2")
    assert r.status == 404 and "pruned" in json.loads(body)["detail"]
    r, body = get(c, "/v1/versions/0/shards/0?wait_s=-1")
    assert r.status == 422
    c.request("GET", "/v1/versions/0/shards/0", body=b"xyz")
    r = c.getresponse()
    assert r.status == 400 and r.getheader("connection") == "close"
    r.read()
    c.close()
    assert served(cat) == 0


def test_a_shard_in_flight_is_served_as_soon_as_it_verifies(node):
    srv, cat, data = node
    c = conn(srv)
    threading.Timer(0.3, cat.verify_1).start()
    r, body = get(c, "/v1/versions/0/shards/1?wait_s=20")
    assert r.status == 200 and body == data
    c.close()


def test_paths_that_are_not_two_numbers_never_reach_the_disk(node):
    srv, cat, data = node
    c = conn(srv)
    for path in ("/v1/versions/0/shards/../../../etc/passwd", "/v1/versions/0/shards/%2e%2e",
                 "/v1/versions/0/shards/0/../0", "/v1/versions/0/shards/-1",
                 "/v1/versions/0/shards/0x1", "/v1/versions/0/shards/0/"):
        c = conn(srv)
        r, body = get(c, path)
        assert r.status in (307, 404, 422), path  # answered by the FastAPI app, never a file
        assert data[:64] not in body
        c.close()
    assert served(cat) == 0


def test_other_routes_are_spliced_to_the_app_and_long_polls_work(node):
    srv, _, data = node
    with httpx.Client(base_url=srv.url, timeout=20) as h:
        assert h.get("/health").json()["versions"] == [0]
        assert h.get("/v1/versions/0/manifest").content == b'{"manifest": 0}'
        assert h.get("/v1/versions/9/manifest").status_code == 404
        assert h.get("/v1/versions/latest", params={"after": 0, "wait_s": 0}).status_code == 204
        assert h.get("/v1/versions/latest", params={"after": -1}).content == b'{"manifest": 0}'
        assert h.get("/docs").status_code == 200
        # shards through the same keep-alive client, after the connection went to the app
        assert h.get("/v1/versions/0/shards/0", headers={"range": "bytes=0-3"}).content == data[:4]
        assert "shardcast_bytes_served_total 4.0" in h.get("/metrics").text


def test_transfers_are_capped_and_the_count_returns_when_a_client_hangs_up(node):
    srv, cat, data = node
    hold = socket.create_connection(("127.0.0.1", srv.port))
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hold.sendall(b"GET /v1/versions/0/shards/0 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert hold.recv(12) == b"HTTP/1.1 200"      # the body is not read: the transfer stays open
    c = conn(srv)
    deadline = time.monotonic() + 20
    while cat.metrics.transfers._value.get() != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    r, body = get(c, "/v1/versions/0/shards/0")
    assert r.status == 503 and "busy" in json.loads(body)["detail"]
    hold.close()
    while cat.metrics.transfers._value.get() != 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=0-0"})
    assert r.status == 206 and body == data[:1]
    c.close()


def test_a_client_refuses_a_signed_manifest_whose_shards_leave_a_gap_or_overlap(tmp_path):
    """Verified shards stand for the whole file only because they tile it exactly: a signed
    manifest that skips or repeats bytes is refused before anything is downloaded."""
    op = KeyPair.generate()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "w.bin").write_bytes(random.Random(2).randbytes(3000))
    m = build_manifest(tmp_path / "ck", run_id="r", version=0, step=0, shard_size=1024)
    s = m.shards
    gap = m.model_copy(update={"shards": [s[0], s[1].model_copy(update={"offset": 1100}), s[2]]})
    overlap = m.model_copy(update={"shards": [s[0], s[1].model_copy(update={"offset": 1000}), s[2]]})
    short = m.model_copy(update={"shards": s[:2]})
    c = ShardcastClient(["http://127.0.0.1:9"], op.public, tmp_path / "cache")
    try:
        for bad in (gap, overlap, short):
            with pytest.raises(MessageError):
                c.offer_manifest(sign_manifest(bad, op))
        assert c.offer_manifest(sign_manifest(m, op)) == 0
        assert c.cached_versions() == []
    finally:
        c.close()


def wait_until(cond, what, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_reader_that_stalls_loses_its_transfer_slot_and_a_silent_one_its_connection(
        node, monkeypatch):
    import shardcast.front as front

    monkeypatch.setattr(front, "STALL_S", 0.3)
    srv, cat, data = node
    monkeypatch.setattr(srv.front, "limits", FrontLimits(idle_timeout_s=0.3))
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /v1/versions/0/shards/0 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert stalled.recv(12) == b"HTTP/1.1 200"
    wait_until(lambda: cat.metrics.transfers._value.get() == 1, "the transfer to start")
    wait_until(lambda: cat.metrics.transfers._value.get() == 0, "the stalled reader dropped")
    c = conn(srv)
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=0-9"})
    assert r.status == 206 and body == data[:10]
    stalled.close()
    silent = socket.create_connection(("127.0.0.1", srv.port))
    silent.settimeout(20)
    assert silent.recv(1) == b""  # closed by the server, nothing sent
    silent.close()
    c.close()


def test_a_refused_head_request_sends_no_body_and_its_connection_stays_usable(node):
    srv, cat, data = node
    c = conn(srv)
    for path in ("/v1/versions/9/shards/0", "/v1/versions/0/shards/1?wait_s=0"):  # 404, 503
        r, body = get(c, path, method="HEAD")
        assert r.status in (404, 503) and body == b""
    sock = c.sock
    r, body = get(c, "/v1/versions/0/shards/0", {"range": "bytes=0-9"})
    assert r.status == 206 and body == data[:10]       # not the refusals' JSON read as this answer
    assert c.sock is sock
    c.close()
