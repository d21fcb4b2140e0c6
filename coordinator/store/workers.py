"""Queries on `workers` (the registry and the contribution ledger) and `nonces` (replays)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, select, update

from coordinator.store.schema import nonces, workers
from coordinator.store.sql import insert_ignore


def get(conn: Connection, worker_id: str) -> Row | None:
    return conn.execute(select(workers).where(workers.c.worker_id == worker_id)).first()


def insert(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(workers.insert().values(**values))


def update_fields(conn: Connection, worker_id: str, **values: Any) -> None:
    conn.execute(update(workers).where(workers.c.worker_id == worker_id).values(**values))


def active_ids_at_address(conn: Connection, address: str) -> list[str]:
    q = select(workers.c.worker_id).where(and_(workers.c.address == address, workers.c.status == "active"))
    return list(conn.execute(q).scalars())


def seen(conn: Connection, worker_id: str, now: float, **values: Any) -> None:
    """A heartbeat (or any signed request): alive now; a 'gone' worker becomes active again."""
    conn.execute(update(workers).where(and_(workers.c.worker_id == worker_id, workers.c.status != "banned"))
                 .values(last_seen=now, status="active", **values))


def mark_gone(conn: Connection, cutoff: float) -> list[str]:
    """Active workers not seen since `cutoff` become 'gone'; returns their ids."""
    ids = list(conn.execute(select(workers.c.worker_id).where(
        and_(workers.c.status == "active", workers.c.last_seen < cutoff))).scalars())
    if ids:
        conn.execute(update(workers).where(and_(workers.c.worker_id.in_(ids), workers.c.status == "active"))
                     .values(status="gone"))
    return ids


def ban(conn: Connection, worker_id: str, reason: str) -> None:
    conn.execute(update(workers).where(workers.c.worker_id == worker_id)
                 .values(status="banned", ban_reason=reason[:2000]))


def credit_accepted(conn: Connection, worker_id: str, tokens: int, clean_check: bool) -> None:
    conn.execute(update(workers).where(workers.c.worker_id == worker_id).values(
        accepted=workers.c.accepted + 1, accepted_tokens=workers.c.accepted_tokens + tokens,
        clean_checks=workers.c.clean_checks + (1 if clean_check else 0)))


def debit_rejected(conn: Connection, worker_id: str) -> None:
    conn.execute(update(workers).where(workers.c.worker_id == worker_id)
                 .values(rejected=workers.c.rejected + 1))


def all_rows(conn: Connection, limit: int = 10_000) -> list[Row]:
    return list(conn.execute(select(workers).order_by(workers.c.registered_at).limit(limit)))


def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(workers.c.status, func.count()).group_by(workers.c.status)
    return {s: n for s, n in conn.execute(q)}


# -- nonces ---------------------------------------------------------------------------------
def remember_nonce(conn: Connection, signer: str, nonce: str, now: float) -> bool:
    """Record a (signer, nonce); False if it was seen before (a replay)."""
    return insert_ignore(conn, nonces, {"signer": signer, "nonce": nonce, "seen_at": now}) == 1


def prune_nonces(conn: Connection, before: float) -> int:
    return conn.execute(delete(nonces).where(nonces.c.seen_at < before)).rowcount
