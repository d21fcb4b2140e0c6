"""Reading a coordinator's archive: Parquet rows, run description, kept checkpoints.

The archive is a folder written by the coordinator (`coordinator.archive`,
`coordinator.checkpoints`); its layout, schemas and run description are the protocol's
(`protocol.archive`), and docs/archive.md documents every column:

    submissions/v000012/part-*.parquet    one row per submission (signed envelopes included)
    verdicts/v000012/part-*.parquet       one row per verdict (the verifier's signed envelope)
    checkpoints/v000012/                  the weights of version 12 and its signed manifest
    run.json                              run id, keys, task source, tokenizer

`Archive.stream(min_version, max_version, columns)` yields every submission once (the archive
is written at least once, so rows are de-duplicated on submission_id), left-joined with its
verdict, plus derived columns: `status` ('accepted' | 'rejected' | 'undecided': no verdict
archived — still queued, or dropped unjudged when its worker was banned), `mean_reward`,
`n_completions`, `verdict_full_check` — as pyarrow Tables of at most one Parquet part each,
version by version, reading only the columns asked for. Memory is bounded whatever the
archive's size: one part's rows (the coordinator writes at most `Archiver.batch_rows` per
part), plus, for the version being read, its verdicts' join columns and its submission ids (a
row written twice is in the same version's folder, so de-duplication needs no more).
`Archive.rollouts()` gathers the stream into one Table sorted by arrival (for small archives,
tests and scripts); the `swarmrl audit` commands stream. Reading uses pyarrow only (a core
dependency); the files themselves need nothing of swarmrl — pandas or DuckDB read them as
they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from protocol.archive import (
    RUN_FILE,
    SUBMISSIONS,
    SUBMISSIONS_SCHEMA,
    VERDICTS,
    RunDescription,
    checkpoint_dir,
    checkpoint_versions,
    parts,
    version_of,
)
from protocol.errors import MessageError
from protocol.manifest import MANIFEST_NAME
from verifier.audit.errors import AuditError

UNDECIDED = "undecided"  # no verdict archived: still queued, or dropped when its worker was banned
VERDICT_COLUMNS = ("status", "reason", "decided_at", "verdict_envelope")


def load_run(path: Path) -> RunDescription:
    """`run.json`, or an AuditError that says what is wrong."""
    try:
        return RunDescription.load(path)
    except FileNotFoundError:
        raise AuditError(f"{path} is missing: the coordinator writes it when it starts with archive = true "
                         "(it names the keys and task source re-verification needs)") from None
    except MessageError as exc:
        raise AuditError(str(exc)) from None


def _parquet(f: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read {f}: {exc}") from None


def _batches(f: Path, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """The rows of one part, `batch_rows` at a time, only `columns` (those it has)."""
    pf = _parquet(f)
    have = [c for c in columns if c in pf.schema_arrow.names]
    try:
        for rb in pf.iter_batches(batch_size=batch_rows, columns=have):
            yield pa.Table.from_batches([rb])
    except (OSError, pa.ArrowException) as exc:
        raise AuditError(f"cannot read {f}: {exc}") from None


def first_per_key(table: pa.Table, key: str, seen: set | None = None) -> pa.Table:
    """Keep the first row of each `key` value (the archive may hold a row twice after a crash);
    `seen`: the values kept before (updated)."""
    seen = set() if seen is None else seen
    keep = []
    for i, k in enumerate(table.column(key).to_pylist()):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


VERDICT_TYPES = {"status": pa.string(), "reason": pa.string(), "decided_at": pa.float64(),
                 "verdict_envelope": pa.string(), "verdict_full_check": pa.bool_()}
DERIVED = ("mean_reward", "n_completions")
BATCH_ROWS = 1024


class Archive:
    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()
        if not (self.root / SUBMISSIONS).is_dir():
            hint = " (point --archive at <coordinator data_dir>/archive)" if self.root.exists() else ""
            raise AuditError(f"{self.root} is not a swarmrl archive: no {SUBMISSIONS}/ folder{hint}")
        self._run: RunDescription | None = None

    # -- run description and checkpoints ------------------------------------------------------
    @property
    def run(self) -> RunDescription:
        if self._run is None:
            self._run = load_run(self.root / RUN_FILE)
        return self._run

    def checkpoint_dir(self, version: int) -> Path | None:
        """The archived checkpoint of `version`, when it is complete."""
        p = checkpoint_dir(self.root, version)
        return p if (p / MANIFEST_NAME).is_file() else None

    def checkpoint_versions(self) -> list[int]:
        return checkpoint_versions(self.root)

    # -- rows ---------------------------------------------------------------------------------
    def versions(self, min_version: int | None = None, max_version: int | None = None) -> list[int]:
        """The policy versions with archived submissions, in [min, max] when given."""
        out = set()
        for f in parts(self.root, SUBMISSIONS, min_version, max_version):
            v = version_of(f.parent.name)
            if v is not None:
                out.add(v)
        return sorted(out)

    def stream(self, min_version: int | None = None, max_version: int | None = None,
               columns: Iterable[str] | None = None, *, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
        """Every archived submission (once) with its verdict, in versions [min, max] when given,
        as Tables of at most `batch_rows` rows: version by version, each version's parts in
        name (time) order. `columns`: the columns to give (None: all); only those are read."""
        wanted = None if columns is None else list(dict.fromkeys(columns))
        need = set(SUBMISSIONS_SCHEMA.names if wanted is None else wanted) | {"submission_id"}
        if need & set(DERIVED):
            need.add("rewards")
        sub_cols = [c for c in SUBMISSIONS_SCHEMA.names if c in need]
        verdict_cols = [c for c in VERDICT_TYPES if wanted is None or c in need or c == "status"]
        for version in self.versions(min_version, max_version):
            verdicts, where = self._verdicts(version, verdict_cols)
            seen: set = set()
            for f in parts(self.root, SUBMISSIONS, version, version):
                for t in _batches(f, sub_cols, batch_rows):
                    t = first_per_key(t, "submission_id", seen)
                    if t.num_rows:
                        t = _derive(t, verdicts, where, verdict_cols)
                        yield t if wanted is None else t.select([c for c in wanted if c in t.column_names])

    def _verdicts(self, version: int, columns: list[str]) -> tuple[pa.Table | None, dict[str, int]]:
        """One version's verdicts (first per submission), only the join columns asked for."""
        read = ["submission_id", *("full_check" if c == "verdict_full_check" else c for c in columns)]
        tables, seen = [], set()
        for f in parts(self.root, VERDICTS, version, version):
            for t in _batches(f, read, BATCH_ROWS):
                t = first_per_key(t, "submission_id", seen)
                if t.num_rows:
                    tables.append(t)
        if not tables:
            return None, {}
        t = pa.concat_tables(tables, promote_options="default")
        if "full_check" in t.column_names:
            t = t.rename_columns(["verdict_full_check" if c == "full_check" else c for c in t.column_names])
        return t, {sid: i for i, sid in enumerate(t.column("submission_id").to_pylist())}

    def rollouts(self, min_version: int | None = None, max_version: int | None = None,
                 columns: Iterable[str] | None = None) -> pa.Table:
        """Every archived submission (once) with its verdict as one Table, sorted by arrival:
        the whole selection in memory (the commands use `stream`)."""
        tables = list(self.stream(min_version, max_version, columns))
        if not tables:
            empty = empty_rollouts()
            return empty if columns is None else empty.select([c for c in columns if c in empty.column_names])
        t = pa.concat_tables(tables, promote_options="default")
        keys = [(k, "ascending") for k in ("received_at", "submission_id") if k in t.column_names]
        return t.sort_by(keys) if keys else t

    def find(self, submission_id: str) -> tuple[str, int]:
        """(The full id, its policy version) of a submission given by id or unique prefix;
        AuditError if none or several. Reads only the id column, one part at a time."""
        near: dict[str, int] = {}
        for f in parts(self.root, SUBMISSIONS):
            version = version_of(f.parent.name)
            for t in _batches(f, ["submission_id"], BATCH_ROWS * 16):
                for sid in t.column("submission_id").to_pylist():
                    if sid == submission_id:
                        return sid, version
                    if sid.startswith(submission_id) and len(near) < 1000:
                        near[sid] = version
        if len(near) == 1:
            return next(iter(near.items()))
        more = f" ({len(near)}{'+' if len(near) >= 1000 else ''} ids start with it)" if near else ""
        raise AuditError(f"no submission {submission_id} in {self.root}{more}; "
                         "`swarmrl audit list` shows what is archived")

    def rollout(self, submission_id: str) -> dict[str, Any]:
        """One archived submission with its verdict, as a dict (AuditError if unknown)."""
        sid, version = self.find(submission_id)
        for t in self.stream(version, version):
            hit = t.filter(pc.equal(t.column("submission_id"), sid))
            if hit.num_rows:
                return hit.slice(0, 1).to_pylist()[0]
        raise AuditError(f"submission {sid} vanished from {self.root} while it was read")


