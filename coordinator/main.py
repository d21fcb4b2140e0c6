"""`swarmrl coordinator`: build the context (database, keys, tokenizer), serve the API.

Port 0 picks a free port and writes it to `<data_dir>/coordinator.port`. SIGINT/SIGTERM
stop uvicorn gracefully (in-flight requests finish, the archive is flushed); a SIGKILL loses
nothing committed (see coordinator.store.db).
"""

from __future__ import annotations

import logging

from coordinator.config import CoordinatorConfig

log = logging.getLogger("swarmrl.coordinator")


def run(cfg: CoordinatorConfig) -> None:
    from coordinator.app import create_app
    from coordinator.context import build_context
    from protocol.http import serve

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx = build_context(cfg)
    if cfg.archive:
        from coordinator.archive import Archiver

        ctx.archiver = Archiver(ctx.db, cfg.data_dir / "archive", ctx.metrics, interval_s=cfg.archive_interval_s)
    app = create_app(ctx)
    where = "SQLite" if ctx.db.is_sqlite else "PostgreSQL"
    log.info("coordinator of run %s on %s:%s (%s, key %s)", cfg.run_id, cfg.host, cfg.port, where,
             ctx.key.peer_id)
    try:
        serve(app, cfg.host, cfg.port, port_file=cfg.data_dir / "coordinator.port", log_level="warning")
    finally:
        ctx.db.dispose()
