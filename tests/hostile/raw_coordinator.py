"""A coordinator the client does not control, as a raw HTTP/1.1 server on 127.0.0.1
(http.server), so its answers can be exactly as broken as a hostile one's: the tests of the
worker's client (tests/unit/worker/test_hostile_coordinator_answers.py) and of the trainer's and
verifier's (tests/unit/protocol/test_operator_clients_bounded.py) share it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # clients leaving is the point
        pass


class HostileCoordinator:
    """Every request is answered by `answer(handler, self)`; `sent` counts body bytes written
    (through `write`), `requests` the requests seen."""

    def __init__(self, answer: Callable[[Any, "HostileCoordinator"], None]):
        self.answer = answer
        self.sent = 0
        self.requests = 0
        self.done = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                owner.requests += 1
                try:
                    owner.answer(self, owner)
                except OSError:
                    pass

            do_GET = do_POST = _any

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def write(self, handler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.sent += len(data)

    def stop(self) -> None:
        self.done.set()
        self.server.shutdown()
        self.server.server_close()


def head(status: int = 200, extra: str = "", length: int | None = None, chunked: bool = False) -> str:
    """An answer's status line and headers (JSON content type)."""
    lines = [f"HTTP/1.1 {status} X", "content-type: application/json"]
    if chunked:
        lines.append("transfer-encoding: chunked")
    if length is not None:
        lines.append(f"content-length: {length}")
    if extra:
        lines.append(extra)
    return "\r\n".join(lines) + "\r\n\r\n"


def endless(limit: int) -> Callable[[Any, HostileCoordinator], None]:
    """An answer: a chunked 200 whose body never ends (1 MiB chunks until the client leaves; this
    server stops sending after `limit` bytes in all and then holds the body open)."""
    chunk = b"x" * (1 << 20)

    def answer(h, owner: HostileCoordinator) -> None:
        owner.write(h, head(chunked=True).encode())
        while not owner.done.is_set() and owner.sent < limit:
            owner.write(h, b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        owner.done.wait(60)

    return answer


def call_within(fn: Callable[[], Any], seconds: float) -> tuple[bool, BaseException | None]:
    """Run `fn` in a thread; (finished in time, its exception or None)."""
    box: dict = {}

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), box.get("exc")
