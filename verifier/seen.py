"""The replay ledger: what this verifier has seen, keyed by digests, on disk.

Collaborators: `verifier.checks.replay` asks for conflicts and records a job's keys;
`verifier.service` opens one ledger per process at `data_dir/seen.sqlite`.

A key is (kind, digest) with a value; it conflicts with an earlier record when that record
belongs to another submission and either the kind is exclusive (a lease, a signed envelope,
a sample — each may be answered once) or, for other kinds, the values differ (a digest seen
with other content). Judging the same submission again (a claim re-issued after a timeout)
is never a conflict. SQLite keeps the ledger across restarts; one writer (the service loop) at a time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from verifier.errors import SetupError

log = logging.getLogger("swarmrl.verifier")

EXCLUSIVE = frozenset({"lease", "envelope", "sample"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    value TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, digest)
)
"""


class SeenLedger:
    def __init__(self, path: Path | str = ":memory:"):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if Path(path).is_file() and Path(path).stat().st_size == 0:
                # SQLite opens an empty file as a new database without a word; a ledger this
                # service made has its header from the start, so an empty one was truncated (or
                # made by someone else): start it, and say what that costs
                log.warning("the replay ledger %s is an empty file: starting an empty ledger; replays of "
                            "submissions judged before it was emptied are not caught by this verifier", path)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM seen LIMIT 1)").fetchone()
        except sqlite3.Error as exc:
            # damaged on disk (SQLite itself never leaves this after a crash): say so once, touch
            # nothing; an empty ledger would let every earlier submission be replayed here
            raise SetupError(f"the replay ledger {path} cannot be opened ({type(exc).__name__}: {exc}); if it "
                             "is damaged, move it aside by hand to start an empty one (replays of submissions "
                             "judged before are then no longer caught by this verifier)") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def conflicts(self, submission_id: str, keys: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """(kind, digest, other submission id) for each key that clashes with the ledger."""
        out = []
        with self._lock:
            for kind, digest, value in keys:
                row = self._db.execute("SELECT value, submission_id FROM seen WHERE kind=? AND digest=?",
                                       (kind, digest)).fetchone()
                if row is None or row[1] == submission_id:
                    continue
                if kind in EXCLUSIVE or row[0] != value:
                    out.append((kind, digest, row[1]))
        return out

    def remember(self, submission_id: str, keys: list[tuple[str, str, str]], now: float | None = None) -> None:
        """Record keys not yet present (the first submission to show a key keeps it)."""
        at = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO seen (kind, digest, value, submission_id, at) VALUES (?, ?, ?, ?, ?)",
                    [(k, d, v, submission_id, at) for k, d, v in keys])
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])
