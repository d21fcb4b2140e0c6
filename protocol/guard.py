"""Cheap checks first: what a swarmrl HTTP service refuses before its app sees a request.

Every FastAPI service that faces untrusted clients attaches a `Guard` to its app
(`attach(app, guard)`); `protocol.http.serve` and `ServerThread` then run uvicorn with
`guarded_protocol(guard)`, a subclass of uvicorn's httptools protocol, instead of the plain
one. What each limit stops:

| limit | where | what it stops |
|---|---|---|
| `max_connections_per_address` | connection opened | one address holding thousands of idle sockets (file descriptors, memory); answered 429 and closed |
| `header_timeout_s` | from the connection's first byte (or a keep-alive request's first byte) to the end of its headers | slowloris: a request line and headers dripped a byte every few seconds, and sockets that never send at all; closed (408 when nothing is in flight) |
| `max_header_bytes` | while a request's line and headers arrive | one connection buffering megabytes of headers (uvicorn and httptools keep a header value until it ends: 32 connections of one address held 16 MB each, any number of addresses); answered 431 and closed |
| `body_timeout_s` | from the end of the headers to the end of the body | bodies dripped a byte at a time behind honest-looking headers; closed, the app sees a disconnect |
| `admit(arrival)` | headers complete, before the app runs and before a byte of the body is read | whatever the service decides from the address, method, path and Content-Length: body caps per route (413), request rate and byte budget per address (429); the coordinator's is `coordinator.admission` |
| `trusted_proxies` | headers complete | a client claiming another address (loopback, an exempt one) with `X-Forwarded-For`: the header is honoured only when the TCP peer is a trusted proxy |
| `max_connections` | uvicorn's `limit_concurrency` | the process running out of sockets or tasks (503 beyond it) |

A refused request is answered `{"detail": ...}` with `Connection: close`; the connection then
reads and discards what the client is still sending for at most `LINGER_S` (so the client
reads the answer instead of a reset), without parsing it. `on_refuse(reason)` lets the service
count refusals in its metrics.

Per-address state is keyed by `address_key`: an IPv4 address, or an IPv6 address's /64 (one
subscriber's allocation, so rotating addresses inside it gains nothing). Uvicorn's own
`X-Forwarded-For` handling is off everywhere (`protocol.http`): its default trusts loopback,
which would let any client behind a local proxy name its own address.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("swarmrl.guard")

LINGER_S = 1.0  # after a refusal, unread request bytes are discarded this long before the close
STATE_KEY = "swarmrl_guard"


@dataclass(frozen=True)
class ServerLimits:
    """Connection-level limits of one server process (see the table above)."""

    max_connections_per_address: int = 32  # 0 = no cap
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024  # a request's line and headers (past the read that began them)
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 4096
    trusted_proxies: tuple[str, ...] = ()
    exempt_addresses: tuple[str, ...] = ()  # no per-address connection cap (local swarms)


@dataclass(frozen=True)
class Arrival:
    """One request as the guard sees it once its headers are in."""

    address: str                # the client: the TCP peer, or X-Forwarded-For from a trusted proxy
    peer: str                   # the TCP peer
    method: str
    path: str
    content_length: int | None  # None: no Content-Length (chunked, or no body)
    chunked: bool = False


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # short, machine-readable (a metric label)
    detail: str  # one line: what the client should change
    retry_after_s: float | None = None


Admit = Callable[[Arrival], "Refusal | None"]


class Networks:
    """Membership in a list of addresses and CIDRs (IPv4-mapped IPv6 counts as IPv4)."""

    def __init__(self, entries: Iterable[str]):
        self.nets = [ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()]

    def __contains__(self, address: str) -> bool:
        ip = parse_ip(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.nets)

    def __bool__(self) -> bool:
        return bool(self.nets)


def parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_key(address: str) -> str:
    """The key of per-address limits: the IPv4 address, or the /64 of an IPv6 address."""
    ip = parse_ip(address)
    if ip is None:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


GROUP_PREFIX_V4 = 32   # an IPv4 address is its own group: IPv4 addresses are scarce, one per home line
GROUP_PREFIX_V6 = 48   # one site's IPv6 allocation: a /48 (2^16 /64s, each an address_key of its own)


def address_group(address: str) -> str:
    """The network `address` belongs to for limits on what one holder of many addresses may take
    together: an IPv4 address itself, the /48 of an IPv6 one. Takes an address or a stored
    `address_key` (an IPv6 /64); anything else is its own group. Per-address limits count
    `address_key`s, of which one home line with a /48 holds 65,536: a cap per group is the one
    such a line cannot multiply. IPv4 is not grouped wider: honest contributors share /24s
    (a cloud provider's or a university's range; the WAN harness puts every site in one), and a
    /24 cap held their newcomers to a quarter of the newcomers' share between them."""
    text = address.strip().strip("[]")
    try:
        net = ipaddress.ip_network(text, strict=False) if "/" in text else None
    except ValueError:
        return address
    ip = net.network_address if net is not None else parse_ip(text)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = GROUP_PREFIX_V4 if ip.version == 4 else GROUP_PREFIX_V6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def forwarded_client(peer: str, header: str | None, proxies: Networks) -> str:
    """The client behind `peer`: the peer itself unless it is a trusted proxy; then the
    right-most `X-Forwarded-For` entry that is not a trusted proxy (entries to its left were
    written by the client and prove nothing). Written here rather than taken from uvicorn's
    ProxyHeadersMiddleware because the guard needs the address at header time, before any
    ASGI middleware runs."""
    if not header or peer not in proxies:
        return peer
    hops = [h.strip() for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if parse_ip(hop) is None:
            return peer  # garbage in the header: fall back to what TCP says
        if hop not in proxies:
            return str(parse_ip(hop))
    return str(parse_ip(hops[0])) if hops else peer


class Guard:
    """The shared state of one server process: open connections per address and the
    service's admission rule. Used from the event loop thread only (no locks)."""

    def __init__(self, limits: ServerLimits = ServerLimits(), admit: Admit | None = None,
                 on_refuse: Callable[[str], None] | None = None):
        self.limits = limits
        self.admit = admit or (lambda _a: None)
        self.on_refuse = on_refuse or (lambda _r: None)
        self.proxies = Networks(limits.trusted_proxies)
        self.exempt = Networks(limits.exempt_addresses)
        self.open: Counter[str] = Counter()

    def connection_opened(self, peer: str) -> Refusal | None:
        cap = self.limits.max_connections_per_address
        key = address_key(peer)
        if cap and peer not in self.exempt and peer not in self.proxies and self.open[key] >= cap:
            return Refusal(429, "too_many_connections",
                           f"{cap} connections from {key} are already open; reuse one (HTTP keep-alive)", 1.0)
        self.open[key] += 1
        return None

    def connection_closed(self, peer: str) -> None:
        key = address_key(peer)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


def read_only(limits: ServerLimits = ServerLimits(), max_body_bytes: int = 1024) -> Guard:
    """The guard of a service that only answers GETs (health, metrics, status pages): the
    connection limits above, and any body over `max_body_bytes` refused on its headers."""
    def admit(a: Arrival) -> Refusal | None:
        if a.chunked or (a.content_length or 0) > max_body_bytes:
            return Refusal(413, "too_large", f"this service takes no request body over {max_body_bytes} bytes")
        return None

    return Guard(limits, admit)


def attach(app: Any, guard: Guard) -> Any:
    """Declare the guard `serve`/`ServerThread` run `app` behind."""
    setattr(app.state, STATE_KEY, guard)
    return app


def guard_of(app: Any) -> Guard | None:
    state = getattr(app, "state", None)
    return getattr(state, STATE_KEY, None) if state is not None else None


def refusal_bytes(r: Refusal) -> bytes:
    body = json.dumps({"detail": r.detail}).encode()
    head = [f"HTTP/1.1 {r.status} {_PHRASES.get(r.status, '')}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if r.retry_after_s is not None:
        head.append(f"retry-after: {max(1, int(r.retry_after_s + 0.999))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_PHRASES = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
            431: "Request Header Fields Too Large"}


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    values = [v for k, v in headers if k == name]
    return b",".join(values).decode("latin-1") if values else None


# uvicorn's warnings about one client's request (a head httptools cannot parse, an upgrade asked for)
_CLIENT_FAULTS = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")


class _ClientFaults(logging.LoggerAdapter):
    """uvicorn's protocol logger with its warnings about one client's request (`_CLIENT_FAULTS`)
    at debug level, counted as `malformed` refusals: they are logged before the guard charged
    anything, so at warning level anyone reconnecting could write the service's log at any rate
    it liked. Its other warnings (the concurrency limit) stay warnings."""

    def __init__(self, logger: logging.Logger, guard: Guard):
        super().__init__(logger, {})
        self.guard = guard

    @property
    def level(self) -> int:  # uvicorn reads it to decide whether to trace
        return self.logger.level

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not str(msg).startswith(_CLIENT_FAULTS):
            self.logger.warning(msg, *args, **kwargs)
            return
        self.guard.on_refuse("malformed")
        self.logger.debug(msg, *args, **kwargs)


def guarded_protocol(guard: Guard) -> type:
    """uvicorn's httptools protocol with the guard's checks (a class per guard)."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            self.logger = _ClientFaults(logging.getLogger("uvicorn.error"), guard)
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else ""
            self._timer = None
            self._refused = False
            # header bytes of the request being read, counted from the read after the one that
            # began it (that read is bounded by the transport's read size): `max_header_bytes`
            self._in_head, self._heads, self._head_bytes = True, 0, 0
            refusal = guard.connection_opened(self._peer)
            self._counted = refusal is None
            if refusal is not None:
                self._refuse(refusal)
                return
            self._arm(guard.limits.header_timeout_s, "header_timeout")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted:
                self._counted = False
                guard.connection_closed(self._peer)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # lingering after a refusal: discarded unparsed
            head, heads = self._in_head, self._heads
            super().data_received(data)
            if head and self._in_head and heads == self._heads and not self._refused:
                self._head_bytes += len(data)   # a whole read inside one request's headers
                if self._head_bytes > guard.limits.max_header_bytes:
                    self._refuse(Refusal(431, "headers_too_large", f"a request's line and headers may take at "
                                                                   f"most {guard.limits.max_header_bytes} bytes"))

        def on_message_begin(self) -> None:
            if self._refused:
                return
            self._in_head, self._heads, self._head_bytes = True, self._heads + 1, 0
            super().on_message_begin()
            if self._timer is None:  # a keep-alive request: its own header deadline
                self._arm(guard.limits.header_timeout_s, "header_timeout")

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_head = False
            if self._refused:
                return
            address = forwarded_client(self._peer, _header(self.headers, b"x-forwarded-for"), guard.proxies)
            self.scope["client"] = (address, self.client[1] if self.client else 0)
            length = _header(self.headers, b"content-length")
            chunked = "chunked" in (_header(self.headers, b"transfer-encoding") or "").lower()
            try:
                declared = int(length) if length is not None else None
            except ValueError:
                declared = None
            try:
                path = urllib.parse.unquote(httptools.parse_url(self.url).path.decode("latin-1"))
            except httptools.HttpParserInvalidURLError:
                path = ""  # uvicorn answers it; admission sees a path no route has
            arrival = Arrival(address=address, peer=self._peer, method=self.parser.get_method().decode("ascii"),
                              path=path, content_length=declared, chunked=chunked)
            refusal = guard.admit(arrival)
            if refusal is not None:
                self._refuse(refusal)
                return
            super().on_headers_complete()
            if chunked or (declared or 0) > 0:
                self._arm(guard.limits.body_timeout_s, "body_timeout")

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            self._disarm()
            super().on_message_complete()

        # -- helpers ---------------------------------------------------------------------
        def _arm(self, seconds: float, reason: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expire, reason)

        def _disarm(self) -> None:
            if getattr(self, "_timer", None) is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, reason: str) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            guard.on_refuse(reason)
            log.debug("%s: closing the connection of %s", reason, self._peer)
            in_flight = self.cycle is not None and not self.cycle.response_complete
            if reason == "header_timeout" and not in_flight:
                self.transport.write(refusal_bytes(Refusal(408, reason, "the request's headers did not arrive "
                                                                        "in time; send them at once")))
            self.transport.close()

        def _refuse(self, r: Refusal) -> None:
            guard.on_refuse(r.reason)
            self._refused = True
            if self.cycle is None or self.cycle.response_complete:  # never write into another response
                self.transport.write(refusal_bytes(r))
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                    self.loop.call_later(LINGER_S, self.transport.close)
                    return
            self.transport.close()

    return GuardedProtocol
