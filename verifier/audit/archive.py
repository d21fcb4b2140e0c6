"""Reading a coordinator's archive: Parquet rows, run description, kept checkpoints.

The archive is a folder written by the coordinator (`coordinator.archive`,
`coordinator.checkpoints`); its layout, schemas and run description are the protocol's
(`protocol.archive`), and docs/archive.md documents every column:

    submissions/v000012/part-*.parquet    one row per submission (signed envelopes included)
    verdicts/v000012/part-*.parquet       one row per verdict (the verifier's signed envelope)
    checkpoints/v000012/                  the weights of version 12 and its signed manifest
    run.json                              run id, keys, task source, tokenizer

`Archive.rollouts(filter)` returns one pyarrow Table: every submission once (the archive is
written at least once, so rows are de-duplicated on submission_id), left-joined with its
verdict, plus derived columns: `status` ('accepted' | 'rejected' | 'undecided': no verdict
archived — still queued, or dropped unjudged when its worker was banned), `mean_reward`,
`n_completions`, `verdict_full_check`. Reading uses pyarrow only (a core dependency);
the files themselves need nothing of swarmrl — pandas or DuckDB read them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from protocol.archive import (
    RUN_FILE,
    SUBMISSIONS,
    VERDICTS,
    RunDescription,
    checkpoint_dir,
    checkpoint_versions,
    parts,
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


def _read(files: list[Path]) -> pa.Table | None:
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except (OSError, pa.ArrowException) as exc:
            raise AuditError(f"cannot read {f}: {exc}") from None
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """Keep the first row of each `key` value (the archive may hold a row twice after a crash)."""
    seen: set = set()
    keep = []
    for i, k in enumerate(table.column(key).to_pylist()):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


class Archive:
    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()
        if not (self.root / SUBMISSIONS).is_dir():
            hint = " (point --archive at <coordinator data_dir>/archive)" if self.root.exists() else ""
            raise AuditError(f"{self.root} is not a swarmrl archive: no {SUBMISSIONS}/ folder{hint}")
        self._run: RunDescription | None = None
        self._all: pa.Table | None = None  # every row, read once per Archive (an archive is append-only)

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
    def rollouts(self, min_version: int | None = None, max_version: int | None = None) -> pa.Table:
        """Every archived submission (once) with its verdict, in versions [min, max] when given."""
        if min_version is None and max_version is None:
            if self._all is None:
                self._all = self._read_rollouts(None, None)
            return self._all
        return self._read_rollouts(min_version, max_version)

    def _read_rollouts(self, min_version: int | None, max_version: int | None) -> pa.Table:
        subs = _read(parts(self.root, SUBMISSIONS, min_version, max_version))
        if subs is None:
            return _empty()
        subs = first_per_key(subs, "submission_id")
        verdicts = _read(parts(self.root, VERDICTS, min_version, max_version))
        if verdicts is not None and verdicts.num_rows:
            # A left join by hand: Arrow's hash join cannot carry list columns (rewards).
            verdicts = first_per_key(verdicts, "submission_id")
            where = {sid: i for i, sid in enumerate(verdicts.column("submission_id").to_pylist())}
            idx = pa.array([where.get(sid) for sid in subs.column("submission_id").to_pylist()], pa.int64())
            joined = subs
            for name in (*VERDICT_COLUMNS, "full_check"):
                if name in verdicts.column_names:
                    joined = joined.append_column("verdict_full_check" if name == "full_check" else name,
                                                  verdicts.column(name).take(idx))
        else:
            joined = subs
            for name, typ in (("status", pa.string()), ("reason", pa.string()), ("decided_at", pa.float64()),
                              ("verdict_envelope", pa.string()), ("verdict_full_check", pa.bool_())):
                joined = joined.append_column(name, pa.nulls(subs.num_rows, typ))
        joined = joined.set_column(joined.schema.get_field_index("status"), "status",
                                   pc.fill_null(joined.column("status"), UNDECIDED))
        rewards = joined.column("rewards").to_pylist()
        joined = joined.append_column("mean_reward", pa.array(
            [sum(r) / len(r) if r else None for r in rewards], pa.float64()))
        joined = joined.append_column("n_completions", pa.array([len(r or []) for r in rewards], pa.int64()))
        return joined.sort_by([("received_at", "ascending"), ("submission_id", "ascending")])

    def rollout(self, submission_id: str) -> dict[str, Any]:
        """One archived submission with its verdict, as a dict (AuditError if unknown)."""
        t = self.rollouts()
        hit = t.filter(pc.equal(t.column("submission_id"), submission_id))
        if hit.num_rows == 0:
            near = [s for s in t.column("submission_id").to_pylist() if s.startswith(submission_id)]
            if len(near) == 1:
                hit = t.filter(pc.equal(t.column("submission_id"), near[0]))
            else:
                more = f" ({len(near)} ids start with it)" if near else ""
                raise AuditError(f"no submission {submission_id} in {self.root}{more}; "
                                 "`swarmrl audit list` shows what is archived")
        return hit.slice(0, 1).to_pylist()[0]


def _empty() -> pa.Table:
    return pa.table({"submission_id": pa.array([], pa.string()), "worker_id": pa.array([], pa.string()),
                     "policy_version": pa.array([], pa.int64()), "received_at": pa.array([], pa.float64()),
                     "status": pa.array([], pa.string()), "mean_reward": pa.array([], pa.float64()),
                     "rewards": pa.array([], pa.list_(pa.float64())), "n_tokens": pa.array([], pa.int64()),
                     "reason": pa.array([], pa.string()), "decided_at": pa.array([], pa.float64()),
                     "n_completions": pa.array([], pa.int64())})
