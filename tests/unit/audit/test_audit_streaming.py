"""`swarmrl audit` reads archives of any size in bounded memory.

`Archive.rollouts()` read every Parquet part of the archive into one Table (envelopes
included: every token id and proof of every submission) before `list`, `summary` or `export`
looked at a row, and `export` then made a Python copy of it all. An archive grows with the run,
so auditing a long run needed more memory than the machine had. Now the rows are streamed: one
part at a time, only the columns a command needs; `--limit` and worker prefixes are settled by
a first pass over three small columns.

The archive here is synthetic (the coordinator's layout and schemas, `protocol.archive`, with
envelopes padded to a known size), so the memory a command needs can be compared with the
archive's size; the commands run in a subprocess whose peak RSS is measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protocol.archive import (
    SUBMISSIONS,
    SUBMISSIONS_SCHEMA,
    VERDICTS,
    VERDICTS_SCHEMA,
    part_name,
    table_folder,
)
from verifier.audit.archive import Archive
from verifier.audit.errors import AuditError
from verifier.audit.filters import Filter, select
from verifier.audit.views import export, summary

WORKERS = ["12D3KooWhonest" + "a" * 38, "12D3KooWhonest" + "b" * 38, "12D3KooWcheat" + "c" * 39]


def write_archive(root: Path, *, versions: int, parts: int, rows: int, pad: int) -> dict:
    """An archive of versions x parts x rows submissions, each envelope padded with `pad` random
    hex characters; every third submission rejected, every fifth undecided, and the first part of
    version 0 written twice (at-least-once delivery). Returns what a reader should find."""
    truth = {"rows": 0, "rejected": 0, "undecided": 0, "raw_bytes": 0, "received": {}}
    n = 0
    for v in range(versions):
        for p in range(parts):
            subs, verdicts = [], []
            for r in range(rows):
                sid = f"s-{v:02d}-{p:02d}-{r:04d}"
                worker = WORKERS[n % 3]
                at = 1_700_000_000 + n * 0.5 + (0.25 if n % 7 == 0 else 0.0)
                n += 1
                env = json.dumps({"kind": "submission", "body": {
                    "completions": [{"token_ids": [5, 6, n % 50, 2], "finish_reason": "eos"}] * 2,
                    "pad": os.urandom(pad // 2).hex()}})
                lease = json.dumps({"kind": "lease", "body": {"prompt_token_ids": [1, 2, 3]}})
                truth["raw_bytes"] += len(env)
                subs.append({"submission_id": sid, "lease_id": "L" + sid, "worker_id": worker, "task_id": f"t-{n}",
                             "task_index": n, "policy_version": v, "n_tokens": 8, "received_at": at,
                             "full_check": n % 2 == 0, "rewards": [1.0, 0.0] if n % 3 else [0.0, 0.0],
                             "advantages": [0.5, -0.5], "submission_envelope": env, "lease_envelope": lease})
                truth["received"][sid] = at
                if n % 5 == 0:
                    truth["undecided"] += 1
                    continue
                status = "rejected" if n % 3 == 0 else "accepted"
                truth["rejected"] += status == "rejected"
                verdicts.append({"submission_id": sid, "worker_id": worker, "policy_version": v, "status": status,
                                 "reason": "proof: differs" if status == "rejected" else "", "full_check": True,
                                 "decided_at": at + 1, "verdict_envelope": json.dumps(
                                     {"kind": "verdict", "body": {"checks": [
                                         {"name": "proof", "passed": status == "accepted"}]}})})
            truth["rows"] += rows
            for table, schema, data in ((SUBMISSIONS, SUBMISSIONS_SCHEMA, subs), (VERDICTS, VERDICTS_SCHEMA, verdicts)):
                if not data:
                    continue
                folder = table_folder(root, table, v)
                folder.mkdir(parents=True, exist_ok=True)
                t = pa.Table.from_pylist(data, schema=schema)
                pq.write_table(t, folder / part_name(data[0].get("received_at", 0.0) or v, data[0]["submission_id"]),
                               compression="zstd")
                if v == 0 and p == 0:  # written again after a crash
                    pq.write_table(t, folder / ("part-9" + part_name(1.0, data[0]["submission_id"])[5:]),
                                   compression="zstd")
    (root / "run.json").write_text(json.dumps({"run_id": "synthetic", "coordinator_key": "00", "operator_key": "00"}))
    return truth


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-archive")
    return root, write_archive(root, versions=3, parts=3, rows=40, pad=64)


def ids(tables) -> list[str]:
    return [s for t in tables for s in t.column("submission_id").to_pylist()]


def test_the_stream_gives_every_submission_once_with_its_verdict(small):
    root, truth = small
    a = Archive(root)
    got = ids(a.stream(batch_rows=16))
    assert len(got) == len(set(got)) == truth["rows"]          # the part written twice is read once
    rows = a.rollouts().to_pylist()
    assert [r["submission_id"] for r in rows] == sorted(truth["received"], key=lambda s: (truth["received"][s], s))
    status = [r["status"] for r in rows]
    assert status.count("rejected") == truth["rejected"] and status.count("undecided") == truth["undecided"]
    assert all(r["n_completions"] == 2 for r in rows)
    light = next(a.stream(columns=["submission_id", "status"]))
    assert light.column_names == ["submission_id", "status"]


def test_the_stream_is_lazy(small, tmp_path):
    """The first rows come before the last part is opened: a damaged last part is reported only
    when the stream reaches it."""
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(small[0], root)
    last = max((root / SUBMISSIONS).glob("*/part-*.parquet"))
    last.write_bytes(b"not parquet")
    stream = Archive(root).stream()
    assert next(stream).num_rows > 0
    with pytest.raises(AuditError, match="cannot read"):
        list(stream)


def test_selection_limits_and_worker_prefixes_match_the_whole_table(small):
    root, truth = small
    a = Archive(root)
    newest = sorted(truth["received"], key=lambda s: (truth["received"][s], s))[-7:]
    assert sorted(ids(select(a, Filter(limit=7)))) == sorted(newest)
    cheater_rejected = Filter(workers=(WORKERS[2][:16],), verdicts=("rejected",), min_version=1)
    rows = [r for t in select(a, cheater_rejected) for r in t.to_pylist()]
    assert rows and {(r["worker_id"], r["status"]) for r in rows} == {(WORKERS[2], "rejected")}
    assert min(r["policy_version"] for r in rows) >= 1
    with pytest.raises(AuditError, match="matches 2 workers"):
        list(select(a, Filter(workers=("12D3KooWhonest",))))
    assert list(select(a, Filter(limit=0))) == []
    by_worker = {w["worker_id"]: w for w in summary(select(a, Filter()))}
    assert sum(w["submissions"] for w in by_worker.values()) == truth["rows"]
    assert by_worker[WORKERS[2]]["first_rejection"] == "proof: differs"


def test_export_streams_to_parquet_and_jsonl(small, tmp_path):
    root, truth = small
    a = Archive(root)
    n, _ = export(select(a, Filter(verdicts=("rejected",))), tmp_path / "r.parquet")
    t = pq.read_table(tmp_path / "r.parquet")
    assert n == t.num_rows == truth["rejected"] and set(t.column("status").to_pylist()) == {"rejected"}
    assert t.column("completion_token_ids").to_pylist()[0][0][:2] == [5, 6]
    n, _ = export(select(a, Filter(limit=5)), tmp_path / "r.jsonl")
    assert n == 5 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 5
    n, _ = export(select(a, Filter(workers=("nobody-at-all",))), tmp_path / "none.parquet")
    assert n == 0 and pq.read_table(tmp_path / "none.parquet").num_rows == 0


MEASURE = r"""
import json, resource, sys, io, contextlib
from pathlib import Path
from verifier.audit.commands import Selection, export_cmd, list_cmd, summary_cmd
out = Path(sys.argv[1])
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def run(archive):
    with contextlib.redirect_stdout(io.StringIO()):
        export_cmd(archive, Selection(workers=[]), out / "all.jsonl", None)
        export_cmd(archive, Selection(workers=[]), out / "all.parquet", None)
        summary_cmd(archive, Selection(workers=[]), True)
        list_cmd(archive, Selection(workers=[]), True)
        list_cmd(archive, Selection(workers=[], limit=10), False)
    return sum(1 for _ in open(out / "all.jsonl"))
