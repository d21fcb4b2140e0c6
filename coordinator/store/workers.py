"""Queries on `workers` (the registry and the contribution ledger) and `nonces` (replays).

Hot statements are built once with bind parameters: SQLAlchemy then reuses their compiled
form, which costs a quarter of building a new expression per request (bench/coordinator.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, case, delete, func, or_, select, text, update

from coordinator.store.schema import nonces, workers
from coordinator.store.sql import insert_ignore

_GET = select(workers).where(workers.c.worker_id == bindparam("w"))
_GET_FOR_UPDATE = _GET.with_for_update()
_NONCE_SEEN = select(nonces.c.seen_at).where(and_(nonces.c.signer == bindparam("s"), nonces.c.nonce == bindparam("n")))
_ADDRESS_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_SEEN = (update(workers).where(and_(workers.c.worker_id == bindparam("w"), workers.c.status != "banned"))
         .values(last_seen=bindparam("now"), status="active"))
_SEEN_HB = _SEEN.values(policy_version=bindparam("pv"), tokens_per_s=bindparam("tps"), status_text=bindparam("st"))
_NEWEST_CLEAN = case((workers.c.last_clean_check_at.is_(None), bindparam("clean_at")),
                     (workers.c.last_clean_check_at < bindparam("clean_at"), bindparam("clean_at")),
                     else_=workers.c.last_clean_check_at)
_CREDIT = update(workers).where(workers.c.worker_id == bindparam("w")).values(
    accepted=workers.c.accepted + 1, accepted_tokens=workers.c.accepted_tokens + bindparam("tokens"),
    clean_checks=workers.c.clean_checks + bindparam("clean"),
    checked_positions=workers.c.checked_positions + bindparam("positions"),
    near_ties=workers.c.near_ties + bindparam("ties"),
    drift_score=bindparam("score"), drift_worst_score=bindparam("worst"), near_tie_score=bindparam("tie_score"),
    last_clean_check_at=_NEWEST_CLEAN)
_DEBIT = update(workers).where(workers.c.worker_id == bindparam("w")).values(rejected=workers.c.rejected + 1)
_BAN = update(workers).where(workers.c.worker_id == bindparam("w")).values(
    status="banned", ban_reason=bindparam("reason"), banned_at=bindparam("now"))
_ISSUED = update(workers).where(workers.c.worker_id == bindparam("w")).values(
    leases_issued=workers.c.leases_issued + bindparam("n"))
_DROPPED = update(workers).where(workers.c.worker_id == bindparam("w")).values(
    leases_dropped=workers.c.leases_dropped + bindparam("n"))
_BANNED_AT_ADDRESS = select(func.count()).select_from(workers).where(and_(
    workers.c.address == bindparam("a"), workers.c.status == "banned", workers.c.banned_at >= bindparam("since")))
_AT_ADDRESS = select(workers.c.worker_id).where(and_(workers.c.address == bindparam("a"), workers.c.status == "active"))


def get(conn: Connection, worker_id: str, *, for_update: bool = False) -> Row | None:
    """`for_update`: lock the row until the transaction ends (PostgreSQL; on SQLite a write
    transaction already holds the database's one write lock), for a read-modify-write of it."""
    if for_update and conn.dialect.name == "postgresql":
        return conn.execute(_GET_FOR_UPDATE, {"w": worker_id}).first()
    return conn.execute(_GET, {"w": worker_id}).first()


def address_lock_key(address: str) -> int:
    """The advisory lock key of a stored address: 64 bits of its hash, as PostgreSQL's bigint."""
    digest = hashlib.blake2b(address.encode(), digest_size=8, person=b"swarmrl-addr").digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_address(conn: Connection, address: str) -> None:
    """Serialise, until this transaction ends, the transactions that count the identities at
    `address` and then make one active there (`coordinator.service.join.check_address_room`):
    without it two replicas on PostgreSQL both counted before either wrote, and both took the
    last place. PostgreSQL: a transaction-scoped advisory lock on the address's key (a hash
    collision only serialises two addresses needlessly); SQLite: nothing to do, a write
    transaction holds the database's one write lock from its BEGIN IMMEDIATE."""
    if conn.dialect.name == "postgresql":
        conn.execute(_ADDRESS_LOCK, {"k": address_lock_key(address)})


def insert(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(workers.insert(), values)


def update_fields(conn: Connection, worker_id: str, **values: Any) -> None:
    conn.execute(update(workers).where(workers.c.worker_id == worker_id).values(**values))


def rekey_addresses(conn: Connection, key_of: Callable[[str], str]) -> int:
    """Rewrite every stored address `a` as `key_of(a)` where they differ; returns the rows
    changed. `key_of` must map its own results to themselves (then this is idempotent)."""
    changed = 0
    for address in list(conn.execute(select(workers.c.address).distinct()).scalars()):
        key = key_of(address)[:64]
        if key != address:
            changed += conn.execute(update(workers).where(workers.c.address == address).values(address=key)).rowcount
    return changed


def active_ids_at_address(conn: Connection, address: str) -> list[str]:
    return list(conn.execute(_AT_ADDRESS, {"a": address}).scalars())


def seen(conn: Connection, worker_id: str, now: float) -> None:
    """Any signed request: alive now; a 'gone' worker becomes active again."""
    conn.execute(_SEEN, {"w": worker_id, "now": now})


def heartbeat(conn: Connection, worker_id: str, now: float, policy_version: int | None, tokens_per_s: float,
              status_text: str) -> None:
    conn.execute(_SEEN_HB, {"w": worker_id, "now": now, "pv": policy_version, "tps": tokens_per_s,
                            "st": status_text})


def mark_gone(conn: Connection, cutoff: float) -> list[str]:
    """Active workers not seen since `cutoff` become 'gone'; returns the ids this call changed
    (UPDATE ... RETURNING: another replica's sweep may have marked the same ones meanwhile)."""
    return list(conn.execute(update(workers).where(and_(workers.c.status == "active", workers.c.last_seen < cutoff))
                             .values(status="gone").returning(workers.c.worker_id)).scalars())


def ban(conn: Connection, worker_id: str, reason: str, now: float) -> None:
    conn.execute(_BAN, {"w": worker_id, "reason": reason[:2000], "now": now})


def banned_at_address_since(conn: Connection, address: str, since: float) -> int:
    """Identities at `address` banned at or after `since` (they still count against it)."""
    return int(conn.execute(_BANNED_AT_ADDRESS, {"a": address, "since": since}).scalar_one())


def count_leases(conn: Connection, issued: dict[str, int] | None = None, dropped: dict[str, int] | None = None) -> None:
    """Add to workers' issued / dropped (released or expired) lease counters."""
    for stmt, counts in ((_ISSUED, issued), (_DROPPED, dropped)):
        for w, n in (counts or {}).items():
            if n:
                conn.execute(stmt, {"w": w, "n": n})


def credit_accepted(conn: Connection, worker_id: str, tokens: int, clean_check: bool, *,
                    drift: tuple[float, float], clean_check_at: float | None, positions: int = 0,
                    near_ties: int = 0, near_tie_score: float = 0.0) -> None:
    """Count an accepted submission, in one statement: a full check also adds its sampling
    counts (tokens checked, tokens off the seeded argmax) to the worker's near-tie ledger; the
    drift scores (pooled, worst completion) and the near-tie CUSUM are stored; `clean_check_at` (a clean full check's
    receipt time) moves the worker's newest clean check forward, never back."""
    conn.execute(_CREDIT, {"w": worker_id, "tokens": tokens, "clean": 1 if clean_check else 0,
                           "positions": positions, "ties": near_ties, "score": drift[0], "worst": drift[1],
                           "tie_score": near_tie_score, "clean_at": clean_check_at})


def debit_rejected(conn: Connection, worker_id: str) -> None:
    conn.execute(_DEBIT, {"w": worker_id})


def all_rows(conn: Connection, limit: int = 10_000) -> list[Row]:
    return list(conn.execute(select(workers).order_by(workers.c.registered_at).limit(limit)))


def new_identity(established_after: Any) -> ColumnElement[bool]:
    """The condition on `workers` of a worker without verified work: fewer than
    `established_after` (a number, or a bind parameter) accepted submissions, or banned. The negation is
    `coordinator.service.work.established_row` (the intake's and the leases' lanes) for one row."""
    w = workers.c
    return or_(w.accepted < established_after, w.status == "banned")


def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(workers.c.status, func.count()).group_by(workers.c.status)
    return {s: n for s, n in conn.execute(q)}


# -- nonces ---------------------------------------------------------------------------------
def remember_nonce(conn: Connection, signer: str, nonce: str, now: float) -> bool:
    """Record a (signer, nonce); False if it was seen before (a replay)."""
    return insert_ignore(conn, nonces, {"signer": signer, "nonce": nonce, "seen_at": now}) == 1


def nonce_seen(conn: Connection, signer: str, nonce: str) -> bool:
    """Whether (signer, nonce) was recorded (a read: `remember_nonce` is the check that counts)."""
    return conn.execute(_NONCE_SEEN, {"s": signer, "n": nonce}).first() is not None


def prune_nonces(conn: Connection, before: float) -> int:
    return conn.execute(delete(nonces).where(nonces.c.seen_at < before)).rowcount
