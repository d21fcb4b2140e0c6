"""How an origin or a relay serves its API: shardcast.front on the public port, the FastAPI
app (shardcast.serving) under uvicorn on a private loopback port behind it.

    NodeServer(catalog, title=..., host=..., port=..., max_transfers=..., limits=FrontLimits(...))
        .start() / .stop() / .url / .port   background threads (the origin, inside the trainer)
        .run(port_file, on_exit)             the main thread until SIGINT/SIGTERM (`swarmrl relay`)

Both servers share one `Transfers` count, so `max_transfers` caps shard bodies however
they are requested. The port file is written once the public port listens.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from protocol.http import ServerThread, settle_heap, write_port_file
from shardcast.config import FrontLimits
from shardcast.front import ShardFront
from shardcast.serving import DEFAULT_MAX_TRANSFERS, Catalog, Transfers, build_app


def bind(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), reuse_port=False)
    sock.setblocking(False)
    return sock


class FrontThread:
    """A `ShardFront` on its own event loop in a background thread (the origin's)."""

    def __init__(self, front: ShardFront, host: str, port: int,
                 stop_backend: Callable[[], None] | None = None):
        self.front = front
        self.stop_backend = stop_backend
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="shard-front")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await self.front.serve(self.sock, self._stop, self.stop_backend)

        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def start(self) -> "FrontThread":
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("shard front server did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=10)
        self.sock.close()


class NodeServer:
    """A node's API as clients see it: the FastAPI app (shardcast.serving) under uvicorn on a
    private loopback port, and the front server on the public `host:port`."""

    def __init__(self, catalog: Catalog, *, title: str, host: str, port: int,
                 max_transfers: int = DEFAULT_MAX_TRANSFERS, limits: FrontLimits | None = None):
        transfers = Transfers(max_transfers)
        app = build_app(catalog, title=title, transfers=transfers)
        self.backend = ServerThread(app, "127.0.0.1", 0)
        self.front = ShardFront(catalog, ("127.0.0.1", self.backend.port), transfers, limits)
        self.host, self._port = host, port
        self._thread: FrontThread | None = None

    @property
    def port(self) -> int:
        """The public port (bound; the configured one before `start`)."""
        return self._thread.port if self._thread is not None else self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "NodeServer":
        """Serve from background threads of this process (the origin inside the trainer)."""
        self.backend.start()
        try:
            self._thread = FrontThread(self.front, self.host, self._port,
                                       stop_backend=self.backend.stop).start()
        except BaseException:
            self.backend.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self.backend.stop()

    def run(self, port_file: Path | None = None, on_exit: Callable[[], None] | None = None) -> None:
        """Serve in this (the main) thread until SIGINT/SIGTERM (`swarmrl relay`). The bound
        port is written to `port_file` once the public port listens; `on_exit` runs first
        thing on the stop signal (e.g. to end long-polls at once)."""
        self.backend.start()
        sock = bind(self.host, self._port)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()

            def _exit() -> None:
                if on_exit is not None:
                    on_exit()
                stop.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _exit)
            serving = asyncio.ensure_future(self.front.serve(sock, stop, self.backend.stop))
            await asyncio.sleep(0)  # the listening socket is in the loop now
            if port_file is not None:
                write_port_file(Path(port_file), sock.getsockname()[1])
            await serving

        settle_heap()  # protocol.http: startup objects out of the collector's reach, no full-collection stalls
        try:
            asyncio.run(main())
        finally:
            sock.close()
            self.backend.stop()
