"""How fast `swarmrl audit` reads, filters, summarises, exports and re-verifies an archive.

    python bench/audit.py --archive <data_dir>/archive [--copies 100] [--reverify 20]

Takes a real archive (from `swarmrl demo --workdir DIR` or a test swarm), makes a larger one by
copying its rows `--copies` times under new submission ids (the same envelopes: only reading
and bookkeeping are measured here, not re-verification of copies), then times each audit step
on it, and re-verifies `--reverify` real rollouts of the original archive. Prints a table.
Timings on a shared 2-core machine are noisy: run it twice and read the medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def grow(src: Path, dst: Path, copies: int) -> int:
    """Copy `src`'s Parquet rows `copies` times into `dst` (new ids), with run.json and checkpoints."""
    shutil.copy(src / "run.json", dst / "run.json")
    rows = 0
    for table in ("submissions", "verdicts"):
        for f in sorted(src.glob(f"{table}/*/part-*.parquet")):
            t = pq.read_table(f)
            out = dst / table / f.parent.name
            out.mkdir(parents=True, exist_ok=True)
            parts = []
            for k in range(copies):
                ids = pc.binary_join_element_wise(t.column("submission_id"), pa.scalar(f"-{k}"), "")
                parts.append(t.set_column(0, "submission_id", ids))
            grown = pa.concat_tables(parts)
            pq.write_table(grown, out / f.name, compression="zstd")
            if table == "submissions":
                rows += grown.num_rows
    return rows


def timed(fn, reps: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, required=True)
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--reverify", type=int, default=20)
    args = ap.parse_args()

    from verifier.audit.archive import Archive
    from verifier.audit.filters import Filter, apply
    from verifier.audit.views import export, summary

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "archive"
        big.mkdir()
        n = grow(args.archive, big, args.copies)
        size = sum(p.stat().st_size for p in big.rglob("*.parquet"))
        rows = []
        t, table = timed(lambda: Archive(big).rollouts(), reps=3)
        rows.append(("read + de-duplicate + join verdicts", t, n))
        counts = pc.value_counts(table.column("worker_id")).to_pylist()
        worker = max(counts, key=lambda c: c["counts"])["values"]  # the busiest worker
        t, sel = timed(lambda: apply(table, Filter(workers=(worker[:12],), min_version=1, verdicts=("accepted",))))
        rows.append(("filter (worker prefix, versions, verdict)", t, sel.num_rows))
        t, s = timed(lambda: summary(table))
        rows.append((f"summary per worker ({len(s)} workers)", t, n))
        t, _ = timed(lambda: export(table, Path(tmp) / "all.parquet"), reps=1)
        rows.append(("export Parquet (+ token columns)", t, n))
        t, _ = timed(lambda: export(table, Path(tmp) / "all.jsonl"), reps=1)
        rows.append(("export JSONL (+ token columns)", t, n))

        from verifier.audit.reverify import Reverifier

        small = Archive(args.archive)
        ids = small.rollouts().column("submission_id").to_pylist()[-args.reverify:]
        rv = Reverifier(small)
        t0 = time.perf_counter()
        rv.reverify(ids[0])  # loads the tokenizer and the model, builds the replay keys
        first = time.perf_counter() - t0
        each = []
        holds = 0
        for sid in ids[1:]:
            t0 = time.perf_counter()
            holds += bool(rv.reverify(sid).holds)
            each.append(time.perf_counter() - t0)
        rows.append(("reverify: first rollout (model load)", first, 1))
        if each:
            rows.append((f"reverify: each further rollout ({holds}/{len(each)} hold)", statistics.median(each),
                         len(each)))

    print(f"archive: {n:,} submissions, {size / 1e6:.1f} MB of Parquet ({args.copies} copies of {args.archive})")
    print(f"{'step':<48} {'seconds':>9} {'rows':>9} {'rows/s':>10}")
    for name, secs, count in rows:
        print(f"{name:<48} {secs:>9.3f} {count:>9,} {count / secs if secs else 0:>10,.0f}")


if __name__ == "__main__":
    main()
