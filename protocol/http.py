"""HTTP plumbing shared by every swarmrl service and client.

Servers: `serve` runs a FastAPI app under uvicorn on a socket bound before start-up, so
port 0 works and the chosen port is written to a port file that the demo and tests read;
`ServerThread` runs an app inside another process (the trainer's shardcast origin, tests).
Uvicorn's own SIGINT/SIGTERM handling gives a graceful stop. An app that declares a guard
(`protocol.guard.attach`) is served behind it: connection caps, header and body deadlines and
the app's admission rule run before the app sees a request (`uvicorn_config`). Uvicorn's
X-Forwarded-For handling is off for every app: its default trusts loopback, and only the
guard's `trusted_proxies` may name a client.

Clients: `SignedClient` seals a body in an `Envelope`, POSTs it, and translates transport
failures into the two errors callers handle (`protocol.errors`): `Rejected` (the service
answered 4xx: do not retry the same message) and `Unavailable` (no answer or 5xx: retry
later, with `protocol.retry.retry_call`).
Error bodies are `{"detail": "<one clear line>"}` everywhere.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import httpcore
import httpx
from pydantic import BaseModel, ValidationError

from protocol.durable import write_atomic
from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, seal
from protocol.errors import ProtocolError, Rejected, Unavailable, Unreachable
from protocol.identity import KeyPair

R = TypeVar("R", bound=BaseModel)
log = logging.getLogger("swarmrl.http")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket of a service. Created with protocol IPPROTO_TCP, so that the sockets
    asyncio's loop accepts from it carry that protocol too, and asyncio turns Nagle's algorithm
    off on them (it sets TCP_NODELAY only on sockets whose `proto` says TCP): with proto 0 every
    response written in two parts (head, then body) waited for the client's delayed ACK, 40 ms a
    request on Linux (tests/unit/protocol/test_http_accept.py)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def write_port_file(path: Path, port: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{port}\n", durable=False)


def read_port_file(path: Path, timeout_s: float = 30.0) -> int:
    """Wait for a service's port file and return the port."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(Path(path).read_text().strip())
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no port file at {path} after {timeout_s:.0f} s") from None
            time.sleep(0.05)


# The event loop of every service: asyncio's own, not uvloop (uvicorn's "auto" choice when it is
# installed). Under load, uvloop (libuv) accepts one new connection per loop iteration: with
# 1,000 simulated workers keeping the coordinator's loop busy (~1 s an iteration), ~900 new
# connections sat in its accept queue, taken at ~2 a second, so requests on them (the trainer's
# and the verifier's among them, behind a load balancer that opens server connections as it
# needs them) were answered after 95-120 s (bench/many_workers.py, 2026-12-07; reproduced in
# tests/unit/protocol/test_http_accept.py). asyncio's loop accepts every queued connection each
# time the listening socket is readable. It cost nothing measurable: bench/coordinator.py with
# 100 unpaced workers took 164 submissions/s at 6.3 ms of coordinator CPU each, against 145 at
# 7.3 ms with uvloop (the work is in Python handlers, not in the loop). asyncio turns Nagle's
# algorithm off only on sockets whose protocol says TCP: see bind_socket.
EVENT_LOOP = "asyncio"


def uvicorn_config(app: Any, log_level: str = "warning"):
    """The one uvicorn configuration of every swarmrl service (behind the app's guard, if any)."""
    import uvicorn

    from protocol.guard import guard_of, guarded_protocol

    guard = guard_of(app)
    extra: dict[str, Any] = {}
    if guard is not None:
        extra = dict(http=guarded_protocol(guard), limit_concurrency=guard.limits.max_connections,
                     timeout_keep_alive=guard.limits.keepalive_timeout_s)
    return uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                          lifespan="on", proxy_headers=False, loop=EVENT_LOOP, **extra)


