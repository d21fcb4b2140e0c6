"""Hostile fixture: floods an HTTP service with unsigned big bodies and slowloris connections.

For the hostile-swarm test and `bench/`: each attacker is plain sockets on threads, so it
runs beside any server (in-process or not) and measures what the server does, not what a
client library would do.

Start it against a service on 127.0.0.1. On Linux every 127.0.0.0/8 address is loopback, so
`sources=["127.0.0.2", "127.0.0.3", ...]` plays many attackers from one machine (per-address
limits see each as its own client):

    from tests.hostile.flood import BigBodies, Slowloris, connect

    with BigBodies("127.0.0.1", port, "/v1/submissions", n=24, size=4_000_000,
                   sources=[f"127.0.0.{i}" for i in range(2, 26)]) as flood:
        flood.wait_sent(30)                  # every body handed to the kernel (or cut short)
        ... flood.in_flight() ...            # requests without an answer yet
        flood.wait(60)
    flood.statuses()                         # e.g. {413: 24} or {401: 20, 429: 4}

    with Slowloris("127.0.0.1", port, n=8, interval_s=4.0, phase="headers") as lor:
        lor.wait_closed(30)                  # True once the server closed every connection
    lor.closed_by_server()                   # how many the server closed (not us)

What they do:
- `BigBodies`: `n` parallel `POST path` requests, each `size` bytes of JSON shaped like a signed
  envelope (kind, body with a long token list, signer, timestamp, nonce, signature) that nobody
  signed; all start together. Each sends its headers, then the body in 64 KiB slices, and stops
  sending as soon as the server answers. `statuses()` counts the answers (an int status, or
  'reset' / 'closed' when the server cut the connection without one).
- `Slowloris`: `n` connections that send a request one byte every `interval_s`: in the request
  line and headers (`phase="headers"`), after complete headers in the body (`phase="body"`), or
  nothing at all (`phase="idle"`). It records when the server closed each one.
- `connect(host, port, source)`: one raw connection from a chosen source address.

Stop: leaving the `with` block (or `.stop()`) closes every socket and joins the threads.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

SLICE = 64 * 1024
_bodies: dict[tuple[int, str], bytes] = {}


def connect(host: str, port: int, source: str | None = None, timeout_s: float = 30.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout_s,
                                    source_address=(source, 0) if source else None)


def envelope_shaped(size: int, kind: str = "submission", run_id: str = "swarmrl-run",
                    audience: str = "coordinator") -> bytes:
    """`size` bytes of JSON with a signed envelope's fields (for the run and role it targets:
    those are public) and a signature that signs nothing."""
    head = json.dumps({"kind": kind, "run_id": run_id, "audience": audience, "signer": "ab" * 32,
                       "timestamp": time.time(), "nonce": "cd" * 16,
                       "signature": "A" * 86 + "==", "body": {"lease_id": "l-flood", "policy_version": 0,
                                                              "completions": [{"finish_reason": "length",
                                                                               "proof": "", "token_ids": []}]}},
                      separators=(",", ":")).encode()
    cut = head.index(b'"token_ids":[') + len(b'"token_ids":[')
    prefix, suffix = head[:cut], head[cut:]
    room = size - len(prefix) - len(suffix)
    if room < 2:
        return head
    # odd room: "7,7,...,7"; even room: the last id is "77" (the timestamp's length varies)
    ids = b"7," * (room // 2) + b"7" if room % 2 else b"7," * (room // 2 - 1) + b"77"
    return prefix + ids + suffix


def _status(sock: socket.socket, timeout_s: float) -> int | str:
    """The status code of the server's answer, or why there is none."""
    try:
        sock.settimeout(timeout_s)
    except OSError:
        return "stopped"  # closed by `stop` before the answer came
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return "closed" if not data else "truncated"
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "no answer"
    except OSError:
        return "stopped"
    parts = data.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else "garbage"


@dataclass
class Outcome:
    source: str | None
    started: float = 0.0
    sent_bytes: int = 0
    done: float | None = None
    status: int | str | None = None


