"""Hostile shardcast relays: real HTTP servers on 127.0.0.1 that drip, stall, bomb or lie.

For the shardcast tests, the lead's hostile-swarm test and bench/hostile.py. Every relay
here is a `HostileRelay`: a threaded HTTP/1.1 server in daemon threads of the calling process.

    relay = DripRelay(upstream=origin.url, every_s=3.0).start()   # relay.url: http://127.0.0.1:PORT
    ...                                                           # relay.hits: requests seen, by kind
    relay.stop()                                                  # or: with DripRelay(...) as relay:

| class | what it does |
|---|---|
| `DripRelay(upstream, every_s=3.0, chunk=1, control=False)` | a relay that looks healthy: versions, manifests and long-polls are `upstream`'s (an origin or an honest relay); every shard answer has the right status and Content-Length, then its true bytes `chunk` at a time, one chunk every `every_s` s. `control=True` drips the manifest and long-poll answers too |
| `SilentRelay()` | accepts connections, reads the request, never answers (until stopped) |
| `HeadDripRelay(every_s=3.0)` | answers every request with a response head sent one byte every `every_s` s (slowloris, the relay's side) |
| `GzipBombRelay(inflated_mib=256)` | answers every request 200 with `content-encoding: gzip`: ~0.26 MB on the wire per 256 MiB once inflated (zeros; built once per process, ~1 s) |
| `LyingRelay(upstream, mode)` | control answers are `upstream`'s; shards lie: `"short"` announces the shard's size, sends half, closes; `"long"` announces 1,000 bytes more than the shard; `"flip"` sends the right length with one byte changed |

`flood_relay_adverts(node, run_id, keys=128, url=...)` is the advert flooder: through an
attacker's running `shardcast.p2p.P2PNode` it publishes one relay advert from each of `keys`
throw-away keys (the node relays anyone's signed envelopes; receivers' gates judge them).
It returns the keys; stopping the attacker's node stops the flood.

None of these uses more than a thread per open connection; `stop()` closes the listening
socket and ends every handler (blocked handlers are released by the stop event).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SHARD = re.compile(r"^/v1/versions/\d+/shards/\d+$")
_BOMBS: dict[int, bytes] = {}


def gzip_bomb(inflated_mib: int) -> bytes:
    """A gzip member of `inflated_mib` MiB of zeros (cached: building 256 MiB takes ~1 s)."""
    if inflated_mib not in _BOMBS:
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        _BOMBS[inflated_mib] = b"".join([*(z.compress(zeros) for _ in range(inflated_mib)), z.flush()])
    return _BOMBS[inflated_mib]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        relay = self.server.relay
        kind = "shard" if SHARD.match(urlsplit(self.path).path) else urlsplit(self.path).path
        with relay.lock:
            relay.hits[kind] = relay.hits.get(kind, 0) + 1
        try:
            relay.answer(self, kind)
        except (ConnectionError, OSError):
            pass  # the client left: that is what it is for


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    relay: "HostileRelay"

    def handle_error(self, request, client_address) -> None:  # quiet: clients leaving is what it is for
        pass


class HostileRelay:
    """Base: serves on 127.0.0.1:`port` (0 = a free port) until `stop`."""

    def __init__(self, port: int = 0):
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.relay = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=type(self).__name__)

    def start(self) -> "HostileRelay":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def answer(self, h: _Handler, kind: str) -> None:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def upstream_get(self, upstream: str, h: _Handler) -> tuple[int, dict[str, str], bytes]:
        u = urlsplit(upstream)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=70)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() in ("range",)}
            conn.request("GET", h.path, headers=headers)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def drip(self, h: _Handler, data: bytes, every_s: float, chunk: int) -> None:
        for i in range(0, len(data), chunk):
            if self.stopped.wait(every_s if i else 0):
                return
            h.wfile.write(data[i:i + chunk])
            h.wfile.flush()

    @staticmethod
    def head(h: _Handler, status: int, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()


class DripRelay(HostileRelay):
    def __init__(self, upstream: str, every_s: float = 3.0, chunk: int = 1, control: bool = False, port: int = 0):
        super().__init__(port)
        self.upstream, self.every_s, self.chunk, self.control = upstream.rstrip("/"), every_s, chunk, control

    def answer(self, h: _Handler, kind: str) -> None:
        status, headers, body = self.upstream_get(self.upstream, h)
        keep = {k: v for k, v in headers.items() if k in ("content-type", "content-range", "content-length")}
        keep["content-length"] = str(len(body))
        self.head(h, status, keep)
        if kind == "shard" or (self.control and body):
            self.drip(h, body, self.every_s, self.chunk)
        else:
            h.wfile.write(body)


class SilentRelay(HostileRelay):
    def answer(self, h: _Handler, kind: str) -> None:
        self.stopped.wait()
        h.close_connection = True


class HeadDripRelay(HostileRelay):
    def __init__(self, every_s: float = 3.0, port: int = 0):
        super().__init__(port)
        self.every_s = every_s

    def answer(self, h: _Handler, kind: str) -> None:
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-pad-%d: %s\r\n" % (i, b"y" * 50) for i in range(90))
        self.drip(h, head + b"content-length: 0\r\n\r\n", self.every_s, 1)
        h.close_connection = True


class GzipBombRelay(HostileRelay):
    def __init__(self, inflated_mib: int = 256, port: int = 0):
        super().__init__(port)
        self.body = gzip_bomb(inflated_mib)

    def answer(self, h: _Handler, kind: str) -> None:
        self.head(h, 200, {"content-type": "application/json", "content-encoding": "gzip",
                           "content-length": str(len(self.body))})
        h.wfile.write(self.body)


class LyingRelay(HostileRelay):
    def __init__(self, upstream: str, mode: str, port: int = 0):
        if mode not in ("short", "long", "flip"):
            raise ValueError(f"mode {mode!r}: short, long or flip")
        super().__init__(port)
        self.upstream, self.mode = upstream.rstrip("/"), mode

    def answer(self, h: _Handler, kind: str) -> None:
        status, headers, body = self.upstream_get(self.upstream, h)
        if kind != "shard" or status not in (200, 206):
            self.head(h, status, {"content-type": headers.get("content-type", "application/json"),
                                  "content-length": str(len(body))})
            h.wfile.write(body)
            return
        if self.mode == "short":
            self.head(h, status, {"content-length": str(len(body))})
            h.wfile.write(body[: len(body) // 2])
            h.close_connection = True
        elif self.mode == "long":
            self.head(h, status, {"content-length": str(len(body) + 1000)})
            h.wfile.write(body + bytes(1000))
        else:
            self.head(h, status, {"content-length": str(len(body))})
            h.wfile.write(bytes([body[0] ^ 0xFF]) + body[1:])


def flood_relay_adverts(node, run_id: str, keys: int = 128, url: str | Callable[[int], str] = "http://127.0.0.1:{i}",
                        urls_per_key: int = 4) -> list:
    """Publish relay adverts from `keys` fresh keys (`urls_per_key` URLs each: `url` formatted
    with, or called with, a running index from 20000) through the attacker's running P2PNode
    `node`."""
    from protocol.envelope import AUDIENCE_SWARM, seal
    from protocol.identity import KeyPair
    from shardcast.p2p.announcements import KIND_RELAY, RelayAdvert

    made, i = [], 20000
    for _ in range(keys):
        key = KeyPair.generate()
        made.append(key)
        for _ in range(urls_per_key):
            where = url(i) if callable(url) else url.format(i=i)
            node.publish_envelope(seal(KIND_RELAY, RelayAdvert(run_id=run_id, url=where, ttl_s=600), key,
                                       now=time.time(), run_id=run_id, audience=AUDIENCE_SWARM))
            i += 1
    return made


__all__ = ["DripRelay", "GzipBombRelay", "HeadDripRelay", "HostileRelay", "LyingRelay", "SilentRelay",
           "flood_relay_adverts", "gzip_bomb"]
