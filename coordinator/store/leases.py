"""Queries on `leases` and `task_returns`: issuing, closing and re-leasing work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, delete, func, or_, select, update

from coordinator.rules.leasing import ReturnedTask
from coordinator.store.schema import leases, task_returns
from coordinator.store.sql import insert_ignore

# hot statements, built once (see workers.py)
_GET = select(leases).where(leases.c.lease_id == bindparam("l"))
_GET_FOR_UPDATE = _GET.with_for_update()
_ACTIVE_TASKS = select(leases.c.task_id).where(and_(leases.c.worker_id == bindparam("w"), leases.c.status == "active"))
_INSERT = leases.insert()
_RECENT_SUBMITTED = (select(leases.c.issued_at, leases.c.closed_at)
                     .where(and_(leases.c.worker_id == bindparam("w"), leases.c.status == "submitted"))
                     .order_by(leases.c.closed_at.desc()).limit(bindparam("n")))
_CLOSE = (update(leases).where(and_(leases.c.lease_id == bindparam("l"), leases.c.status == "active"))
          .values(status=bindparam("to"), closed_at=bindparam("now")))
# a fresh claim refuses every other copy, its own nonce's too: a copy of the same envelope sent
# to several replicas at once was scored by each of them (tests/integration/test_coordinator_postgres.py)
_CLAIM = (update(leases).where(and_(leases.c.lease_id == bindparam("l"), leases.c.status == "active",
                                    or_(leases.c.intake_nonce.is_(None), leases.c.intake_at < bindparam("stale"))))
          .values(intake_nonce=bindparam("n"), intake_at=bindparam("now")))
_UNCLAIM = (update(leases).where(and_(leases.c.lease_id == bindparam("l"), leases.c.intake_nonce == bindparam("n")))
            .values(intake_nonce=None, intake_at=None))
_RETURNED = (select(task_returns.c.task_index, task_returns.c.previous_worker)
             .order_by(task_returns.c.returned_at, task_returns.c.task_index).limit(bindparam("n")))
_TAKE_RETURNED = (delete(task_returns).where(task_returns.c.task_index.in_(bindparam("ids", expanding=True)))
                  .returning(task_returns.c.task_index))


def get(conn: Connection, lease_id: str, *, for_update: bool = False) -> Row | None:
    """`for_update`: lock the row until the transaction ends (PostgreSQL; a SQLite write
    transaction already holds the one write lock), for a check of its state that a write of
    this transaction depends on."""
    if for_update and conn.dialect.name == "postgresql":
        return conn.execute(_GET_FOR_UPDATE, {"l": lease_id}).first()
    return conn.execute(_GET, {"l": lease_id}).first()


def claim_intake(conn: Connection, lease_id: str, nonce: str, now: float, stale_before: float) -> bool:
    """Mark the active lease's submission under `nonce` as being taken in; False if a copy (under
    any nonce, this one too) claimed it at or after `stale_before` (its replica is scoring it). One
    UPDATE: PostgreSQL's row lock makes a second claimant wait, then find the claim taken."""
    return conn.execute(_CLAIM, {"l": lease_id, "n": nonce, "now": now, "stale": stale_before}).rowcount == 1


def unclaim_intake(conn: Connection, lease_id: str, nonce: str) -> None:
    """Give back the claim `claim_intake` took under `nonce` (its intake failed)."""
    conn.execute(_UNCLAIM, {"l": lease_id, "n": nonce})


def get_many(conn: Connection, lease_ids: list[str]) -> list[Row]:
    return list(conn.execute(select(leases).where(leases.c.lease_id.in_(lease_ids))))


def active_task_ids(conn: Connection, worker_id: str) -> list[str]:
    """The task ids of `worker_id`'s active leases, one per lease (index ix_leases_worker_status):
    the lease path takes its count and its set from this one query."""
    return list(conn.execute(_ACTIVE_TASKS, {"w": worker_id}).scalars())


def insert_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_INSERT, rows)


def close(conn: Connection, lease_id: str, to_status: str, now: float) -> bool:
    """active -> to_status; False if the lease was not active (someone else closed it)."""
    return conn.execute(_CLOSE, {"l": lease_id, "to": to_status, "now": now}).rowcount == 1


def close_many(conn: Connection, lease_ids: list[str], to_status: str, now: float) -> list[Row]:
    """Close the active ones among `lease_ids`; return (lease_id, task_index, worker_id, expires_at)
    of those this call closed. One UPDATE ... RETURNING: a select first, then the update, returned leases
    that another replica's transaction closed meanwhile (its sweep, or a release), and they
    were counted as dropped and their tasks returned twice."""
    if not lease_ids:
        return []
    return list(conn.execute(update(leases).where(and_(leases.c.lease_id.in_(lease_ids), leases.c.status == "active"))
                             .values(status=to_status, closed_at=now)
                             .returning(leases.c.lease_id, leases.c.task_index, leases.c.worker_id,
                                        leases.c.expires_at)))


def due(conn: Connection, now: float, limit: int = 10_000, intake_since: float | None = None) -> list[str]:
    """Active leases whose expiry has passed, but for those with an intake claim taken after
    `intake_since` (a submission that arrived in time being taken in: `service.work._claim`)."""
    where = [leases.c.status == "active", leases.c.expires_at < now]
    if intake_since is not None:
        where.append(or_(leases.c.intake_at.is_(None), leases.c.intake_at < intake_since))
    q = select(leases.c.lease_id).where(and_(*where)).limit(limit)
    return list(conn.execute(q).scalars())


def active_of_workers(conn: Connection, worker_ids: list[str]) -> list[str]:
    if not worker_ids:
        return []
    q = select(leases.c.lease_id).where(and_(leases.c.worker_id.in_(worker_ids), leases.c.status == "active"))
    return list(conn.execute(q).scalars())


def count_by_status(conn: Connection) -> dict[str, int]:
    q = select(leases.c.status, func.count()).group_by(leases.c.status)
    return {s: n for s, n in conn.execute(q)}


# -- returned tasks -------------------------------------------------------------------------
def return_tasks(conn: Connection, rows: list[Row], now: float) -> int:
    return insert_ignore(conn, task_returns, [
        {"task_index": r.task_index, "previous_worker": r.worker_id, "returned_at": now} for r in rows])


def put_back(conn: Connection, task_indices: list[int], now: float) -> int:
    """Tasks drawn for a lease but not leased: to the returned pool, for any worker."""
    return insert_ignore(conn, task_returns, [
        {"task_index": i, "previous_worker": "", "returned_at": now} for i in task_indices]) if task_indices else 0


def returned(conn: Connection, limit: int) -> list[ReturnedTask]:
    return [ReturnedTask(int(i), w) for i, w in conn.execute(_RETURNED, {"n": limit})]


def take_returned(conn: Connection, indices: list[int]) -> list[int]:
    """Take `indices` out of the returned pool; returns those this call took, in the order given.
    Only those may be leased: another replica's lease request may have read the same returned
    tasks and taken them first (its delete then wins, and this one takes nothing)."""
    if not indices:
        return []
    taken = set(conn.execute(_TAKE_RETURNED, {"ids": indices}).scalars())
    return [i for i in indices if i in taken]


def count_returned(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(task_returns)).scalar_one())


def recent_submitted(conn: Connection, worker_id: str, limit: int) -> list[tuple[float, float]]:
    """(issued_at, closed_at) of `worker_id`'s newest submitted leases (index ix_leases_worker_status_closed)."""
    return [(float(i), float(s)) for i, s in conn.execute(_RECENT_SUBMITTED, {"w": worker_id, "n": limit})]
