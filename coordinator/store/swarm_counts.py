"""The swarm-wide facts the lease-sizing rule reads in every lease request's transaction
(`coordinator.service.work._sizing` -> `coordinator.rules.lease_size`), in one statement.

They were nine small statements (two meta keys, the trainer's acknowledged groups, the
verifier's queue, the active leases, the new identities' leases and queued submissions, whether
an established worker is active), each built, cache-keyed and executed by SQLAlchemy per lease
request: with the per-worker reads beside them, 29% of the coordinator's event-loop time in
bench/hostile.py's clean phase (py-spy; 12% of that in SQLite itself, the rest SQLAlchemy's
per-statement work), and one PostgreSQL round trip each. Here they are scalar subqueries of one
statement built once with bind parameters (SQLAlchemy reuses its compiled form); each keeps the
index its own query used (the new identities' counts as `IN (workers matched)`, which seeks each
such worker's rows on ix_leases_worker_status_closed: SQLite 0.6 ms with 8,000 active leases of
1,000 workers, half of them new, where a join walked every active lease, 2.3 ms). `floor`-dependent counts stay with their owner
(`store.submissions.waiting`), as the floor comes from a value read here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, exists, func, not_, select

from coordinator.store.meta import TRAINER_FLOOR, TRAINER_STEP, TRAINER_TAKEN
from coordinator.store.schema import leases, meta, submissions, workers
from coordinator.store.workers import new_identity

_NEW = new_identity(bindparam("after"))   # the condition on `workers` of a new identity
_NEW_IDS = select(workers.c.worker_id).where(_NEW)


def _count(table, *where) -> object:
    return select(func.count()).select_from(table).where(and_(*where)).scalar_subquery()


def _meta(key: str) -> object:
    return select(meta.c.value).where(meta.c.key == key).scalar_subquery()


_COUNTS = select(
    _meta(TRAINER_FLOOR).label("trainer_floor"),
    _meta(TRAINER_STEP).label("trainer_step"),
    _meta(TRAINER_TAKEN).label("taken"),
    _count(submissions, submissions.c.status == "queued").label("queued"),
    _count(leases, leases.c.status == "active").label("active"),
    _count(leases, leases.c.worker_id.in_(_NEW_IDS), leases.c.status == "active").label("active_of_new"),
    _count(submissions, submissions.c.worker_id.in_(_NEW_IDS), submissions.c.status == "queued").label("queued_of_new"),
    exists(select(workers.c.worker_id).where(and_(workers.c.status == "active", not_(_NEW)))).label("established_active"),
)


@dataclass(frozen=True)
class SwarmCounts:
    trainer_floor: str | None     # meta TRAINER_FLOOR (None: the trainer has not asked yet)
    trainer_step: str | None      # meta TRAINER_STEP
    taken: int                    # groups the trainer acknowledged, in all (meta TRAINER_TAKEN: a count over
                                  # `submissions` grew with the run, 1.5 ms at 45,000 groups; migration 0010)
    queued: int                   # submissions queued for the verifier
    active: int                   # active leases
    active_of_new: int            # active leases of new identities (`workers.new_identity`)
    queued_of_new: int            # queued submissions of new identities
    established_active: bool      # whether an active worker is not a new identity


def read(conn: Connection, established_after: int) -> SwarmCounts:
    """The counts now; `established_after` is `limits.intake_established_after` (the lanes' rule)."""
    row = conn.execute(_COUNTS, {"after": established_after}).one()
    return SwarmCounts(trainer_floor=row.trainer_floor, trainer_step=row.trainer_step, taken=int(row.taken or 0),
                       queued=int(row.queued), active=int(row.active), active_of_new=int(row.active_of_new),
                       queued_of_new=int(row.queued_of_new), established_active=bool(row.established_active))


_NEW_HELD_LEASES = (select(workers.c.address, func.count()).select_from(leases.join(workers, leases.c.worker_id ==
                                                                                   workers.c.worker_id))
                    .where(and_(leases.c.status == "active", _NEW)).group_by(workers.c.address))
_NEW_QUEUED = (select(workers.c.address, func.count()).select_from(submissions.join(workers, submissions.c.worker_id ==
                                                                                    workers.c.worker_id))
               .where(and_(submissions.c.status == "queued", _NEW)).group_by(workers.c.address))


def new_held_by_address(conn: Connection, established_after: int) -> dict[str, int]:
    """Active leases plus queued submissions of new identities, per stored address (what
    `read`'s active_of_new + queued_of_new count, split): the per-group cap of the newcomers'
    share (`coordinator.rules.lease_size.Demand`) sums them by `protocol.guard.address_group`.
    Read only for a new identity's lease request; at most one row per new identity holding
    anything, which the newcomers' share bounds."""
    out: dict[str, int] = {}
    for q in (_NEW_HELD_LEASES, _NEW_QUEUED):
        for address, n in conn.execute(q, {"after": established_after}):
            out[address] = out.get(address, 0) + int(n)
    return out
