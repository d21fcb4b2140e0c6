"""Red-team findings against shardcast, each a hostile relay, peer or client on loopback (each
test failed before its fix):

- JSON nested past the parser's recursion limit (a version listing, a p2p frame) raised
  RecursionError: it killed a relay's watch thread and escaped the p2p wire decoders;
- request targets urlsplit refuses ("//[x"), a Content-Length of "²" (isdigit() but not int())
  and heads with bare CR/LF/NUL raised out of the front or reached the app's parser: no 4xx, or
  an error/warning log line per request; "²" as a shard answer's length failed a whole fetch;
- one address that requests shards and never reads them held every transfer slot; shard paths
  only the app decodes ("%30", "%2F", zero-padded) were served behind the front's accounting;
- peers' shards of another signed manifest of the same version were committed by the fallback;
- a source replaying an old version to long-polls was polled (and verified) 4 times a second;
- IPv6 addresses carrying a private IPv4 one (NAT64, 6to4, IPv4-compatible) passed the advert gate;
- manifest paths that meet on disk ("w" and "w/", "a" and "a/b") were accepted.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
from test_shardcast_front import served_shard

from protocol.identity import KeyPair
from shardcast.config import OriginConfig, RelayConfig
from shardcast.origin import Origin
from shardcast.p2p import wire
from shardcast.p2p.errors import PeerRequestFailed
from shardcast.relay import Relay
from shardcast.watch import list_versions
from tests.hostile.relays import HostileRelay
from tests.waiting import wait_until

DEEP = b"[" * 60_000  # under MAX_LISTING_BYTES, far over the json module's recursion limit


@pytest.fixture
def op():
    return KeyPair.generate()


class DeepListingRelay(HostileRelay):
    """Proxies `upstream`, except that its version listing is JSON nested 60 000 deep."""

    def __init__(self, upstream: str):
        super().__init__()
        self.upstream = upstream

    def answer(self, h, kind: str) -> None:
        if kind == "/v1/versions":
            status, headers, body = 200, {"content-type": "application/json"}, DEEP
        else:
            status, headers, body = self.upstream_get(self.upstream, h)
            headers = {k: v for k, v in headers.items() if k in ("content-type", "content-range")}
        self.head(h, status, {**headers, "content-length": str(len(body))})
        h.wfile.write(body)


def test_a_deeply_nested_version_listing_is_a_refused_answer_not_a_recursion_error():
    with DeepListingRelay("http://127.0.0.1:9") as bad, pytest.raises(ValueError):
        list_versions(bad.url, timeout_s=5.0)


def test_a_deeply_nested_listing_does_not_kill_the_relays_watch_thread(tmp_path, op):
    o = Origin(OriginConfig(data_dir=tmp_path / "o", port=0, shard_size=4096), op, "run-r")
    o.start()
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "w.bin").write_bytes(bytes(range(256)) * 40)
    with DeepListingRelay(o.url) as bad:
        relay = Relay(RelayConfig(upstreams=[bad.url], operator_key=op.public.hex, port=0,
                                  data_dir=tmp_path / "relay", run_id="run-r"))
        relay.start()
        try:
            o.publish(ck, 0, 0)
            # the long-poll through the same upstream still brings version 0
            wait_until(lambda: relay.complete_versions() == [0], 20.0, "the relay still watching", every=0.05)
            assert all(t.is_alive() for t in relay._threads)
        finally:
            relay.stop()
            o.stop()


def test_a_deeply_nested_p2p_frame_is_a_failed_request():
    deep = b"[" * (wire.MAX_FRAME - 8)
    with pytest.raises(PeerRequestFailed):
        wire.decode_request(deep)
    with pytest.raises(PeerRequestFailed):
        wire.decode_reply(deep)


@pytest.fixture
def front(tmp_path, op):
    o = Origin(OriginConfig(data_dir=tmp_path / "o", port=0, shard_size=4096), op, "run-f")
    o.start()
    yield o
    o.stop()


def _ask(port: int, request: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    try:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def _refused_400_without_an_error_log(port: int, request: bytes, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        got = _ask(port, request)
        time.sleep(0.2)
    assert got.startswith(b"HTTP/1.1 400"), got[:100]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_request_target_urlsplit_refuses_is_answered_400_without_an_error_log(front, caplog):
    port = int(front.url.rsplit(":", 1)[1])
    _refused_400_without_an_error_log(port, b"GET //[x/v1/versions/0/shards/0 HTTP/1.1\r\nhost: x\r\n\r\n", caplog)
    # the port still answers
    assert _ask(port, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")


# -- transfer slots of the front: one address must not hold them all ----------------------------

@pytest.fixture
def slots(tmp_path):
    with served_shard(tmp_path, max_transfers=4) as served:
        yield served


def _stalled_shard_request(port: int, path: str = "/v1/versions/0/shards/0") -> socket.socket:
    """Ask for a 30 MiB shard and never read it (a small receive buffer: the send stalls)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return s


