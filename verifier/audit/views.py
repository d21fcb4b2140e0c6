"""What `swarmrl audit show`, `summary` and `export` compute from an archive (no printing).

- `show`: one rollout as `protocol.rollout_view` describes it (the dashboard's audit view,
  from the archive instead of the coordinator's database), plus the archive's facts about it;
- `summary`: per worker — submissions, accepted, rejected, undecided, tokens, mean reward,
  versions, and the reasons of its rejections counted by failed check;
- `export`: the selected rows to Parquet or JSONL, with decoded token columns added
  (prompt_token_ids, completion_token_ids, finish_reasons) so that a reader needs no swarmrl
  to get at the tokens. Files are written atomically (temporary name, then rename).

`summary` and `export` take a Table or the batches of `filters.select` (streamed: memory stays
bounded by one batch, whatever the archive's size).

Collaborators: `verifier.audit.archive` (the rows), `verifier.audit.filters` (the selection),
`swarmrl.cli` (the commands) and `verifier.audit.render` (the text output).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from protocol.durable import atomic_path
from protocol.rollout_view import rollout_view
from verifier.audit.archive import UNDECIDED, Archive, empty_rollouts
from verifier.audit.errors import AuditError


def load_tokenizer_for(archive: Archive, version: int, override: str | None = None) -> tuple[Any, str]:
    """(tokenizer, where it came from): --model, else the archived checkpoint, else run.json's model."""
    from protocol.lm import load_tokenizer

    candidates = [override] if override else []
    ckpt = archive.checkpoint_dir(version)
    if ckpt is not None:
        candidates.append(str(ckpt))
    try:
        candidates.append(archive.run.model)
    except AuditError:
        pass
    errors = []
    for ref in [c for c in candidates if c]:
        try:
            return load_tokenizer(ref), ref
        except (OSError, ValueError) as exc:
            errors.append(f"{ref}: {exc}")
    raise AuditError("no tokenizer to decode with (" + "; ".join(errors or ["no checkpoint, no run.json"]) +
                     "); pass --model PATH")


def show(archive: Archive, submission_id: str, tokenizer: Any | None = None) -> dict[str, Any]:
    row = archive.rollout(submission_id)
    decode = (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)) if tokenizer is not None else None
    view = rollout_view(row["submission_envelope"], row["lease_envelope"], row.get("verdict_envelope") or None,
                        rewards=row["rewards"], advantages=row["advantages"], decode=decode)
    view.update({"submission_id": row["submission_id"], "status": row["status"], "reason": row.get("reason") or "",
                 "received_at": row["received_at"], "decided_at": row.get("decided_at"),
                 "task_index": row["task_index"], "full_check": row["full_check"], "n_tokens": row["n_tokens"],
                 "checkpoint_archived": archive.checkpoint_dir(int(row["policy_version"])) is not None})
    return view


def failed_checks(verdict_envelope: str | None) -> list[str]:
    if not verdict_envelope:
        return []
    try:
        checks = json.loads(verdict_envelope).get("body", {}).get("checks") or []
    except ValueError:
        return ["(unreadable verdict)"]
    return [c.get("name", "?") for c in checks if isinstance(c, dict) and not c.get("passed")]


SUMMARY_COLUMNS = ["worker_id", "status", "n_tokens", "mean_reward", "policy_version", "received_at",
                   "verdict_envelope", "reason"]


def _tables(rows: pa.Table | Iterable[pa.Table]) -> Iterable[pa.Table]:
    return [rows] if isinstance(rows, pa.Table) else rows


def summary(rows: pa.Table | Iterable[pa.Table]) -> list[dict[str, Any]]:
    by: dict[str, dict[str, Any]] = {}
    for table in _tables(rows):
        for r in table.select(SUMMARY_COLUMNS).to_pylist():
            _count(by, r)
    out = []
    for w in by.values():
        n, total = w.pop("_rewards")
        w["mean_reward"] = total / n if n else None
        w["reasons"] = dict(w["reasons"].most_common())
        w["first_rejection"] = w.pop("_first")[1]
        out.append(w)
    return sorted(out, key=lambda w: (-w["submissions"], w["worker_id"]))


