"""Selecting archived rollouts: by worker, policy version, verdict, reward and time.

`Filter` is plain data (the CLI builds it from flags); `apply(table, filter)` keeps the
matching rows of an `Archive.rollouts()` table with pyarrow compute, and `select(archive,
filter)` streams them from the archive (`Archive.stream`) in bounded memory: worker prefixes
and `limit` (the newest N) need the whole selection, so they are settled by a first pass over
three small columns, keeping at most the set of worker ids and N arrival keys. The parsers turn the
command line's spellings into values: versions `7`, `3:9`, `:9`, `3:`; times as unix seconds,
ISO 8601 (`2026-11-22T04:30:00`, UTC unless it carries an offset) or an age (`90s`, `15m`,
`2h`, `1d` ago, relative to `now`, which the caller passes).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from verifier.audit.errors import AuditError

if TYPE_CHECKING:
    from verifier.audit.archive import Archive

VERDICTS = ("accepted", "rejected", "undecided")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Filter:
    workers: tuple[str, ...] = ()          # worker ids, or prefixes of at least 6 characters
    min_version: int | None = None
    max_version: int | None = None
    verdicts: tuple[str, ...] = ()         # among VERDICTS
    min_reward: float | None = None        # mean reward of the group
    max_reward: float | None = None
    since: float | None = None             # received_at, unix seconds
    until: float | None = None
    limit: int | None = None               # the newest `limit` rows that match


def parse_versions(text: str | None) -> tuple[int | None, int | None]:
    if text is None or text == "":
        return None, None
    try:
        if ":" not in text:
            v = int(text)
            return v, v
        lo, hi = text.split(":", 1)
        return (int(lo) if lo else None), (int(hi) if hi else None)
    except ValueError:
        raise AuditError(f"--version {text!r}: use N, A:B, :B or A: (policy version numbers)") from None


def parse_time(text: str | None, now: float) -> float | None:
    if text is None or text == "":
        return None
    m = _AGE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(f"time {text!r}: use unix seconds, ISO 8601 (2026-11-22T04:30:00) or an age "
                         "(90s, 15m, 2h, 1d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def resolve_workers(table: pa.Table | Iterable[str], wanted: tuple[str, ...]) -> list[str]:
    """Full worker ids for exact ids or unambiguous prefixes (>= 6 characters), among the
    workers of `table` (or the ids given)."""
    if isinstance(table, pa.Table):
        known = sorted(set(table.column("worker_id").to_pylist())) if table.num_rows else []
    else:
        known = sorted(set(table))
    out = []
    for w in wanted:
        if w in known:
            out.append(w)
            continue
        hits = [k for k in known if k.startswith(w)] if len(w) >= 6 else []
        if len(hits) == 1:
            out.append(hits[0])
        elif len(hits) > 1:
            raise AuditError(f"worker prefix {w!r} matches {len(hits)} workers; give more characters")
        else:
            out.append(w)  # unknown: matches nothing, which is the honest answer
    return out


def apply(table: pa.Table, f: Filter) -> pa.Table:
    bad = [v for v in f.verdicts if v not in VERDICTS]
    if bad:
        raise AuditError(f"--verdict {bad[0]!r}: use one of {', '.join(VERDICTS)}")
    mask = pa.array([True] * table.num_rows, pa.bool_())
    col = table.column

    def both(cond) -> None:
        nonlocal mask
        mask = pc.and_kleene(mask, pc.fill_null(cond, False))

    if f.workers:
        both(pc.is_in(col("worker_id"), value_set=pa.array(resolve_workers(table, f.workers), pa.string())))
    if f.min_version is not None:
        both(pc.greater_equal(col("policy_version"), f.min_version))
    if f.max_version is not None:
        both(pc.less_equal(col("policy_version"), f.max_version))
    if f.verdicts:
        both(pc.is_in(col("status"), value_set=pa.array(list(f.verdicts), pa.string())))
    if f.min_reward is not None:
        both(pc.greater_equal(col("mean_reward"), f.min_reward))
    if f.max_reward is not None:
        both(pc.less_equal(col("mean_reward"), f.max_reward))
    if f.since is not None:
        both(pc.greater_equal(col("received_at"), f.since))
    if f.until is not None:
        both(pc.less_equal(col("received_at"), f.until))
    out = table.filter(mask)
    if f.limit is not None and out.num_rows > f.limit:
        out = out.slice(out.num_rows - f.limit)
    return out


FILTER_COLUMNS = ("submission_id", "worker_id", "policy_version", "status", "mean_reward", "received_at")


def select(archive: Archive, f: Filter, columns: Iterable[str] | None = None) -> Iterator[pa.Table]:
    """The rows of `archive` that `f` keeps, streamed (`Archive.stream`'s order: version by
    version), with `columns` (None: all)."""
    bad = [v for v in f.verdicts if v not in VERDICTS]
    if bad:
        raise AuditError(f"--verdict {bad[0]!r}: use one of {', '.join(VERDICTS)}")
    lo, hi = f.min_version, f.max_version
    if f.workers:
        known: set[str] = set()
        for t in archive.stream(lo, hi, ["worker_id"]):
            known.update(t.column("worker_id").to_pylist())
        f = replace(f, workers=tuple(resolve_workers(known, f.workers)))
    each = replace(f, limit=None)
    cutoff = None
    if f.limit is not None:
        if f.limit <= 0:
            return
        newest: list[tuple[float, str]] = []  # a min-heap of the newest `limit` (received_at, id)
        for t in archive.stream(lo, hi, FILTER_COLUMNS):
            t = apply(t, each)
            for key in zip(t.column("received_at").to_pylist(), t.column("submission_id").to_pylist(), strict=True):
                if len(newest) < f.limit:
                    heapq.heappush(newest, key)
                elif key > newest[0]:
                    heapq.heapreplace(newest, key)
        if not newest:
            return
        cutoff = newest[0]
    wanted = None if columns is None else list(dict.fromkeys(columns))
    read = None if wanted is None else list(dict.fromkeys([*wanted, *FILTER_COLUMNS]))
    for t in archive.stream(lo, hi, read):
        t = apply(t, each)
        if cutoff is not None and t.num_rows:
            at, sid = t.column("received_at"), t.column("submission_id")
            later = pc.or_(pc.greater(at, cutoff[0]),
                           pc.and_(pc.equal(at, cutoff[0]), pc.greater_equal(sid, cutoff[1])))
            t = t.filter(pc.fill_null(later, False))
        if t.num_rows:
            yield t if wanted is None else t.select(wanted)
