"""`swarmrl audit` on the archive of a short live swarm (real processes, real Parquet files).

The swarm (tests/integration/audit_swarm.py): coordinator, relay, verifier, an honest worker
and a worker generating with noised weights, two policy versions. It is stopped before the
CLI runs, so the archive is final (the coordinator flushes it on SIGTERM). Commands run through
the `swarmrl` typer app in this process (torch is imported once), and as `python -m swarmrl
audit ...` subprocesses where the exit status and the printed verdict are the point.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.audit_swarm import run_until_archived, start_live_swarm

VERSIONS = 2


@pytest.fixture(scope="module")
def swarm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-swarm")
    swarm = start_live_swarm(root, honest=1, cheaters=1)
    try:
        run_until_archived(swarm, versions=VERSIONS, per_version=2)
        live = {"rejections": swarm.get("/v1/dashboard/rejections"),
                "workers": swarm.get("/v1/dashboard/workers")}
        live["rollout"] = swarm.get(f"/v1/dashboard/rollouts/{live['rejections'][0]['submission_id']}")
    finally:
        swarm.stop()
    return {"archive": swarm.archive, "live": live, "cheaters": swarm.plan.cheater_names, "root": root}


def audit(*args: str, archive: Path, expect: int = 0):
    """`swarmrl audit ...` through the CLI app, in this process."""
    from typer.testing import CliRunner

    from swarmrl.cli import app

    r = CliRunner().invoke(app, ["audit", *args, "--archive", str(archive)])
    assert r.exit_code == expect, f"exit {r.exit_code}\n{r.output[-3000:]}\n{r.exception!r}"
    return r


def audit_proc(*args: str, archive: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """`python -m swarmrl audit ...` as its own process."""
    p = subprocess.run([sys.executable, "-m", "swarmrl", "audit", *args, "--archive", str(archive)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == expect, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def audit_json(*args: str, archive: Path, expect: int = 0):
    return json.loads(audit(*args, "--json", archive=archive, expect=expect).stdout)


def cheater_id(root: Path) -> str:
    from protocol.identity import KeyPair

    return KeyPair.load(root / "cheater-1" / "worker.key").peer_id


def test_summary_and_list_single_out_the_cheater(swarm_run):
    a, cheater = swarm_run["archive"], cheater_id(swarm_run["root"])
    workers = {w["worker_id"]: w for w in audit_json("summary", archive=a)}
    assert workers[cheater]["rejected"] == 1 and workers[cheater]["accepted"] == 0
    assert "proof" in workers[cheater]["reasons"]
    honest = [w for wid, w in workers.items() if wid != cheater]
    assert len(honest) == 1 and all(w["rejected"] == 0 and w["accepted"] > 0 for w in honest)
    rejected = audit_json("list", "--verdict", "rejected", archive=a)
    assert [r["worker_id"] for r in rejected] == [cheater] and "proof: " in rejected[0]["reason"]
    one = honest[0]["worker_id"]
    rows = audit_json("list", "--worker", one[:12], "--version", "1:", "--verdict", "accepted", archive=a)
    assert rows and {r["worker_id"] for r in rows} == {one}
    assert {r["policy_version"] for r in rows} == {1} and {r["status"] for r in rows} == {"accepted"}
    assert len(audit_json("list", "--limit", "3", archive=a)) == 3
    text = audit_proc("list", "--verdict", "rejected", archive=a).stdout
    assert rejected[0]["submission_id"] in text and "1 of" in text


def test_show_decodes_prompt_completions_and_every_check(swarm_run):
    a = swarm_run["archive"]
    sid = audit_json("list", "--verdict", "rejected", archive=a)[0]["submission_id"]
    view = audit_json("show", sid, archive=a)
    assert re.fullmatch(r"\d+[+-]\d+=", view["prompt"]["text"])
    assert len(view["completions"]) == 4 and all(isinstance(c["text"], str) for c in view["completions"])
    assert all(c["reward"] == 0.0 for c in view["completions"])  # the tiny model does not know arithmetic
    checks = {c["name"]: c for c in view["verdict"]["checks"]}
    assert checks["proof"]["passed"] is False and checks["proof"]["stats"]["failed_chunks"] > 0
    assert {"lease_and_data", "termination", "reward", "replay", "proof", "sampling"} <= set(checks)
    # the dashboard's audit view of the same rollout (read from the live coordinator) says the same
    live = swarm_run["live"]["rollout"]  # the one rejection of the run
    assert live["submission_id"] == sid
    assert live["prompt"] == view["prompt"] and live["verdict"]["checks"] == view["verdict"]["checks"]
    assert [c["token_ids"] for c in live["completions"]] == [c["token_ids"] for c in view["completions"]]


def test_dashboard_rejections_are_archived_rollouts(swarm_run):
    a = swarm_run["archive"]
    archived = {r["submission_id"]: r for r in audit_json("list", archive=a)}
    for rej in swarm_run["live"]["rejections"]:
        assert archived[rej["submission_id"]]["status"] == "rejected"
        assert rej["audit_url"].endswith(rej["submission_id"]) and rej["failed_checks"]


def test_reverify_confirms_the_recorded_verdicts(swarm_run):
    a = swarm_run["archive"]
    rejected = audit_json("list", "--verdict", "rejected", archive=a)[0]["submission_id"]
    accepted = audit_json("list", "--verdict", "accepted", "--version", str(VERSIONS - 1), "--limit", "1",
                          archive=a)[0]["submission_id"]
    p = audit("reverify", rejected, accepted, archive=a)
    assert p.stdout.count("VERDICT HOLDS") == 2 and "DOES NOT HOLD" not in p.stdout
    assert "manifest signed by the operator" in p.stdout and "2 re-verified: 2 verdicts hold" in p.stdout


def edit_tokens(archive: Path, submission_id: str) -> tuple[list[int], list[int]]:
    """Change the first token of the first completion of an archived submission, in place."""
    for f in archive.glob("submissions/*/part-*.parquet"):
        t = pq.read_table(f)
        ids = t.column("submission_id").to_pylist()
        if submission_id not in ids:
            continue
        i = ids.index(submission_id)
        envs = t.column("submission_envelope").to_pylist()
        env = json.loads(envs[i])
        tokens = env["body"]["completions"][0]["token_ids"]
        before = list(tokens)
        tokens[0] = 3 + (tokens[0] + 7) % 60  # another printable character of the tiny vocabulary
        envs[i] = json.dumps(env)
        t = t.set_column(t.schema.get_field_index("submission_envelope"), "submission_envelope",
                         pa.array(envs, pa.string()))
        pq.write_table(t, f)
        return before, tokens
    raise AssertionError(f"{submission_id} not found in {archive}")


def test_reverify_catches_tokens_edited_after_the_fact(swarm_run, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(swarm_run["archive"], archive)
    sid = audit_json("list", "--verdict", "accepted", "--version", "1", "--limit", "1",
                     archive=archive)[0]["submission_id"]
    before, after = edit_tokens(archive, sid)
    assert before != after
    assert audit_json("show", sid, archive=archive)["completions"][0]["token_ids"] == after  # the edit is in
    [r] = audit_json("reverify", sid, archive=archive, expect=1)
    assert r["recorded_status"] == "accepted" and r["accepted"] is False and r["holds"] is False
    checks = {c["name"]: c for c in r["checks"]}
    assert checks["signatures"]["passed"] is False
    assert not (checks["proof"]["passed"] and checks["sampling"]["passed"])  # what the edit changed, measured
    assert checks["lease_and_data"]["passed"] and checks["reward"]["passed"]
    p = audit_proc("reverify", sid, archive=archive, expect=1)
    assert "VERDICT DOES NOT HOLD" in p.stdout


def test_export_writes_the_filtered_rows(swarm_run, tmp_path):
    a = swarm_run["archive"]
    want = audit_json("list", "--verdict", "accepted", "--version", "1:", archive=a)
    audit("export", str(tmp_path / "acc.parquet"), "--verdict", "accepted", "--version", "1:", archive=a)
    audit("export", str(tmp_path / "acc.jsonl"), "--verdict", "accepted", "--version", "1:", archive=a)
    df = pd.read_parquet(tmp_path / "acc.parquet")
    lines = [json.loads(x) for x in (tmp_path / "acc.jsonl").read_text().splitlines()]
    assert sorted(df.submission_id) == sorted(r["submission_id"] for r in want) == sorted(
        x["submission_id"] for x in lines)
    assert set(df.status) == {"accepted"} and df.policy_version.min() >= 1
    first = lines[0]
    assert len(first["completion_token_ids"]) == first["n_completions"] == len(first["rewards"])
    assert json.loads(first["submission_envelope"])["body"]["completions"][0]["token_ids"] == \
        first["completion_token_ids"][0]
    p = subprocess.run([sys.executable, "-m", "swarmrl", "audit", "export", str(tmp_path / "x.csv"),
                        "--archive", str(a)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "name it *.parquet or *.jsonl" in p.stderr
