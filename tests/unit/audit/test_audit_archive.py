"""Reading the coordinator's archive: rows once, verdicts joined, summaries, exports, one rollout."""

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from verifier.audit.archive import Archive, RunDescription
from verifier.audit.errors import AuditError
from verifier.audit.filters import Filter, apply
from verifier.audit.views import export, show, summary


def by_id(archive: Archive) -> dict:
    return {r["submission_id"]: r for r in archive.rollouts().to_pylist()}


def test_every_submission_once_with_its_verdict(archived):
    rows = by_id(Archive(archived.root))
    assert set(rows) == {*archived.accepted, archived.rejected, *archived.dropped, *archived.queued}
    for sid in archived.accepted:
        assert rows[sid]["status"] == "accepted" and rows[sid]["verdict_full_check"] is True
        assert json.loads(rows[sid]["verdict_envelope"])["kind"] == "verdict"
    assert rows[archived.rejected]["status"] == "rejected"
    assert rows[archived.rejected]["reason"].startswith("proof:")
    for sid in archived.dropped + archived.queued:  # no verdict archived: dropped at the ban, or still queued
        assert rows[sid]["status"] == "undecided" and rows[sid]["verdict_envelope"] is None
    assert rows[archived.accepted[0]]["mean_reward"] == 1.0
    assert rows[archived.accepted[1]]["mean_reward"] == 0.0
    assert all(r["n_completions"] == 4 for r in rows.values())


def test_rows_written_twice_are_read_once(archived, tmp_path):
    copy = tmp_path / "archive"
    shutil.copytree(archived.root, copy)
    for part in list(copy.glob("*/v000000/part-*.parquet")):  # at-least-once delivery: the same rows again
        shutil.copy(part, part.with_name(part.name.replace("part-", "part-9")))
    assert len(list(copy.glob("submissions/v000000/part-*.parquet"))) >= 2
    assert by_id(Archive(copy)) .keys() == by_id(Archive(archived.root)).keys()
    assert Archive(copy).rollouts().num_rows == Archive(archived.root).rollouts().num_rows


def test_one_rollout_by_id_or_prefix(archived):
    a = Archive(archived.root)
    assert a.rollout(archived.rejected)["worker_id"] == archived.cheater
    assert a.rollout(archived.rejected[:14])["submission_id"] == archived.rejected
    with pytest.raises(AuditError, match="no submission s-nope"):
        a.rollout("s-nope")
    with pytest.raises(AuditError, match="6 ids start with it"):
        a.rollout("s-")


def test_not_an_archive_says_where_to_point(tmp_path):
    with pytest.raises(AuditError, match="not a swarmrl archive"):
        Archive(tmp_path)
    (tmp_path / "submissions").mkdir()
    with pytest.raises(AuditError, match="run.json is missing"):
        _ = Archive(tmp_path).run


def test_run_description_names_keys_and_task_source(archived):
    run = RunDescription.load(archived.root / "run.json")
    ctx = archived.swarm.ctx
    assert run.coordinator_key == ctx.key.public.hex and run.operator_key == ctx.operator.hex
    assert run.verifier_keys == [archived.swarm.verifier.public.hex]
    assert (run.tasks.kind, run.tasks.seed) == ("arithmetic", 0)


def test_summary_per_worker_counts_and_reasons(archived):
    rows = {w["worker_id"]: w for w in summary(Archive(archived.root).rollouts())}
    h, c = rows[archived.honest], rows[archived.cheater]
    assert (h["submissions"], h["accepted"], h["rejected"], h["undecided"]) == (4, 3, 0, 1)
    assert (c["submissions"], c["accepted"], c["rejected"], c["undecided"]) == (2, 0, 1, 1)
    assert c["reasons"] == {"proof": 1} and c["first_rejection"].startswith("proof:")
    assert h["reasons"] == {} and h["accepted_tokens"] > 0 and c["accepted_tokens"] == 0


def test_show_decodes_prompt_and_completions(archived, audit_model):
    from protocol.lm import load_tokenizer

    a = Archive(archived.root)
    view = show(a, archived.accepted[0], load_tokenizer(str(audit_model)))
    task = archived.swarm.ctx.tasks.prepare(0).task
    assert view["prompt"]["text"] == task.prompt
    assert [c["text"] for c in view["completions"]] == [task.answer] * 4
    assert [c["reward"] for c in view["completions"]] == [1.0] * 4
    assert view["verdict"]["accepted"] is True and [c["name"] for c in view["verdict"]["checks"]] == [
        "lease_and_data", "proof", "sampling"]
    rejected = show(a, archived.rejected, None)
    assert rejected["status"] == "rejected" and rejected["completions"][0]["text"] is None  # no tokenizer: ids only
    assert rejected["verdict"]["checks"][1] == {"name": "proof", "passed": False, "stats": {"group_exp_frac": 0.31},
                                                "detail": "completion 0 chunk 0: 40/128 exponents differ"}


def test_export_parquet_and_jsonl_are_readable_without_swarmrl(archived, tmp_path):
    a = Archive(archived.root)
    rows = apply(a.rollouts(), Filter(workers=(archived.honest,)))
    n, fmt = export(rows, tmp_path / "honest.parquet")
    assert (n, fmt) == (4, "parquet")
    n, fmt = export(apply(a.rollouts(), Filter(verdicts=("rejected",))), tmp_path / "rejected.jsonl")
    assert (n, fmt) == (1, "jsonl")
    with pytest.raises(AuditError, match="name it"):
        export(rows, tmp_path / "out.csv")
    assert pq.read_table(tmp_path / "honest.parquet").column("completion_token_ids").to_pylist()[0][0][-1] == \
        archived.swarm.ctx.tasks.eos_token_id
    # A reader with pandas and DuckDB only, in a fresh interpreter outside the repository where
    # swarmrl's packages cannot be imported at all.
    script = f"""
import importlib.util, json, sys
# as if swarmrl were not installed: drop its editable-install finder, then make sure of it
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")
                 and "editable" not in getattr(f, "__name__", "")]
sys.path[:] = [p for p in sys.path if "editable" not in p]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
assert all(importlib.util.find_spec(m) is None for m in ("swarmrl", "protocol", "coordinator", "verifier"))
import duckdb, pandas as pd
root = {str(archived.root)!r}
n = duckdb.sql(f"SELECT count(DISTINCT submission_id) FROM read_parquet('{{root}}/submissions/*/*.parquet')").fetchall()[0][0]
v = duckdb.sql(f"SELECT status, count(*) FROM read_parquet('{{root}}/verdicts/*/*.parquet') GROUP BY 1 ORDER BY 1").fetchall()
df = pd.read_parquet({str(tmp_path / 'honest.parquet')!r})
lines = [json.loads(l) for l in open({str(tmp_path / 'rejected.jsonl')!r})]
mods = sorted(m for m in sys.modules if m.split('.')[0] in ('swarmrl', 'protocol', 'coordinator', 'verifier', 'worker', 'shardcast'))
print(json.dumps({{"n": n, "verdicts": v, "honest": len(df), "mean": float(df.mean_reward.max()),
                   "rejected": [l["status"] for l in lines], "tokens": lines[0]["prompt_token_ids"], "mods": mods}}))
"""
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["n"] == 6 and got["verdicts"] == [["accepted", 3], ["rejected", 1]]
    assert got["honest"] == 4 and got["mean"] == 1.0 and got["rejected"] == ["rejected"]
    assert got["tokens"] and got["mods"] == []
