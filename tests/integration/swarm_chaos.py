"""Helpers of the whole-swarm chaos test: the kill schedule, and reading what each role persisted.

Everything here reads files a role wrote (the coordinator's SQLite database and Parquet
archive, the trainer's checkpoint folders, the origin's manifests, a worker's spool and its
JSON log); nothing here talks to a live process. The invariants themselves are in
tests/integration/test_swarm_chaos.py.
"""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

ROLES = ("coordinator", "verifier", "trainer", "relay", "worker")


@dataclass(frozen=True)
class Kill:
    at_s: float      # seconds after the chaos phase starts
    role: str        # one of ROLES ("worker": `worker_name`)
    pause_s: float   # how long it stays down before it is started again
    worker_name: str = ""

    @property
    def name(self) -> str:
        return self.worker_name or self.role


def kill_schedule(seed: int, kills: int, span_s: float, workers: list[str]) -> list[Kill]:
    """`kills` SIGKILLs at seeded random moments within `span_s`, each role at least once
    when `kills` allows, in a seeded random order."""
    rng = random.Random(seed)
    roles = list(ROLES) + [rng.choice(ROLES) for _ in range(max(0, kills - len(ROLES)))]
    roles = roles[:kills]
    rng.shuffle(roles)
    times = sorted(rng.uniform(5.0, span_s) for _ in roles)
    return [Kill(at_s=round(t, 1), role=r, pause_s=round(rng.uniform(0.5, 6.0), 1),
                 worker_name=rng.choice(workers) if r == "worker" else "")
            for t, r in zip(times, roles)]


# -- the coordinator's database (read-only queries; column names from coordinator.store.schema) --
def db_rows(db: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def archived_ids(archive: Path, table: str) -> set[str]:
    """submission_id of every row of the coordinator's Parquet archive `table` (at least once)."""
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for f in sorted((archive / table).glob("v*/*.parquet")):
        ids.update(pq.read_table(f, columns=["submission_id"]).column("submission_id").to_pylist())
    return ids


# -- the trainer --------------------------------------------------------------------------------
def trained_by_version(trainer_dir: Path) -> dict[int, list[str]]:
    """{version: submission ids its step trained} of every complete version on disk."""
    from trainer.checkpoint import CheckpointStore

    store = CheckpointStore(trainer_dir, keep=1_000_000)
    out = {}
    for v in store.complete_versions():
        out[v] = [sid for sid, _ in store.get(v).state().get("trained", [])]
    return out


def manifest_files(path: Path) -> list[tuple[str, str]]:
    """(path, sha256) of every file a signed manifest (an envelope, JSON) names."""
    body = json.loads(path.read_text())["body"]
    return sorted((f["path"], f["sha256"]) for f in body["files"])


# -- the workers --------------------------------------------------------------------------------
def acknowledged_submissions(log: Path) -> dict[str, str]:
    """{submission id: status} of every send the coordinator answered 2xx ("submitted as"),
    from the worker's JSON log (every life of the process appends to it)."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("msg") or rec.get("message") or ""
        if " submitted as " in msg:
            # "lease L submitted as S (status, N tokens)"
            sid = msg.split(" submitted as ", 1)[1].split(" ", 1)[0]
            out[sid] = msg.rsplit("(", 1)[1].split(",", 1)[0]
    return out


def set_aside_reasons(worker_dir: Path) -> list[str]:
    """The coordinator's reason for each submission a worker set aside (spool/rejected/)."""
    return [json.loads(p.read_text()).get("reason", "") for p in sorted((worker_dir / "spool" / "rejected").glob("*.json"))]
