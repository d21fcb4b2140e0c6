"""Issue 18: a worker submits completions that reasoning-gym's spiral_matrix scorer `eval`s.

A real coordinator on 127.0.0.1 (real SQLite, real HTTP; tests.unit.coordinator.coord_harness)
runs the task `reasoning_gym:spiral_matrix`. A registered worker takes ordinary leases and
submits, through the eval-payload worker of tests/hostile/scoring.py, completions whose text
writes a file when evaluated. The coordinator's intake, the verifier's reward check and
`swarmrl audit reverify` each score it: reward 0, the service stays up, no file appears.
Skipped without the `tasks` extra (the sandbox itself is covered without it by
tests/unit/protocol/test_sandbox.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install -e '.[tasks]')")

from coordinator.archive import Archiver  # noqa: E402
from coordinator.checkpoints import write_run_description  # noqa: E402
from protocol.lm import load_tokenizer  # noqa: E402
from protocol.manifest import build_manifest, sign_manifest  # noqa: E402
from protocol.tasks.gym import gym_scorer  # noqa: E402
from swarmrl.modelkit import init_tiny_model  # noqa: E402
from tests.hostile.scoring import PAYLOADS, payload_completions, send_payload  # noqa: E402
from tests.unit.coordinator.coord_harness import start_swarm  # noqa: E402

TASK = "reasoning_gym:spiral_matrix"
HIDDEN = 32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval-model") / "tiny"
    init_tiny_model(d, hidden_size=HIDDEN, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


@pytest.fixture
def target():
    """A short path in a folder anyone may write to (a short payload fits a short lease)."""
    d = Path(tempfile.mkdtemp(prefix="sb", dir="/tmp"))
    os.chmod(d, 0o777)
    try:
        yield d / "p"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def swarm(tmp_path, model):
    s = start_swarm(tmp_path, model, tasks={"kind": TASK, "options": {"size": 50, "eval_size": 10}},
                    sampling={"max_tokens": 512})
    try:
        assert s.publish(0).status_code == 200
        yield s
    finally:
        s.close()


def test_the_payload_is_live_without_the_sandbox(model, target):
    """What the coordinator did before issue 18: the scorer runs the text and the file appears."""
    tok = load_tokenizer(str(model))
    text = PAYLOADS["file_write"](target)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text  # the tiny vocabulary carries it exactly
    gym_scorer("spiral_matrix")(text, "1 2 3", {})
    assert target.exists()


def test_intake_verifier_and_reverify_score_an_eval_payload_zero_and_run_nothing(swarm, model, target, tmp_path):
    from protocol.identity import PublicKey
    from verifier.audit.archive import Archive
    from verifier.audit.reverify import Reverifier
    from verifier.job import open_job
    from verifier.judge import JudgeSettings, judge
    from verifier.seen import SeenLedger

    tok = load_tokenizer(str(model))
    key = swarm.new_worker()
    text = PAYLOADS["file_write"](target)

    # 1. the coordinator's intake scores it (reward 0) and stays up
    lease = swarm.lease(key, 1)[0]
    swarm.clock.advance(0.001)
    r = send_payload(swarm.http, key, lease, tok, text, hidden_size=HIDDEN, now=swarm.clock())
    assert r.status_code == 200, r.text
    sid = r.json()["submission_id"]
    row = swarm.snapshot_submission(sid)
    assert row["rewards"] == "[0.0, 0.0, 0.0, 0.0]" and row["status"] == "queued"
    assert not target.exists()
    assert swarm.http.get("/health").status_code == 200

    # 2. the verifier's reward check (claimed as a real job) recomputes 0 and runs nothing
    (job,) = [j for j in swarm.claim() if j.submission_id == sid]
    assert job.task_kind == TASK
    oj = open_job(job, PublicKey.from_hex(swarm.ctx.key.public.hex))
    texts = [tok.decode(c.token_ids, skip_special_tokens=True) for c in oj.submission.completions]
    assert texts == [text] * 4
    ledger = SeenLedger(":memory:")
    verdict = judge(oj, JudgeSettings(run_id=swarm.cfg.run_id), ledger, texts)
    ledger.close()
    reward = next(c for c in verdict.checks if c.name == "reward")
    assert reward.passed and reward.stats["recomputed"] == [0.0] * 4
    assert not target.exists()

    # 3. `swarmrl audit reverify` on the archive: the same reward check, the same 0
    assert swarm.verdict(sid, False, reason="proof: random hidden states").status_code == 200
    root = tmp_path / "coordinator" / "archive"
    Archiver(swarm.ctx.db, root).flush()
    write_run_description(swarm.ctx, root)
    ckpt = root / "checkpoints" / "v000000"
    shutil.copytree(model, ckpt)
    manifest = build_manifest(ckpt, run_id=swarm.cfg.run_id, version=0, step=0, created_at=swarm.clock())
    (ckpt / ".manifest.json").write_text(sign_manifest(manifest, swarm.operator).model_dump_json())
    rv = Reverifier(Archive(root), tokenizer=tok).reverify(sid)
    reward = next(c for c in rv.checks if c["name"] == "reward")
    assert reward["passed"] and reward["stats"]["recomputed"] == [0.0] * 4
    assert rv.holds is True  # recorded rejected, re-run rejects (the proofs are random)
    assert not target.exists()

    # the rejection banned the attacker; the coordinator still takes and scores honest work
    honest = swarm.new_worker()
    lease = swarm.lease(honest, 1)[0]
    answer = swarm.ctx.tasks.task(int(lease.task_id.rsplit("-", 1)[1])).answer
    as_tuple = "(" + ",".join(answer.split()) + ",)"  # the tiny vocabulary drops spaces; the scorer's eval path
    r = swarm.submit(honest, lease, completions=payload_completions(lease, tok, as_tuple, hidden_size=HIDDEN))
    assert r.status_code == 200, r.text
    assert swarm.snapshot_submission(r.json()["submission_id"])["rewards"] == "[0.1, 0.1, 0.1, 0.1]"
