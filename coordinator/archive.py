"""The Parquet archive of submissions and verdicts, by policy version, for auditors.

The layout and the schemas are the protocol's (`protocol.archive`, read by `verifier.audit`);
under `<data_dir>/archive/`:

    submissions/v000012/part-<first received_at in ms>-<first submission id>.parquet
    verdicts/v000012/part-<first decided_at in ms>-<first submission id>.parquet

`submissions` columns: submission_id, lease_id, worker_id, task_id (string), task_index,
policy_version, n_tokens (int64), received_at (float64, unix s), full_check (bool), rewards,
advantages (list<float64>: the coordinator's, one per completion), submission_envelope (the
worker's signed Submission envelope, JSON, exactly as received), lease_envelope (the
coordinator-signed Lease envelope, JSON). An auditor re-checks both signatures with
`protocol.envelope.open_envelope(..., max_skew_s=None, run_id=..., audience=...)` (each envelope
names the run and the role it was signed for) and re-runs the verifier on them.

`verdicts` columns: submission_id, worker_id (string), policy_version (int64), status
('accepted' | 'rejected'), reason (string), full_check (bool), decided_at (float64),
verdict_envelope (the verifier's signed Verdict envelope, JSON).

Read them with DuckDB: `SELECT * FROM read_parquet('archive/submissions/*/*.parquet')`, or
pandas: `pd.read_parquet(list_of_files)`.

The database is the source of truth and marks what was archived: a sweep reads unarchived
rows, writes each file atomically (temporary name, fsync, rename, fsync of the folder), then
marks the rows. A
crash between the two writes the same rows again in the next file: delivery is at least
once, and `submission_id` is unique, so readers dedupe on it (`SELECT DISTINCT ON` or
`drop_duplicates`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from coordinator.metrics import Metrics
from coordinator.store import submissions
from coordinator.store.db import Database
from protocol import durable
from protocol.archive import (
    SUBMISSIONS,
    SUBMISSIONS_SCHEMA,
    VERDICTS,
    VERDICTS_SCHEMA,
    part_name,
    table_folder,
)

log = logging.getLogger("swarmrl.coordinator")

class Archiver:
    def __init__(self, db: Database, root: Path, metrics: Metrics | None = None, *, interval_s: float = 5.0,
                 batch_rows: int = 500):
        self.db = db
        self.root = Path(root)
        self.metrics = metrics
        self.interval_s = interval_s
        self.batch_rows = batch_rows

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.flush)
            except (OSError, pa.ArrowException) as exc:
                log.error("archive write failed (will retry): %s", exc)

    def flush(self) -> dict[str, int]:
        """Archive everything not archived yet; returns rows written per table."""
        out = {"submissions": 0, "verdicts": 0}
        while True:
            n = self._flush_submissions()
            out["submissions"] += n
            if n < self.batch_rows:
                break
        while True:
            n = self._flush_verdicts()
            out["verdicts"] += n
            if n < self.batch_rows:
                break
        return out

    def _flush_submissions(self) -> int:
        with self.db.read() as conn:
            rows = submissions.unarchived(conn, self.batch_rows)
        if not rows:
            return 0
        by_version: dict[int, list] = defaultdict(list)
        for r in rows:
            by_version[int(r.policy_version)].append(r)
        for version, group in by_version.items():
            cols = {
                "submission_id": [r.submission_id for r in group], "lease_id": [r.lease_id for r in group],
                "worker_id": [r.worker_id for r in group], "task_id": [r.task_id for r in group],
                "task_index": [int(r.task_index) for r in group], "policy_version": [version] * len(group),
                "n_tokens": [int(r.n_tokens) for r in group], "received_at": [float(r.received_at) for r in group],
                "full_check": [bool(r.full_check) for r in group],
                "rewards": [json.loads(r.rewards) for r in group],
                "advantages": [json.loads(r.advantages) for r in group],
                "submission_envelope": [r.envelope for r in group],
                "lease_envelope": [r.lease_envelope for r in group],
            }
            name = part_name(group[0].received_at, group[0].submission_id)
            self._write(SUBMISSIONS, version, name, pa.table(cols, schema=SUBMISSIONS_SCHEMA))
        with self.db.write() as conn:
            submissions.mark_archived(conn, [r.submission_id for r in rows], "archived")
        self._count("submissions", len(rows))
        return len(rows)

    def _flush_verdicts(self) -> int:
        with self.db.read() as conn:
            rows = submissions.unarchived_verdicts(conn, self.batch_rows)
        if not rows:
            return 0
        by_version: dict[int, list] = defaultdict(list)
        for r in rows:
            by_version[int(r.policy_version)].append(r)
        for version, group in by_version.items():
            cols = {
                "submission_id": [r.submission_id for r in group], "worker_id": [r.worker_id for r in group],
                "policy_version": [version] * len(group), "status": [r.status for r in group],
                "reason": [r.reason for r in group], "full_check": [bool(r.full_check) for r in group],
                "decided_at": [float(r.decided_at) for r in group],
                "verdict_envelope": [r.verdict or "" for r in group],
            }
            name = part_name(group[0].decided_at, group[0].submission_id)
            self._write(VERDICTS, version, name, pa.table(cols, schema=VERDICTS_SCHEMA))
        with self.db.write() as conn:
            submissions.mark_archived(conn, [r.submission_id for r in rows], "verdict_archived")
        self._count("verdicts", len(rows))
        return len(rows)

    def _write(self, table: str, version: int, name: str, data: pa.Table) -> Path:
        """Write one Parquet file durably: its bytes, then the rename (and a folder made for it)
        are fsynced before the caller marks its rows archived, so a power loss cannot leave rows
        marked archived whose file is gone."""
        folder = table_folder(self.root, table, version)
        made = [p for p in (self.root, folder.parent, folder) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        with durable.atomic_path(final) as tmp:
            pq.write_table(data, tmp, compression="zstd")
        for p in reversed(made):  # a new folder's own entry lives in its parent
            durable.fsync_dir(p.parent)
        return final

    def _count(self, table: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.archived.labels(table).inc(n)