def settle_heap() -> None:
    """Collect once, then move every object alive now (modules, the model's config and tokenizer,
    the app) out of the garbage collector's reach (`gc.freeze`). A service then never rescans
    them: in the coordinator ~270,000 startup objects made each full collection take ~120 ms on
    this machine, a stall of the event loop and of every request in flight, more often the more
    requests allocate (hostile ones too: bench/hostile.py's /health p99 under attack). Call once
    startup is done, before serving; objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def serve(app: Any, host: str, port: int, port_file: Path | None = None, log_level: str = "warning",
          on_exit: Callable[[], None] | None = None) -> None:
    """Run `app` until SIGINT/SIGTERM. Writes the bound port to `port_file` once listening.
    `on_exit` (optional) is called when the stop signal arrives, before connections drain
    (e.g. to end long-polls at once)."""
    import uvicorn

    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app, log_level))
    if on_exit is not None:
        handle_exit = server.handle_exit

        def _exit(sig: int, frame: Any) -> None:
            on_exit()
            handle_exit(sig, frame)

        server.handle_exit = _exit  # type: ignore[method-assign]
    if port_file is not None:
        _announce_when_started(server, Path(port_file), sock.getsockname()[1])
    settle_heap()
    server.run(sockets=[sock])


def _announce_when_started(server: Any, port_file: Path, port: int) -> None:
    def wait() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            write_port_file(port_file, port)

    threading.Thread(target=wait, daemon=True, name="port-file").start()


class ServerThread:
    """Run an ASGI app in a background thread of this process (no signal handlers)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = bind_socket(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(app, log_level))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="uvicorn")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


MAX_DETAIL_CHARS = 500      # of an error body's detail: it goes into exceptions, log lines, status pages
MAX_REASON_CHARS = 64       # of its machine-readable `reason`


def short(text: str | bytes | object, limit: int = 200) -> str:
    """At most `limit` characters of untrusted text (a service's answer, a relay's bytes), for
    logs and error messages, with a note of the whole length when cut."""
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", "replace")
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"


def error_detail(resp: httpx.Response) -> str:
    """The `detail` of an error answer, at most MAX_DETAIL_CHARS (plus a note of the length).
    Untrusted: a body nested past the parser's recursion limit raised RecursionError out of
    `check_response` (past every caller's handling), and an 8 MB detail made 8 MB log lines."""
    try:
        d = resp.json().get("detail")
        if isinstance(d, list):  # FastAPI validation errors
            d = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in d[:3])
        return short(str(d), MAX_DETAIL_CHARS) if d else resp.text[:300]
    except (ValueError, AttributeError, TypeError, RecursionError):
        return resp.text[:300] or resp.reason_phrase


def _error_reason(resp: httpx.Response) -> str:
    try:
        reason = resp.json().get("reason")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return reason[:MAX_REASON_CHARS] if isinstance(reason, str) else ""


MIN_RETRY_AFTER_S = 0.5     # a Retry-After below this (0, negative) would make a busy loop
MAX_RETRY_AFTER_S = 300.0   # ... above this, a client asleep for as long as the server likes