def _derive(t: pa.Table, verdicts: pa.Table | None, where: dict[str, int], verdict_cols: list[str]) -> pa.Table:
    """A batch of submissions with its verdict columns and the derived ones."""
    if verdicts is not None:
        idx = pa.array([where.get(sid) for sid in t.column("submission_id").to_pylist()], pa.int64())
    for name in verdict_cols:
        if verdicts is not None and name in verdicts.column_names:
            col = verdicts.column(name).take(idx).cast(VERDICT_TYPES[name])
        else:
            col = pa.nulls(t.num_rows, VERDICT_TYPES[name])
        t = t.append_column(name, col)
    t = t.set_column(t.schema.get_field_index("status"), "status", pc.fill_null(t.column("status"), UNDECIDED))
    if "rewards" in t.column_names:
        rewards = t.column("rewards").to_pylist()
        t = t.append_column("mean_reward", pa.array([sum(r) / len(r) if r else None for r in rewards], pa.float64()))
        t = t.append_column("n_completions", pa.array([len(r or []) for r in rewards], pa.int64()))
    return t


def empty_rollouts() -> pa.Table:
    """No rows, every column `stream` gives."""
    fields = [*SUBMISSIONS_SCHEMA, *(pa.field(k, t) for k, t in VERDICT_TYPES.items()),
              pa.field("mean_reward", pa.float64()), pa.field("n_completions", pa.int64())]
    return pa.schema(fields).empty_table()
