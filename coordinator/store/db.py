"""Database engines and transactions: SQLite (WAL) by default, PostgreSQL by URL.

`Database.write()` opens a transaction for a state change; `Database.read()` one for reads.
On SQLite a write transaction starts with BEGIN IMMEDIATE (it takes the write lock at once,
so two writers queue on the busy timeout instead of failing on a lock upgrade) and a read
transaction with a plain BEGIN (a WAL snapshot that never blocks the writer). On PostgreSQL
both are ordinary READ COMMITTED transactions; the queries that race (claims, batches) use
row locks with SKIP LOCKED and conditional updates, so several coordinator replicas can share
one database. A write that depends on an earlier read of the same transaction locks what it
read (a worker's row before its standing is recomputed, a lease's row before a submission
closes it, the address key before the identities-per-address count: `pg_advisory_xact_lock`),
and an update that closes or takes rows returns only the rows it changed (RETURNING), never
what a select before it saw: another replica may have changed them in between
(tests/integration/test_coordinator_postgres.py holds two replicas in that window).

Writers on SQLite also take an exclusive `flock` on `<database>.lock` (and a thread lock)
around each write transaction: with several server processes, SQLite's own busy handler
would make a waiting writer sleep in steps of up to 100 ms, while a released flock wakes the
next writer at once, which keeps tail latencies low.

Durability: WAL with synchronous=NORMAL survives a killed process (SIGKILL) losing nothing
that was committed; synchronous=FULL also survives power loss at the cost of an fsync per
commit (`sqlite_synchronous` in the config). The schema is created and upgraded by the Alembic
migrations in `coordinator/migrations` at start-up (`migrate`).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from coordinator.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
WAL_AUTOCHECKPOINT_PAGES = 20_000  # ~80 MB of WAL
PING_IDLE_S = 1.0  # PostgreSQL: a pooled connection idle this long is pinged before use


def normalise_url(url: str, data_dir: Path) -> str:
    """Empty -> SQLite file in data_dir; postgres(ql):// -> the psycopg 3 driver."""
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(data_dir / 'coordinator.db').resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    def __init__(self, url: str, *, sqlite_synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        if self.is_sqlite and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            self._lock_fd = os.open(url[len("sqlite:///"):] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if self.is_sqlite:
                self.engine = create_engine(url, connect_args={"check_same_thread": False,
                                                               "timeout": busy_timeout_ms / 1000})
                _sqlite_setup(self.engine, sqlite_synchronous, busy_timeout_ms)
            else:
                self.engine = create_engine(url, pool_size=8, max_overflow=8)
                _ping_when_idle(self.engine, PING_IDLE_S)
        except ImportError as exc:
            raise ConfigError(f"database driver missing for {url.split(':', 1)[0]}: {exc} "
                              "(for PostgreSQL: pip install 'swarmrl[postgres]')") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        if self._lock_fd is None:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                with self.engine.connect() as conn, conn.begin():
                    yield conn
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(swarmrl_read=True)
            with conn.begin():
                yield conn

    def migrate(self, revision: str = "head") -> None:
        """Create or upgrade the schema to the newest migration (or `revision`; idempotent)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking writers (SQLite; no-op otherwise).
        Called off the event loop, so request handling never waits for it."""
        if not self.is_sqlite:
            return
        raw = self.engine.raw_connection()  # autocommit: a checkpoint must run outside any transaction
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cur.fetchall()
            cur.close()
        finally:
            raw.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Check a pooled connection before use only when it sat idle for `idle_s` or more (a
    restarted or failed-over server, a connection cut by a firewall): SQLAlchemy's
    `pool_pre_ping` pings on every checkout, a round trip per transaction that was ~10% of a
    busy coordinator's event loop (issue 22). A connection the pool handed out within the last
    second has just worked; if the server went away since, that request fails, SQLAlchemy
    invalidates the pool, and the next ones reconnect. A failed ping raises
    DisconnectionError, on which the pool replaces the connection and tries again."""

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_conn, record) -> None:
        record.info["swarmrl_used_at"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record) -> None:
        if record is not None:
            record.info["swarmrl_used_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy) -> None:
        if time.monotonic() - record.info.get("swarmrl_used_at", 0.0) < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure of the ping means: not usable
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _sqlite_setup(engine: Engine, synchronous: str, busy_timeout_ms: int) -> None:
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"sqlite_synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun explicitly below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # checkpoints run in the background (Database.checkpoint, from the leader's sweep); this
        # larger automatic threshold is only a safety net, so requests rarely pay for one
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if conn.get_execution_options().get("swarmrl_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
