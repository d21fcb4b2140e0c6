"""`swarmrl coordinator`: build the context (database, keys, tokenizer), serve the API.

Port 0 picks a free port and writes it to `<data_dir>/coordinator.port`. SIGINT/SIGTERM
stop uvicorn gracefully (in-flight requests finish, the archive is flushed); a SIGKILL loses
nothing committed (see coordinator.store.db).

`workers = N > 1` runs N server processes on one listening socket (bound here, inherited by
forked children), all sharing the database: SQLite serialises their writes with its lock,
PostgreSQL with row locks. Process 0 is the leader: it alone runs the periodic sweep and the
archive. The parent only supervises: it forwards SIGTERM/SIGINT and restarts a child that
dies unexpectedly. Prometheus counters are summed across processes (multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from coordinator.config import CoordinatorConfig

log = logging.getLogger("swarmrl.coordinator")
RESTART_BACKOFF_S = 2.0


def run(cfg: CoordinatorConfig) -> None:
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if cfg.workers > 1:
        _serve_many(cfg)
        return
    from protocol.http import serve

    ctx, app = _build(cfg, leader=True)
    log.info("coordinator of run %s on %s:%s (%s, key %s)", cfg.run_id, cfg.host, cfg.port,
             "SQLite" if ctx.db.is_sqlite else "PostgreSQL", ctx.key.peer_id)
    try:
        serve(app, cfg.host, cfg.port, port_file=cfg.data_dir / "coordinator.port", log_level="warning")
    finally:
        ctx.db.dispose()


def _build(cfg: CoordinatorConfig, leader: bool, multiprocess_dir: str | None = None):
    from coordinator.app import create_app
    from coordinator.context import build_context
    from coordinator.metrics import Metrics

    ctx = build_context(cfg, metrics=Metrics(multiprocess_dir))
    if cfg.archive and leader:
        from coordinator.archive import Archiver

        ctx.archiver = Archiver(ctx.db, cfg.data_dir / "archive", ctx.metrics, interval_s=cfg.archive_interval_s)
    return ctx, create_app(ctx, background=leader)


def _serve_many(cfg: CoordinatorConfig) -> None:
    from protocol.http import bind_socket

    prom_dir = cfg.data_dir / "prometheus"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)  # before prometheus_client is imported
    from coordinator.context import prepare_database
    from protocol.identity import KeyPair

    prepare_database(cfg).dispose()  # migrate once, before any child opens the database
    KeyPair.load_or_create(cfg.key_file)  # one key for all processes (they would race to create it)
    sock = bind_socket(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    children: dict[int, int] = {}
    stopping = threading.Event()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(cfg, sock, index, str(prom_dir), port)
            except BaseException:
                log.exception("coordinator process %d failed", index)
                code = 1
            os._exit(code)
        children[pid] = index

    def stop(signum, _frame) -> None:
        stopping.set()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(cfg.workers):
        spawn(i)
    log.info("coordinator of run %s on %s:%d with %d processes", cfg.run_id, cfg.host, port, cfg.workers)
    from prometheus_client import multiprocess

    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        multiprocess.mark_process_dead(pid, str(prom_dir))
        if index is not None and not stopping.is_set():
            log.error("coordinator process %d (pid %d) exited with status %d; restarting it", index, pid, status)
            time.sleep(RESTART_BACKOFF_S)
            spawn(index)
    sock.close()


def _child(cfg: CoordinatorConfig, sock: socket.socket, index: int, prom_dir: str, port: int) -> None:
    import uvicorn

    from protocol.http import settle_heap, uvicorn_config, write_port_file

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ctx, app = _build(cfg, leader=index == 0, multiprocess_dir=prom_dir)
    server = uvicorn.Server(uvicorn_config(app))
    if index == 0:
        def announce() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if server.started:
                write_port_file(Path(cfg.data_dir) / "coordinator.port", port)

        threading.Thread(target=announce, daemon=True, name="port-file").start()
    settle_heap()
    try:
        server.run(sockets=[sock])
    finally:
        ctx.db.dispose()