@dataclass
class BigBodies:
    host: str
    port: int
    path: str
    n: int = 24
    size: int = 4_000_000
    sources: list[str] | None = None
    answer_timeout_s: float = 60.0
    run_id: str = "swarmrl-run"
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.body = _bodies.get((self.size, self.run_id)) or envelope_shaped(self.size, run_id=self.run_id)
        _bodies[(self.size, self.run_id)] = self.body  # waves of a flood send the same bytes (built once)
        self._threads: list[threading.Thread] = []
        self._go = threading.Event()
        self._sent = threading.Semaphore(0)
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "BigBodies":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "BigBodies":
        for i in range(self.n):
            src = self.sources[i % len(self.sources)] if self.sources else None
            out = Outcome(source=src)
            self.outcomes.append(out)
            t = threading.Thread(target=self._one, args=(out,), daemon=True, name=f"flood-{i}")
            t.start()
            self._threads.append(t)
        self._go.set()
        return self

    def _one(self, out: Outcome) -> None:
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(self.body)}\r\n\r\n").encode()
        self._go.wait()
        out.started = time.monotonic()
        try:
            sock = connect(self.host, self.port, out.source)
        except OSError as exc:
            out.status, out.done = f"connect: {exc.strerror or exc}", time.monotonic()
            self._sent.release()
            return
        with self._lock:
            self._socks.append(sock)
        try:
            sock.sendall(head)
            view = memoryview(self.body)
            for off in range(0, len(view), SLICE):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered (or closed) before taking the whole body
                sock.sendall(view[off:off + SLICE])
                out.sent_bytes = off + len(view[off:off + SLICE])
        except OSError:
            pass  # cut off by the server: its answer (if any) is read below
        self._sent.release()
        out.status = _status(sock, self.answer_timeout_s)
        out.done = time.monotonic()

    def wait_sent(self, timeout_s: float) -> bool:
        """True once every request has sent its whole body or stopped because it was answered."""
        deadline = time.monotonic() + timeout_s
        for _ in range(self.n):
            if not self._sent.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
        for _ in range(self.n):
            self._sent.release()
        return True

    def in_flight(self) -> int:
        return sum(1 for o in self.outcomes if o.done is None)

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return self.in_flight() == 0

    def statuses(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def stop(self) -> None:
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass
        for t in self._threads:
            t.join(5)


@dataclass
class Slowloris:
    host: str
    port: int
    n: int = 8
    interval_s: float = 4.0
    phase: str = "headers"  # "headers", "body" or "idle"
    path: str = "/v1/workers/heartbeat"
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        if self.phase not in ("headers", "body", "idle"):
            raise ValueError("phase is 'headers', 'body' or 'idle'")
        self.opened: list[float] = []
        self.closed: list[float | None] = []
        self.answers: list[bytes] = [b""] * self.n
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slowloris")

    def __enter__(self) -> "Slowloris":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Slowloris":
        if self.phase == "body":
            self.first = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\ncontent-type: application/json\r\n"
                          "content-length: 1000\r\n\r\n").encode()
            self.drip = b"{" + b" " * 999  # 1,000 bytes fit every route's cap: only the deadline stops it
        else:
            self.first = b""
            self.drip = f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nX-Slow: ".encode() + b"a" * 100_000
        for i in range(self.n):
            src = self.sources[i % len(self.sources)] if self.sources else None
            s = connect(self.host, self.port, src)
            s.sendall(self.first)
            s.setblocking(False)
            self._socks.append(s)
            self.opened.append(time.monotonic())
            self.closed.append(None)
        self._thread.start()
        return self

    def _run(self) -> None:
        pos = 0
        while not self._stop.is_set():
            for i, s in enumerate(self._socks):
                if self.closed[i] is not None:
                    continue
                try:
                    while True:  # anything from the server: an answer, or its close
                        chunk = s.recv(4096)
                        if not chunk:
                            self.closed[i] = time.monotonic()
                            break
                        self.answers[i] += chunk
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed[i] = time.monotonic()
                if self.closed[i] is None and self.phase != "idle":
                    try:
                        s.send(self.drip[pos:pos + 1])
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.closed[i] = time.monotonic()
            pos += 1
            self._stop.wait(self.interval_s)

    def open_count(self) -> int:
        return sum(1 for c in self.closed if c is None)

    def closed_by_server(self) -> int:
        return sum(1 for c in self.closed if c is not None)

    def lifetimes(self) -> list[float | None]:
        """Seconds each connection lived before the server closed it (None: still open)."""
        return [None if c is None else c - o for o, c in zip(self.opened, self.closed)]

    def wait_closed(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.open_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open_count() == 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass

