"""`coordinator.store.swarm_counts`: the lease-sizing rule's swarm-wide counts, read in one
statement, equal the same counts taken row by row in Python (the rule they replace), on a
database with every status and buffer state, new, established and banned workers.
`check_counts_match` also runs on PostgreSQL (tests/integration/test_coordinator_postgres.py)."""

from __future__ import annotations

import random

from coordinator.store import meta, submissions
from coordinator.store.db import Database
from coordinator.store.schema import leases as leases_t
from coordinator.store.schema import submissions as submissions_t
from coordinator.store.schema import workers as workers_t
from coordinator.store.swarm_counts import new_held_by_address, read

WORKER_STATUS = ("active", "active", "gone", "banned")
LEASE_STATUS = ("active", "active", "submitted", "released", "expired")
SUB_STATUS = ("queued", "queued", "accepted", "rejected", "dropped")
BUFFER = (None, "held", "ready", "handed", "consumed", "stale", "dropped")


ADDRESSES = ["198.51.100.7", "2001:db8:1:2::/64", "127.0.0.1"]


def fill(db: Database, seed: int, n_workers: int = 12) -> tuple[list[dict], list[dict], list[dict]]:
    rng = random.Random(seed)
    ws = [dict(worker_id=f"w{i}", public_key=f"{i:064x}", status=rng.choice(WORKER_STATUS), registered_at=0.0,
               last_seen=0.0, accepted=rng.randrange(0, 6), address=rng.choice(ADDRESSES)) for i in range(n_workers)]
    ls = [dict(lease_id=f"l{i}", worker_id=rng.choice(ws)["worker_id"], task_index=i, task_id=f"t{i}",
               status=rng.choice(LEASE_STATUS), issued_at=float(i), expires_at=float(i + 60), envelope="{}")
          for i in range(80)]
    ss = [dict(submission_id=f"s{i}", lease_id=f"sl{i}", worker_id=rng.choice(ws)["worker_id"], task_id=f"t{i}",
               task_index=i, policy_version=rng.randrange(0, 10), status=rng.choice(SUB_STATUS), full_check=False,
               rewards="[]", advantages="[]", reward_mean=0.0, n_tokens=1, content_hash=f"h{i}",
               received_at=float(i), buffer=rng.choice(BUFFER)) for i in range(120)]
    # consumed groups get there as the trainer's acknowledgements move them (which counts them)
    consumed = [s["submission_id"] for s in ss if s["buffer"] == "consumed"]
    with db.write() as conn:
        conn.execute(workers_t.insert(), ws)
        conn.execute(leases_t.insert(), ls)
        conn.execute(submissions_t.insert(), [dict(s, buffer="handed") if s["buffer"] == "consumed" else s for s in ss])
        submissions.ack(conn, consumed[: len(consumed) // 2], now=1.0)
        submissions.ack(conn, consumed, now=2.0)   # a resent ack counts nothing twice
        if seed % 2:
            meta.put(conn, meta.TRAINER_FLOOR, "3")
            meta.put(conn, meta.TRAINER_STEP, "16")
    return ws, ls, ss


def check_counts_match(db: Database, seed: int) -> None:
    ws, ls, ss = fill(db, seed)
    for after in (1, 3, 6):
        new = {w["worker_id"] for w in ws if w["accepted"] < after or w["status"] == "banned"}
        with db.read() as conn:
            got = read(conn, after)
            waiting = {floor: submissions.waiting(conn, floor) for floor in (0, 4, 9)}
        assert got.trainer_floor == ("3" if seed % 2 else None)
        assert got.trainer_step == ("16" if seed % 2 else None)
        assert got.taken == sum(s["buffer"] == "consumed" for s in ss)
        assert got.queued == sum(s["status"] == "queued" for s in ss)
        assert got.active == sum(x["status"] == "active" for x in ls)
        assert got.active_of_new == sum(x["status"] == "active" and x["worker_id"] in new for x in ls)
        assert got.queued_of_new == sum(s["status"] == "queued" and s["worker_id"] in new for s in ss)
        assert got.established_active == any(w["status"] == "active" and w["worker_id"] not in new for w in ws)
        with db.read() as conn:
            by_address = new_held_by_address(conn, after)
        address = {w["worker_id"]: w["address"] for w in ws}
        want: dict[str, int] = {}
        for wid in [x["worker_id"] for x in ls if x["status"] == "active"] + [
                x["worker_id"] for x in ss if x["status"] == "queued"]:
            if wid in new:
                want[address[wid]] = want.get(address[wid], 0) + 1
        assert by_address == want
        assert sum(by_address.values()) == got.active_of_new + got.queued_of_new
        for floor, n in waiting.items():
            assert n == sum(s["buffer"] in ("ready", "handed") and s["policy_version"] >= floor for s in ss)


def test_one_statement_counts_what_the_rows_say_on_sqlite(tmp_path):
    for seed in range(4):
        db = Database(f"sqlite:///{tmp_path / f'c{seed}.db'}")
        db.migrate()
        try:
            check_counts_match(db, seed)
        finally:
            db.dispose()


def test_a_database_from_before_the_counter_starts_from_its_acknowledged_groups(tmp_path):
    """Migration 0010: the counter of acknowledged groups starts at what the rows say."""
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    db.migrate("0009")
    try:
        ws, _, ss = fill(db, seed=2)
        with db.write() as conn:   # the old code's acknowledgement: rows moved, nothing counted
            conn.execute(submissions_t.update().where(submissions_t.c.buffer == "handed").values(buffer="consumed"))
            conn.execute(meta.meta.delete())
        db.migrate()
        with db.read() as conn:
            assert read(conn, 3).taken == sum(s["buffer"] in ("consumed", "handed") for s in ss) > 0
    finally:
        db.dispose()


def test_no_established_worker_active_and_an_empty_swarm(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'e.db'}")
    db.migrate()
    try:
        with db.read() as conn:
            got = read(conn, 3)
        assert (got.taken, got.queued, got.active, got.active_of_new, got.queued_of_new) == (0, 0, 0, 0, 0)
        assert got.established_active is False and got.trainer_floor is None
    finally:
        db.dispose()