def _get_from(source_ip: str, port: int, path: str) -> tuple[int, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source_ip, 0))
    f = s.makefile("rb")
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        status = int(f.readline().split()[1])
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, f.read(length)
    finally:
        f.close()
        s.close()


def test_one_address_that_stalls_its_transfers_cannot_take_every_slot(slots):
    srv, _cat, data = slots
    hogs = [_stalled_shard_request(srv.port) for _ in range(4)]   # as many as max_transfers
    try:
        time.sleep(0.5)
        status, body = _get_from("127.0.0.2", srv.port, "/v1/versions/0/shards/0")
        assert status == 200 and body == data, "another client got no transfer slot"
    finally:
        for s in hogs:
            s.close()


@pytest.mark.parametrize("path", ["/v1/versions/%30/shards/0", "/v1%2Fversions/0/shards/0",
                                  "/v1/versions/0000000000000000000000/shards/0"])
def test_a_shard_path_the_front_does_not_take_as_one_is_not_served_behind_it(slots, path):
    """uvicorn decodes and parses what the front's pattern refuses; its shard route would serve
    the body outside the front's accounting of transfers (and without sendfile)."""
    srv, cat, _data = slots
    status, _body = _get_from("127.0.0.1", srv.port, path)
    assert status == 404
    assert served(cat) == 0


def served(cat):
    return cat.metrics.bytes_served._value.get()


# -- p2p fallback: peers' bytes must match the manifest being assembled ---------------------------


def test_peer_shards_of_another_signed_manifest_of_the_same_version_are_not_committed(tmp_path):
    """Two operator-signed manifests of one version (an origin that lost its data folder
    published version 3 again with other weights): relays hold one, peers the other. The
    fallback checked each peer's shard against the peers' manifest and wrote it into the
    client's partial checkpoint of the other one, which committed it: a mixed checkpoint whose
    files no hash ever checked (check_files is off by default)."""
    from protocol.manifest import build_manifest, sign_manifest
    from shardcast.errors import ShardcastError
    from shardcast.p2p.exchange import PeerShards
    from shardcast.p2p.view import PeerInfo
    from shardcast.partial import PartialCheckpoint

    op = KeyPair.generate()
    manifests = []
    for tag in (b"A", b"B"):
        ck = tmp_path / f"ck-{tag.decode()}"
        ck.mkdir()
        (ck / "w.bin").write_bytes(tag * 8192)
        m = build_manifest(ck, run_id="run-p", version=3, step=3, shard_size=4096)
        manifests.append((m, sign_manifest(m, op), ck))
    (mine, _, _), (theirs, theirs_env, their_ck) = manifests

    class Node:
        run_id = "run-p"

        class view:
            @staticmethod
            def version(v):
                return None

        def peers_with(self, v):
            return [PeerInfo("peer-1", (), (3,), time.time() + 60)]

        def request(self, peer, req, max_size):
            if req.op == "manifest":
                return theirs_env.model_dump_json().encode()
            s = theirs.shards[req.index]
            with open(their_ck / s.path, "rb") as fh:
                fh.seek(s.offset)
                return fh.read(s.size)

    peers = PeerShards(Node(), op.public)
    sink = PartialCheckpoint(tmp_path / "partial", mine, check_files=False)
    try:
        with pytest.raises(ShardcastError):
            peers.fetch_into(3, list(mine.shards), sink)
        assert sink.missing() == list(mine.shards), "a shard of the other manifest was committed"
    finally:
        sink.close()


