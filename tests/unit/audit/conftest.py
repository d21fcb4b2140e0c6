"""A real archive written by the coordinator's own code, for the audit's unit tests.

A coordinator on 127.0.0.1 (tests.unit.coordinator.coord_harness: real SQLite, real HTTP, a
clock the test moves) receives registrations, a policy version, submissions and signed
verdicts; `coordinator.archive.Archiver` writes the Parquet files and
`coordinator.checkpoints.write_run_description` the run.json, exactly as in a swarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from coordinator.archive import Archiver
from coordinator.checkpoints import write_run_description
from protocol.lm import load_tokenizer
from protocol.messages import KIND_VERDICT, CheckResult
from swarmrl.modelkit import init_tiny_model
from tests.unit.coordinator.coord_harness import start_swarm


@pytest.fixture(scope="session")
def audit_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit-model") / "tiny"
    init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


@dataclass
class ArchivedRun:
    root: object
    swarm: object
    honest: str = ""
    cheater: str = ""
    accepted: list[str] = field(default_factory=list)
    rejected: str = ""
    dropped: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)


def _verdict(swarm, sid: str, accepted: bool, failing: str | None = None):
    checks = [CheckResult(name="lease_and_data", passed=True, stats={"problems": 0}),
              CheckResult(name="proof", passed=failing != "proof",
                          stats={"group_exp_frac": 0.31} if failing else {"group_exp_frac": 0.0, "group_mant_mean": 0.0,
                                                                          "prefill_dtype": "float32"},
                          detail="completion 0 chunk 0: 40/128 exponents differ" if failing else ""),
              CheckResult(name="sampling", passed=True, stats={"positions": 3, "not_argmax": 0})]
    v = swarm.verdict_body(sid, accepted, checks=checks,
                           reason="" if accepted else "proof: completion 0 chunk 0: 40/128 exponents differ")
    r = swarm.post("/v1/verdicts", KIND_VERDICT, v, swarm.verifier)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def archived(tmp_path_factory, audit_model):
    """Two workers: the honest one has 3 accepted groups (one answering right) and one still
    queued; the cheater has one rejected group and one dropped when it was banned."""
    tmp = tmp_path_factory.mktemp("archived")
    s = start_swarm(tmp, audit_model)
    try:
        assert s.publish(0).status_code == 200
        honest, cheater = s.new_worker(), s.new_worker()
        tok = load_tokenizer(str(audit_model))
        run = ArchivedRun(root=tmp / "coordinator" / "archive", swarm=s, honest=honest.peer_id,
                          cheater=cheater.peer_id)
        leases = s.lease(honest, 4)
        for i, lease in enumerate(leases):
            answer = None
            if i == 0:  # the right answer, so this group has reward 1
                task = s.ctx.tasks.prepare(0)
                answer = tok(task.task.answer, add_special_tokens=False)["input_ids"]
            r = s.submit(honest, lease, completions=s.completions(lease, answer) if answer else None)
            assert r.status_code == 200, r.text
            sid = r.json()["submission_id"]
            (run.accepted if i < 3 else run.queued).append(sid)
        for lease in s.lease(cheater, 2):
            r = s.submit(cheater, lease)
            assert r.status_code == 200, r.text
            run.dropped.append(r.json()["submission_id"])
        run.rejected = run.dropped.pop(0)
        for sid in run.accepted:
            s.clock.advance(1)
            _verdict(s, sid, True)
        s.clock.advance(1)
        _verdict(s, run.rejected, False, failing="proof")
        Archiver(s.ctx.db, run.root).flush()
        write_run_description(s.ctx, run.root)
        yield run
    finally:
        s.close()