def sane_wait(value: object, default: float | None, *, floor: float = MIN_RETRY_AFTER_S,
              cap: float = MAX_RETRY_AFTER_S) -> float | None:
    """`value` (a wait in seconds read from the network: untrusted) as a float within
    [floor, cap]; `default` when it is no finite number (text, None, NaN, infinity). Read
    raw, `float("soon")` raised out of a client's thread, `Event.wait(1e308)` overflowed, 1e9
    slept for years and 0 or a negative number retried in a busy loop."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    if not math.isfinite(v):
        return default
    return min(max(v, floor), cap)


def check_response(resp: httpx.Response) -> httpx.Response:
    """Raise Rejected for 4xx and Unavailable for 5xx; return the response otherwise. A
    Retry-After comes back bounded (`sane_wait`), or as None when it is no number (the
    caller's own backoff then applies)."""
    if resp.status_code >= 500:
        raise Unavailable(f"{resp.request.url.path}: HTTP {resp.status_code}: {error_detail(resp)}")
    if resp.status_code >= 400:
        raw = resp.headers.get("retry-after")
        ra = sane_wait(raw, None) if raw else None
        if raw and ra is None:
            log.warning("%s: ignored an unusable Retry-After header %r", resp.request.url.path, raw[:40])
        raise Rejected(resp.status_code, error_detail(resp), ra, _error_reason(resp))
    return resp


def parse_response(resp: httpx.Response, model: type[R]) -> R:
    try:
        return model.model_validate_json(resp.content)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[:1]
        raise Unavailable(f"{resp.request.url.path}: unexpected response: {short(str(first), MAX_DETAIL_CHARS)}") \
            from exc


def parse_json(resp: httpx.Response) -> Any:
    """A 2xx body read as plain JSON (answers without a model: heartbeats, releases). Text, or
    JSON nested past the parser's recursion limit, is `Unavailable` (a broken or hostile
    service): JSONDecodeError and RecursionError escaped every caller's handling (the worker's
    housekeeping thread died of one, the daemon's lease release of the other)."""
    try:
        return resp.json()
    except (ValueError, RecursionError):
        raise Unavailable(f"{resp.request.url.path}: HTTP {resp.status_code} answer is not JSON "
                          f"({len(resp.content)} bytes)") from None


# Bounded answers (SignedClient's `max_response_bytes`): a body must arrive at least this fast
# once the client's timeout has passed, or the exchange is given up (see `_read_bounded`).
MIN_ANSWER_RATE_BPS = 64 * 1024

# The time by which the answer head of the request this thread is sending must be complete
# (`monotonic`; None: no deadline). Set by SignedClient._exchange, read by _DeadlineStream.
_head_deadline = threading.local()


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads end by the deadline of the request its thread is sending.
    httpx's timeouts bound each read: a head dripped a byte per read held the caller for as long
    as the server liked (h11 accepts a 16 KiB head: at a byte per 29 s, five days)."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = getattr(_head_deadline, "at", None)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ReadTimeout("no complete answer head within the request's timeout")
            timeout = left if timeout is None else min(timeout, left)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bounded_client(timeout_s: float) -> httpx.Client:
    """An httpx client whose direct connections honour `_head_deadline` (connections through a
    proxy named by the environment do not: httpx builds those transports itself)."""
    transport = httpx.HTTPTransport(verify=tls_context())
    limits = httpx.Limits()
    transport._pool = httpcore.ConnectionPool(  # httpx has no public way to give its pool a backend
        ssl_context=tls_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=_DeadlineBackend())
    return httpx.Client(timeout=timeout_s, transport=transport)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The default TLS context (httpx's: certifi's CA bundle, verification on), built once per
    process. Building one costs ~30 ms of CPU; an httpx client created without it builds its
    own, and the shardcast long-polls create a client per round (bench/learning: 14% of a
    worker's CPU went to it)."""
    return httpx.create_ssl_context()


class SignedClient:
    """A small client for one service: signed POSTs and plain GETs, errors translated.

    Every signed POST is sealed for `run_id` and addressed to `audience` (the role of the
    service at `base_url`). A client that learns its run from GET /v1/run sets `run_id` then;
    signing before that is an error, never an unbound message."""

    def __init__(self, base_url: str, key: KeyPair | None = None, timeout_s: float = 30.0,
                 client: httpx.Client | None = None, *, run_id: str = "", audience: str = AUDIENCE_COORDINATOR,
                 max_response_bytes: int | None = None):
        """`max_response_bytes`: answers are read bounded (`_read_bounded`: identity encoding, a
        byte cap, a deadline) with this cap unless a call names its own; None reads them whole,
        as httpx does (for callers that trust the service's answers' size)."""
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.run_id, self.audience = run_id, audience
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.http = client or (httpx.Client(timeout=timeout_s) if max_response_bytes is None
                               else _bounded_client(timeout_s))

    def close(self) -> None:
        self.http.close()

    def post_signed(self, path: str, kind: str, body: BaseModel, response: type[R] | None = None,
                    timeout_s: float | None = None, max_bytes: int | None = None) -> Any:
        resp = self._post_json(path, self._seal(kind, body).model_dump_json(), timeout_s, max_bytes)
        return parse_response(resp, response) if response is not None else parse_json(resp)

    def post_signed_each(self, path: str, kind: str, bodies: list[BaseModel], response: type[R],
                         timeout_s: float | None = None) -> R:
        """POST {"envelopes": [each body sealed as `kind`]}: several signed messages in one request
        (`protocol.messages.VerdictBatch`); each keeps its own signature, nonce and timestamp."""
        envs = ",".join(self._seal(kind, b).model_dump_json() for b in bodies)
        return parse_response(self._post_json(path, '{"envelopes":[' + envs + "]}", timeout_s), response)

    def post_envelope(self, path: str, env: Envelope, response: type[R], timeout_s: float | None = None) -> R:
        """POST an envelope sealed elsewhere (the trainer's operator-signed policy manifest)."""
        return parse_response(self._post_json(path, env.model_dump_json(), timeout_s), response)

    def _seal(self, kind: str, body: BaseModel) -> Envelope:
        if self.key is None:
            raise ProtocolError("this client has no key to sign with")
        if not self.run_id:
            raise ProtocolError(f"cannot sign a {kind}: the run id is not known yet (GET /v1/run first)")
        return seal(kind, body, self.key, run_id=self.run_id, audience=self.audience)

    def _post_json(self, path: str, content: str, timeout_s: float | None,
                   max_bytes: int | None = None) -> httpx.Response:
        """POST a JSON body; transport errors become Unavailable, 4xx Rejected, 5xx Unavailable."""
        return check_response(self._exchange("POST", path, timeout_s, max_bytes, content=content,
                                             headers={"content-type": "application/json"}))

    def get(self, path: str, response: type[R] | None = None, params: dict | None = None,
            timeout_s: float | None = None, max_bytes: int | None = None) -> Any:
        resp = check_response(self._exchange("GET", path, timeout_s, max_bytes, params=params))
        return parse_response(resp, response) if response is not None else parse_json(resp)

    def _exchange(self, method: str, path: str, timeout_s: float | None, max_bytes: int | None,
                  **kw: Any) -> httpx.Response:
        """One request; its answer read whole (no cap set) or bounded (`_read_bounded`)."""
        url = self.base_url + path
        cap = max_bytes or self.max_response_bytes
        timeout = {"timeout": timeout_s} if timeout_s else {}
        try:
            if cap is None:
                return self.http.request(method, url, **kw, **timeout)
            headers = {**kw.pop("headers", {}), "accept-encoding": "identity"}
            _head_deadline.at = time.monotonic() + (timeout_s or self.timeout_s)
            with self.http.stream(method, url, headers=headers, **kw, **timeout) as resp:
                _head_deadline.at = None  # the body has its own rule
                return _read_bounded(resp, url, cap, timeout_s or self.timeout_s)
        except httpx.HTTPError as exc:
            kind = Unreachable if isinstance(exc, httpx.ConnectError) else Unavailable
            raise kind(f"{url}: {type(exc).__name__}: {short(str(exc), MAX_DETAIL_CHARS)}") from exc
        finally:
            _head_deadline.at = None


def _read_bounded(resp: httpx.Response, url: str, cap: int, timeout_s: float) -> httpx.Response:
    """`resp` (streamed) read whole into a new Response, within bounds an untrusted service cannot
    stretch: a Content-Encoding other than identity is refused unread (a 0.26 MB gzip body inflated
    to 256 MiB, and httpx held 2.5 GiB at its peak decoding it); a body over `cap` bytes (declared
    or counted) is refused at the byte that passes it (an endless chunked answer grew memory
    without end); and the body must have arrived by `timeout_s` plus its length at
    MIN_ANSWER_RATE_BPS (httpx's timeout bounds each read, not their sum: a body dripped a byte
    every 0.2 s held the caller for days). All are `Unavailable`. The head is bounded before this
    (`_DeadlineStream`: complete within `timeout_s` of the request being sent)."""
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Unavailable(f"{url}: refused a compressed answer (content-encoding {short(encoding, 40)})")
    declared = resp.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise Unavailable(f"{url}: an answer of {short(declared, 20)} bytes, over the {cap} accepted")
    started = time.monotonic()
    parts: list[bytes] = []
    got = 0
    for chunk in resp.iter_raw():
        got += len(chunk)
        if got > cap:
            raise Unavailable(f"{url}: the answer passed the {cap} bytes accepted")
        if time.monotonic() - started > timeout_s + got / MIN_ANSWER_RATE_BPS:
            raise Unavailable(f"{url}: the answer came too slowly ({got} bytes in {time.monotonic() - started:.0f} s)")
        parts.append(chunk)
    return httpx.Response(resp.status_code, headers=resp.headers, content=b"".join(parts), request=resp.request)