# -- Content-Length values that str.isdigit() takes for numbers and int() does not ("²") ----------

SUPERSCRIPT_TWO = "\u00b2"  # latin-1 0xB2: "²".isdigit() is True, int("²") raises ValueError


class OddLengthRelay(HostileRelay):
    """Proxies `upstream`, but answers shard requests (or, with control=True, every request)
    with `content-length: ²`."""

    def __init__(self, upstream: str, control: bool = False):
        super().__init__()
        self.upstream, self.control = upstream, control

    def answer(self, h, kind: str) -> None:
        if kind == "shard" or self.control:
            self.head(h, 200, {"content-length": SUPERSCRIPT_TWO})
            h.wfile.write(b"xx")
            h.close_connection = True
            return
        status, headers, body = self.upstream_get(self.upstream, h)
        self.head(h, status, {"content-type": headers.get("content-type", "application/json"),
                              "content-length": str(len(body))})
        h.wfile.write(body)


@pytest.fixture
def published(tmp_path, op):
    import random

    o = Origin(OriginConfig(data_dir=tmp_path / "o", port=0, shard_size=64 * 1024), op, "run-l")
    o.start()
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "w.bin").write_bytes(random.Random(3).randbytes(8 * 64 * 1024))
    o.publish(ck, 0, 0)
    yield o
    o.stop()


def test_a_shard_answer_whose_length_is_a_superscript_digit_fails_that_source_not_the_fetch(tmp_path, op, published):
    from shardcast.client import ShardcastClient
    from shardcast.fetch import FetchOptions

    with OddLengthRelay(published.url) as odd:
        opts = FetchOptions(parallel=2, shard_wait_s=1.0, read_timeout_s=2.0, manifest_wait_s=2.0,
                            control_timeout_s=2.0)
        with ShardcastClient([odd.url, published.url], op.public, tmp_path / "cache", run_id="run-l",
                             options=opts, durable=False) as c:
            folder = c.fetch(0)
        assert (folder / "w.bin").read_bytes() == (tmp_path / "ck" / "w.bin").read_bytes()
        assert odd.hits.get("shard", 0) >= 1


def test_a_control_answer_whose_length_is_a_superscript_digit_is_a_source_failure(op):
    from shardcast.errors import VersionUnavailable
    from shardcast.selection import Sources
    from shardcast.watch import fetch_manifest

    with OddLengthRelay("http://127.0.0.1:9", control=True) as odd, pytest.raises(VersionUnavailable):
        fetch_manifest(Sources([odd.url]), op.public, 0, "run-l", timeout_s=3.0)


def test_a_request_body_length_that_is_a_superscript_digit_is_answered_400(front, caplog):
    port = int(front.url.rsplit(":", 1)[1])
    _refused_400_without_an_error_log(port, b"GET /v1/versions HTTP/1.1\r\nhost: x\r\ncontent-length: \xb2\r\n\r\n",
                                      caplog)


@pytest.mark.parametrize("line", [b"x-a: 1\nContent-Length: 5", b"x-a: 1\nTransfer-Encoding: chunked",
                                  b"x-a: 1\x00", b"x-a: 1\rx-b: 2"])
def test_a_head_with_bare_line_breaks_or_controls_is_refused_by_the_front_not_logged_by_the_app(front, caplog, line):
    """The front split the head on CRLF only and forwarded the rest; the app (httptools) saw
    bare LF, CR or NUL, answered 400 and logged a warning per request: a log any client fills."""
    port = int(front.url.rsplit(":", 1)[1])
    with caplog.at_level(logging.WARNING):
        got = _ask(port, b"GET /health HTTP/1.1\r\nhost: x\r\n" + line + b"\r\n\r\n")
        time.sleep(0.2)
    assert got.startswith(b"HTTP/1.1 400"), got[:100]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


