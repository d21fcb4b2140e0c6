"""Queries on `policy_versions`: the versions the trainer announced, with signed manifests."""

from __future__ import annotations

from sqlalchemy import Connection, Row, bindparam, func, select

from coordinator.store.schema import policy_versions

_CURRENT = select(func.max(policy_versions.c.version))
_GET = select(policy_versions).where(policy_versions.c.version == bindparam("v"))
_ARRIVALS = select(policy_versions.c.received_at).order_by(policy_versions.c.version.desc()).limit(bindparam("n"))


def current(conn: Connection) -> int | None:
    return conn.execute(_CURRENT).scalar_one_or_none()


def get(conn: Connection, version: int) -> Row | None:
    return conn.execute(_GET, {"v": version}).first()


def insert(conn: Connection, version: int, step: int, created_at: float, received_at: float, manifest: str) -> None:
    conn.execute(policy_versions.insert().values(version=version, step=step, created_at=created_at,
                                                 received_at=received_at, manifest=manifest))


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(policy_versions)).scalar_one())


def recent_arrivals(conn: Connection, limit: int = 8) -> list[float]:
    """When the newest `limit` versions were announced here, oldest first."""
    return sorted(float(t) for t in conn.execute(_ARRIVALS, {"n": limit}).scalars())
