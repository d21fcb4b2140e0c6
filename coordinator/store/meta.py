"""Key/value facts of the run (`meta` table): task counter, proof-of-work challenge, counters."""

from __future__ import annotations

from sqlalchemy import BigInteger, Connection, Text, cast, select

from coordinator.store.schema import meta
from coordinator.store.sql import dialect_insert, insert_ignore, upsert

NEXT_TASK = "next_task_index"
POW_CHALLENGE = "pow_challenge"
DROPPED_STALE = "dropped_stale"
TRAINER_FLOOR = "trainer_floor"  # the min_policy_version of the trainer's newest batch request
TRAINER_STEP = "trainer_step"    # the most groups one batch request of the trainer asked for (its step)
TRAINER_TAKEN = "trainer_taken"  # groups the trainer acknowledged, in all (store.submissions.ack adds to it)
ADDRESS_KEYS_FOR = "address_keys_for"  # the exempt addresses the stored worker addresses were keyed with


def get(conn: Connection, key: str, default: str | None = None) -> str | None:
    v = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()
    return default if v is None else v


def get_many(conn: Connection, *keys: str) -> dict[str, str]:
    """The stored values of `keys` in one statement (a missing key is absent)."""
    return {k: v for k, v in conn.execute(select(meta.c.key, meta.c.value).where(meta.c.key.in_(keys)))}


def put(conn: Connection, key: str, value: str) -> None:
    upsert(conn, meta, "key", {"key": key, "value": value})


def get_int(conn: Connection, key: str, default: int = 0) -> int:
    v = get(conn, key)
    return default if v is None else int(v)


def add_int(conn: Connection, key: str, delta: int) -> int:
    """Atomically add `delta` to an integer fact (created at 0); return the new value. One
    statement (an upsert), so one round trip on PostgreSQL."""
    stmt = dialect_insert(conn, meta).values(key=key, value=str(int(delta)))
    stmt = stmt.on_conflict_do_update(index_elements=["key"],
                                      set_={"value": cast(cast(meta.c.value, BigInteger) + delta, Text)})
    return int(conn.execute(stmt.returning(meta.c.value)).scalar_one())


def init_once(conn: Connection, key: str, value: str) -> str:
    """Set `key` to `value` unless it is already set; return the stored value."""
    insert_ignore(conn, meta, {"key": key, "value": value})
    return get(conn, key) or value