# -- unendorsed adverts: IPv6 addresses that carry an IPv4 one ------------------------------------


@pytest.mark.parametrize("host", [
    "64:ff9b::a00:1",          # NAT64 (RFC 6052) of 10.0.0.1: a NAT64 gateway dials the private address
    "64:ff9b::a9fe:a9fe",      # ... of 169.254.169.254, the cloud metadata address
    "::7f00:1",                # IPv4-compatible ::127.0.0.1
    "2002:a00:1::1",           # 6to4 of 10.0.0.1
])
def test_an_ipv6_address_carrying_a_private_ipv4_one_is_refused_in_unendorsed_adverts(host):
    from shardcast.p2p.addresses import AddressRefused, check_multiaddr, check_relay_url

    with pytest.raises(AddressRefused):
        check_relay_url(f"http://[{host}]:8800", allow_private=False)
    with pytest.raises(AddressRefused):
        check_multiaddr(f"/ip6/{host}/tcp/4001", allow_private=False)


def test_a_public_ipv6_address_is_still_accepted():
    from shardcast.p2p.addresses import check_multiaddr, check_relay_url

    assert check_relay_url("http://[2a00:1450:4001:80b::200e]:8800", allow_private=False)
    check_multiaddr("/ip6/2a00:1450:4001:80b::200e/tcp/4001", allow_private=False)
    check_multiaddr("/ip4/8.8.8.8/tcp/4001", allow_private=False)


# -- long-polls answered with an old signed manifest (replay) -------------------------------------


class ReplayRelay(HostileRelay):
    """Answers every long-poll at once with `manifest` (an authentic, older version)."""

    def __init__(self, manifest: bytes):
        super().__init__()
        self.manifest = manifest

    def answer(self, h, kind: str) -> None:
        body = self.manifest if kind == "/v1/versions/latest" else b'{"detail": "no"}'
        self.head(h, 200 if kind == "/v1/versions/latest" else 404,
                  {"content-type": "application/json", "content-length": str(len(body))})
        h.wfile.write(body)


def test_a_relay_that_replays_an_old_version_to_long_polls_is_dropped_not_polled_in_a_loop(op, published):
    from shardcast.selection import Sources
    from shardcast.watch import wait_for_newer

    old = published.manifest_bytes(0)
    with ReplayRelay(old) as replay:
        sources = Sources([replay.url, published.url])
        t0 = time.monotonic()
        assert wait_for_newer(sources, op.public, 0, 3.0, "run-l") is None
        assert time.monotonic() - t0 < 4.0
        assert sources.is_hostile(replay.url)
        assert replay.hits.get("/v1/versions/latest", 0) <= 2, replay.hits


# -- manifest paths: two entries that name one file, or a file that is another's folder -----------


@pytest.mark.parametrize("paths", [["w.bin", "w.bin/"], ["a/w.bin", "a//w.bin"], ["w.bin", "./w.bin"],
                                   ["a", "a/b"]])
def test_a_manifest_whose_paths_collide_on_disk_is_refused(op, paths):
    """The path pattern and the '..' rule let two distinct strings name one file ("w.bin" and
    "w.bin/" are one path to the file system) or a file be another's folder: two entries whose
    shards overwrite each other's bytes, or a download that dies on NotADirectoryError."""
    from protocol.errors import MessageError
    from protocol.manifest import open_manifest, sign_manifest
    from protocol.messages import FileEntry, PolicyManifest, ShardEntry

    sha = "0" * 64
    files = [FileEntry(path=p, size=1, sha256=sha) for p in paths]
    shards = [ShardEntry(index=i, path=p, offset=0, size=1, sha256=sha) for i, p in enumerate(paths)]
    m = PolicyManifest(run_id="run-m", version=1, step=1, created_at=0.0, shard_size=1, files=files,
                       shards=shards, config_sha256=sha, total_bytes=len(paths))
    with pytest.raises(MessageError):
        open_manifest(sign_manifest(m, op), op.public)
