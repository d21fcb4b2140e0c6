"""The `swarmrl audit` commands, behind the thin typer declarations in `swarmrl.cli`.

Each function takes plain arguments, prints (a rich table, or JSON with `as_json`) and returns
the process exit status: 0 done; 1 for `reverify` when a recorded verdict does not hold (so a
script can gate on it). Problems the user can fix raise `AuditError` (printed as one line by
the CLI, exit status 2).
"""

from __future__ import annotations

import heapq
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console

from verifier.audit import render
from verifier.audit.archive import Archive, empty_rollouts
from verifier.audit.errors import AuditError
from verifier.audit.filters import Filter, parse_time, parse_versions, select


@dataclass
class Selection:
    """The filter flags as typed on the command line."""

    workers: list[str]
    version: str | None = None
    verdicts: list[str] | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = None

    def to_filter(self, now: float) -> Filter:
        lo, hi = parse_versions(self.version)
        return Filter(workers=tuple(self.workers or ()), min_version=lo, max_version=hi,
                      verdicts=tuple(v.lower() for v in self.verdicts or ()), min_reward=self.min_reward,
                      max_reward=self.max_reward, since=parse_time(self.since, now), until=parse_time(self.until, now),
                      limit=self.limit)


def _console() -> Console:
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


LIST_COLUMNS = ["submission_id", "worker_id", "task_id", "policy_version", "status", "reason", "mean_reward",
                "rewards", "n_tokens", "n_completions", "full_check", "received_at", "decided_at"]


def _select(archive: Archive, sel: Selection, columns: list[str] | None = None):
    """The selected rows, streamed (`filters.select`): bounded memory for any archive size."""
    return select(archive, sel.to_filter(time.time()), columns)


def list_cmd(archive_dir: Path, sel: Selection, as_json: bool) -> int:
    archive = Archive(archive_dir)
    f = sel.to_filter(time.time())
    if as_json:  # every selected row, written as it is read
        sys.stdout.write("[")
        first = True
        for t in select(archive, f, LIST_COLUMNS):
            for row in t.to_pylist():
                sys.stdout.write(("\n" if first else ",\n") + json.dumps(row, default=str))
                first = False
        sys.stdout.write("\n]\n" if not first else "]\n")
        return 0
    total = sum(t.num_rows for t in archive.stream(f.min_version, f.max_version, ["submission_id"]))
    matched, newest = 0, []  # a min-heap of the newest rows shown
    for t in select(archive, f, render.LIST_COLUMNS):
        matched += t.num_rows
        for row in t.to_pylist():
            key = (row["received_at"], row["submission_id"])
            if len(newest) < render.MAX_LISTED:
                heapq.heappush(newest, (key, row))
            elif key > newest[0][0]:
                heapq.heapreplace(newest, (key, row))
    shown = [row for _, row in sorted(newest, key=lambda kr: kr[0])]
    table = pa.Table.from_pylist(shown, schema=empty_rollouts().select(render.LIST_COLUMNS).schema)
    render.rollout_list(table, _console(), total, matched=matched)
    return 0


def show_cmd(archive_dir: Path, submission_id: str, model: str | None, as_json: bool) -> int:
    from verifier.audit.views import load_tokenizer_for, show

    archive = Archive(archive_dir)
    row = archive.rollout(submission_id)
    try:
        tokenizer, _ = load_tokenizer_for(archive, int(row["policy_version"]), model)
    except AuditError as exc:
        print(f"swarmrl: not decoding: {exc}", file=sys.stderr)
        tokenizer = None
    view = show(archive, row["submission_id"], tokenizer)
    if as_json:
        _print_json(view)
    else:
        render.rollout(view, _console())
    return 0


def summary_cmd(archive_dir: Path, sel: Selection, as_json: bool) -> int:
    from verifier.audit.views import SUMMARY_COLUMNS, summary

    result = summary(_select(Archive(archive_dir), sel, SUMMARY_COLUMNS))
    if as_json:
        _print_json(result)
    else:
        render.summary(result, _console())
    return 0


def export_cmd(archive_dir: Path, sel: Selection, out: Path, fmt: str | None) -> int:
    from verifier.audit.views import export

    n, fmt = export(_select(Archive(archive_dir), sel), out, fmt)
    print(f"wrote {n} submissions to {out} ({fmt})")
    return 0


def load_thresholds(path: Path | None) -> dict:
    """The limits per dtype: the verifier's defaults, with a verifier config's `[thresholds]`
    (float32) and `[bf16_thresholds]` tables (or a bare float32 table) put in their place."""
    from verifier.thresholds import CALIBRATED, overridden

    limits = dict(CALIBRATED)
    if path is None:
        return limits
    try:
        data = tomllib.loads(Path(path).read_text())
        if "thresholds" in data or "bf16_thresholds" in data:
            for key, dtype in (("thresholds", "float32"), ("bf16_thresholds", "bfloat16")):
                if key in data:
                    limits[dtype] = overridden(dtype, data[key])
        else:
            limits["float32"] = overridden("float32", data)
        return limits
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise AuditError(f"--thresholds {path}: {exc}") from None


def reverify_cmd(archive_dir: Path, ids: list[str], sel: Selection, *, thresholds: Path | None, device: str,
                 model: str | None, replay_history: bool, as_json: bool) -> int:
    from verifier.audit.reverify import Reverifier

    archive = Archive(archive_dir)
    if not ids:
        ids = [sid for t in _select(archive, sel, ["submission_id"]) for sid in t.column("submission_id").to_pylist()]
        if not ids:
            raise AuditError("no archived submission matches the filters; nothing to re-verify")
    tokenizer = None
    if model:
        from protocol.lm import load_tokenizer

        tokenizer = load_tokenizer(model)
    rv = Reverifier(archive, limits=load_thresholds(thresholds), device=device, tokenizer=tokenizer,
                    replay_history=replay_history)
    results = []
    console = _console()
    for i, sid in enumerate(ids):
        r = rv.reverify(sid)
        results.append(r)
        if not as_json:
            if i:
                console.rule()
            render.reverification(r, console)
    broken = [r for r in results if r.holds is False]
    if as_json:
        _print_json([r.as_dict() for r in results])
    elif len(results) > 1:
        console.rule()
        console.print(f"{len(results)} re-verified: {sum(r.holds is True for r in results)} verdicts hold, "
                      f"{len(broken)} do not, {sum(r.holds is None for r in results)} had none")
    return 1 if broken else 0
