"""Entry points of the worker role: `run` (the daemon) and `print_status` (`worker status`).

`swarmrl worker` parses a `WorkerConfig` and calls `run(cfg)`; the demo's dishonest worker
and tests call `run(cfg, engine=...)` with their own engine, so everything else (joining,
leasing, spooling, signals, status) is the same code for every worker.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from worker.config import WorkerConfig
from worker.engines.base import Engine

log = logging.getLogger("worker")


def _install_signals(daemon: Any) -> dict:
    """First SIGTERM/SIGINT: graceful stop. Second: abort the running batch."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        if daemon.stop.is_set():
            daemon.abort.set()
            raise KeyboardInterrupt
        daemon.request_stop()

    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)
    return old


def run(cfg: WorkerConfig, engine: Engine | None = None) -> None:
    """Run the worker daemon until SIGTERM/SIGINT (or a ban, which raises `Banned`)."""
    from rich.console import Console

    from worker.view import live_view, setup_logging

    interactive = not cfg.json_logs and sys.stderr.isatty()
    console = Console(stderr=True) if interactive else None
    setup_logging(cfg.json_logs, console)

    from worker.daemon import Daemon
    from worker.engines import make_engine

    if engine is None:
        engine = make_engine(cfg.engine, device=cfg.device, dtype=cfg.dtype, threads=cfg.threads, vllm=cfg.vllm)
    daemon = Daemon(cfg, engine)
    old = _install_signals(daemon)
    live = live_view(daemon.state.snapshot, console) if console is not None else None
    try:
        if live is not None:
            live.start()
        daemon.run()
    finally:
        if live is not None:
            live.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def fetch_status(cfg: WorkerConfig, timeout_s: float = 5.0) -> dict:
    """The running worker's `/status` (found through `data_dir/status.port`)."""
    import httpx

    from protocol.errors import ProtocolError
    from worker.status_server import PORT_FILE

    port_file = Path(cfg.data_dir).expanduser() / PORT_FILE
    try:
        with open(port_file, "rb") as fh:  # a folder, unreadable: OSError
            port = int(fh.read(64).strip())
        if not 0 < port < 65536:
            raise ValueError(port)
    except (OSError, ValueError):
        raise ProtocolError(f"no worker status at {port_file}: is a worker running with this data_dir?") from None
    host = cfg.status_host if cfg.status_host not in ("0.0.0.0", "::") else "127.0.0.1"
    try:
        resp = httpx.get(f"http://{host}:{port}/status", timeout=timeout_s)
        resp.raise_for_status()
        return resp.json()
    except httpx.HTTPError as exc:
        raise ProtocolError(f"the worker at {host}:{port} does not answer ({exc}); is it still running?") from None


def print_status(cfg: WorkerConfig) -> None:
    """`swarmrl worker status`: print what the running worker's live view shows."""
    from rich.console import Console

    from worker.view import render

    snap = fetch_status(cfg)
    if cfg.json_logs:
        import json

        print(json.dumps(snap, indent=1))
        return
    Console().print(render(snap))