def _count(by: dict[str, dict[str, Any]], r: dict[str, Any]) -> None:
    w = by.setdefault(r["worker_id"], {
        "worker_id": r["worker_id"], "submissions": 0, "accepted": 0, "rejected": 0, UNDECIDED: 0, "tokens": 0,
        "accepted_tokens": 0, "_rewards": (0, 0.0), "min_version": None, "max_version": None, "first_at": None,
        "last_at": None, "reasons": Counter(), "_first": (None, "")})
    w["submissions"] += 1
    w[r["status"]] = w.get(r["status"], 0) + 1
    w["tokens"] += int(r["n_tokens"] or 0)
    if r["status"] == "accepted":
        w["accepted_tokens"] += int(r["n_tokens"] or 0)
    if r["mean_reward"] is not None:
        n, total = w["_rewards"]
        w["_rewards"] = (n + 1, total + r["mean_reward"])
    v, t = r["policy_version"], r["received_at"]
    w["min_version"] = v if w["min_version"] is None else min(w["min_version"], v)
    w["max_version"] = v if w["max_version"] is None else max(w["max_version"], v)
    w["first_at"] = t if w["first_at"] is None else min(w["first_at"], t)
    w["last_at"] = t if w["last_at"] is None else max(w["last_at"], t)
    if r["status"] == "rejected":
        w["reasons"].update(failed_checks(r["verdict_envelope"]) or ["(no failed check named)"])
        first_at, _ = w["_first"]
        if first_at is None or (t is not None and t < first_at):  # the earliest rejection, in any order
            w["_first"] = (t, r["reason"] or "")


def with_token_columns(table: pa.Table) -> pa.Table:
    """Add prompt_token_ids, completion_token_ids and finish_reasons decoded from the envelopes."""
    prompts, comps, reasons = [], [], []
    for sub, lease in zip(table.column("submission_envelope").to_pylist(), table.column("lease_envelope").to_pylist(),
                          strict=True):
        sb = json.loads(sub).get("body", {}) if sub else {}
        lb = json.loads(lease).get("body", {}) if lease else {}
        cs = sb.get("completions") or []
        prompts.append(lb.get("prompt_token_ids"))
        comps.append([c.get("token_ids") for c in cs])
        reasons.append([c.get("finish_reason") for c in cs])
    return (table.append_column("prompt_token_ids", pa.array(prompts, pa.list_(pa.int64())))
            .append_column("completion_token_ids", pa.array(comps, pa.list_(pa.list_(pa.int64()))))
            .append_column("finish_reasons", pa.array(reasons, pa.list_(pa.string()))))


def export(rows: pa.Table | Iterable[pa.Table], path: Path, fmt: str | None = None) -> tuple[int, str]:
    """Write `rows` (a Table, or batches of one schema, streamed) plus token columns to `path`
    as 'parquet' or 'jsonl' (from the suffix when `fmt` is None); returns (rows, format)."""
    path = Path(path)
    fmt = fmt or {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix)
    if fmt not in ("parquet", "jsonl"):
        raise AuditError(f"cannot tell the format of {path.name}: name it *.parquet or *.jsonl, or pass --format")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    try:
        with atomic_path(path, durable=False) as tmp:
            if fmt == "parquet":
                writer = None
                try:
                    for table in _tables(rows):
                        if not table.num_rows:
                            continue
                        out = with_token_columns(table)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, out.schema, compression="zstd")
                        writer.write_table(out.cast(writer.schema))
                        n += out.num_rows
                    if writer is None:  # nothing selected: an empty file with the archive's columns
                        pq.write_table(rows if isinstance(rows, pa.Table) else empty_rollouts(), tmp, compression="zstd")
                finally:
                    if writer is not None:
                        writer.close()
            else:
                with open(tmp, "w") as fh:
                    for table in _tables(rows):
                        if table.num_rows:
                            for row in with_token_columns(table).to_pylist():
                                fh.write(json.dumps(row, separators=(",", ":")) + "\n")
                                n += 1
    except OSError as exc:
        raise AuditError(f"cannot write {path}: {exc}") from None
    return n, fmt
