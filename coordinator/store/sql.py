"""Small portable SQL helpers: insert-or-ignore and upsert on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table


def dialect_insert(conn: Connection, table: Table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"unsupported database {conn.dialect.name}")
    return insert(table)


_INSERT_IGNORE: dict[tuple[str, str], Any] = {}


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any] | list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING; returns the number of rows inserted. Counted with
    RETURNING, because drivers disagree on `rowcount` here (psycopg 3 reports -1). The
    statement is built once per (dialect, table) and reused (it only takes parameters)."""
    if isinstance(values, list) and not values:
        return 0
    key = (conn.dialect.name, table.name)
    stmt = _INSERT_IGNORE.get(key)
    if stmt is None:
        pk = next(iter(table.primary_key.columns))
        stmt = _INSERT_IGNORE[key] = dialect_insert(conn, table).on_conflict_do_nothing().returning(pk)
    return len(conn.execute(stmt, values).all())


def upsert(conn: Connection, table: Table, key: str, values: dict[str, Any]) -> None:
    stmt = dialect_insert(conn, table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=[key],
                                      set_={k: v for k, v in values.items() if k != key})
    conn.execute(stmt)