peaks, rows = [], []
for archive in sys.argv[2:]:  # small (imports, lazy set-up), then larger and larger
    rows.append(run(Path(archive)))
    peaks.append(peak())
print(json.dumps({"peaks": peaks, "rows": rows}))
"""


def test_audit_commands_need_memory_bounded_by_a_part_not_by_the_archive(small, tmp_path):
    """Peak RSS while exporting (JSONL and Parquet), summarising and listing an archive, then one
    four times as large: the larger one must cost (almost) nothing more. Before, each command
    held the whole archive, several times over (a 58 MB archive raised the peak by 357 MB)."""
    one = write_archive(tmp_path / "one", versions=2, parts=4, rows=150, pad=16_000)
    four = write_archive(tmp_path / "four", versions=8, parts=4, rows=150, pad=16_000)
    assert four["raw_bytes"] > 75e6
    (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "out"), str(small[0]), str(tmp_path / "one"),
                           str(tmp_path / "four")], capture_output=True, text=True, timeout=600, check=False,
                          cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rows"] == [small[1]["rows"], one["rows"], four["rows"]]
    base, after_one, after_four = got["peaks"]
    def mb(b: float) -> str:
        return f"{b / 1e6:.0f} MB"

    # one part holds 150 x 16 kB = 2.4 MB of envelopes; the archives 19 MB and 77 MB
    assert after_four - after_one < four["raw_bytes"] / 8, \
        f"a 4x larger archive raised the peak from {mb(after_one - base)} to {mb(after_four - base)}"
    assert after_four - base < four["raw_bytes"], f"peak RSS grew by {mb(after_four - base)}"
