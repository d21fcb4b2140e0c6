"""What one client may hold of a node's public port: the guards of shardcast.front.

A relay's port is open to anyone, and a client that is slow on purpose costs a connection,
a task and a buffer for as long as it is let be (slowloris: one header line every few
seconds kept a connection open for minutes, issue 18). shardcast.front applies, per
`shardcast.config.FrontLimits`:

- `Admission`: open connections per client address and in all; over a cap the connection
  is answered 503 at once and closed, before a byte of it is read;
- `read_head`: between requests a connection may stay silent `idle_timeout_s`, but a new
  connection must start its first request within `header_timeout_s` of opening (a client
  that connects and says nothing held a connection for the whole idle timeout before); once
  the first byte of a request arrives, its whole head (at most HEAD_LIMIT bytes) must follow
  within `header_timeout_s`;
- `body_length` / `read_body`: a request body must declare its length (no chunked
  bodies: 411), stay within the cap of its route (`body_caps` by path prefix, else
  `default_body_bytes`: the API takes none; 413), and arrive whole within `body_timeout_s`.

`parse_head` turns a head into a `Request` (None when it is not plain HTTP/1.x, which the
front answers 400). Everything here is pure or a few awaits on an asyncio stream; the
responses are the front's.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass

from shardcast.bounded import decimal
from shardcast.config import FrontLimits

HEAD_LIMIT = 64 * 1024  # request line + headers


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]   # names lower-cased; the last of repeated names

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn


class Refused(Exception):
    """A request the front answers with `status` and closes (`detail` says what to change)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB, once the head is split on CRLF
# What the app's parser (httptools) takes without a warning: one of these methods, a target of
# printable ASCII, header names that are RFC 9110 tokens. A head it refuses is answered 400 by
# uvicorn AND logged as a warning, one line per request: the front refuses such heads itself.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_TARGET = re.compile("^/[\x21-\x7e]*$")
_TOKEN = re.compile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_head(head: bytes) -> Request | None:
    """The request line and headers; None if they are not plain HTTP/1.x (a bare CR or LF,
    a NUL or another control character in a line is not: the app's parser would read those
    lines otherwise than this one does, and log a warning for each; nor is a method outside
    `METHODS`, a byte over 0x7e in the target or a header name that is not a token, which the
    app's parser refuses with a warning each)."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if any(_CONTROLS.search(line) for line in lines):
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or parts[0] not in METHODS:
        return None
    if not _TARGET.match(parts[1]):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            return None
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


def closing_head(head: bytes) -> bytes:
    """`head` with its Connection headers replaced by `connection: close` (for the one request
    the front hands to the app on a connection: the app then closes after answering)."""
    lines = head.decode("latin-1").split("\r\n")
    hop = ("connection:", "keep-alive:", "proxy-connection:")
    kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(hop)]
    return "\r\n".join([lines[0], *kept, "connection: close", "", ""]).encode("latin-1")


class Admission:
    """Open connections per client address and in all (one event loop: no lock needed)."""

    def __init__(self, limits: FrontLimits):
        self.limits = limits
        self.by_address: Counter[str] = Counter()
        self.total = 0

    def enter(self, address: str) -> str | None:
        """Count a new connection from `address`; the reason it is refused, or None."""
        if self.total >= self.limits.max_connections:
            return f"busy: {self.total} connections open; try another source"
        if self.by_address[address] >= self.limits.max_connections_per_address:
            return (f"too many connections from {address} "
                    f"(at most {self.limits.max_connections_per_address} at once)")
        self.by_address[address] += 1
        self.total += 1
        return None

    def leave(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


async def read_head(reader: asyncio.StreamReader, limits: FrontLimits, *, opening: bool = False) -> bytes | None:
    """The next request head; None when the client closed or stayed silent `idle_timeout_s`
    between requests (`header_timeout_s` after the connection's `opening`). Raises TimeoutError
    when a head that started does not end within `header_timeout_s`, asyncio.LimitOverrunError
    when it is over HEAD_LIMIT."""
    try:
        silence = limits.header_timeout_s if opening else limits.idle_timeout_s
        first = await asyncio.wait_for(reader.readexactly(1), silence)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    try:
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.header_timeout_s)
    except asyncio.IncompleteReadError:
        return None
    return first + rest


def body_cap(path: str, limits: FrontLimits) -> int:
    """Body bytes a request to `path` may carry: the longest matching prefix's cap."""
    best = -1
    cap = limits.default_body_bytes
    for prefix, n in limits.body_caps.items():
        if path.startswith(prefix) and len(prefix) > best:
            best, cap = len(prefix), n
    return cap


def body_length(req: Request, path: str, limits: FrontLimits) -> int:
    """The declared body length of `req`, within its route's cap; Refused otherwise."""
    if req.headers.get("transfer-encoding"):
        raise Refused(411, "send the request body with a Content-Length (chunked bodies are not accepted)")
    declared = req.headers.get("content-length", "0")
    if not decimal(declared):
        raise Refused(400, "Content-Length must be a decimal number")
    n = int(declared)
    cap = body_cap(path, limits)
    if n > cap:
        raise Refused(413, f"a request to {path[:100]} may carry at most {cap} body bytes")
    return n


async def read_body(reader: asyncio.StreamReader, n: int, limits: FrontLimits) -> bytes:
    """Exactly `n` body bytes within `body_timeout_s`; TimeoutError or IncompleteReadError."""
    if n == 0:
        return b""
    return await asyncio.wait_for(reader.readexactly(n), limits.body_timeout_s)
