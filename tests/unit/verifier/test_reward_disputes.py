"""Reward disputes: the coordinator's reward and the verifier's recomputation of it disagree on
the same text (a scorer's wall clock ran out on one side's busier machine). That is no doing
of the worker, so it must not reject (and so ban) an honest worker: no verdict while the
verifier's own scoring failed (a second try at once, then a later claim), and a rejection
that is not counted against the worker when the verifier scored cleanly. A worker that
cheated as well gets no shelter from a dispute."""

import base64
import dataclasses

import pytest
import torch

from protocol.messages import Completion, EngineInfo, Submission
from protocol.proof import build_proof
from protocol.sandbox import Limits, Sandbox, ScoreResult, shared
from tests.adversarial.harness import engine_for, honest_submissions
from tests.hostile.scoring import EVAL_SCORER
from verifier.errors import JobError
from verifier.pipeline import verify_job

TIMED_OUT = "timed out after 3.0 s"


class ScriptedSandbox:
    """The verifier's sandbox with a script: call k returns `script[k]` (rewards; None: that item
    timed out), or the real scores once the script runs out."""

    def __init__(self, *script: list[float | None]):
        self.script, self.calls = list(script), []

    def score(self, kind, items):
        self.calls.append(len(items))
        if not self.script:
            return shared().score(kind, items)
        return [ScoreResult(0.0, TIMED_OUT) if r is None else ScoreResult(r) for r in self.script.pop(0)]


def _honest_job(world, worker_key, *, rewards=None, claimed=None):
    lease, env = world.lease(worker_key)
    engine = engine_for(world.versions[world.current], world.current)
    sub = honest_submissions(engine, [lease], world.current)[0]
    if claimed is not None:
        sub = sub.model_copy(update={"claimed_rewards": claimed})
    job = world.job(env, sub, worker_key)
    return job.model_copy(update={"rewards": rewards}) if rewards is not None else job


def _with(world, sandbox):
    world.settings = dataclasses.replace(world.settings, sandbox=sandbox)
    return world


def test_an_honest_submission_the_verifier_could_not_score_gets_no_verdict_now(world, worker_key):
    """The coordinator scored completion 0 at 1.0; the verifier's scorer timed out on it twice:
    before, a rejection (and a ban); now JobError, the job goes back to the queue."""
    job = _honest_job(world, worker_key, rewards=[1.0, 0.0, 0.0, 0.0])
    box = ScriptedSandbox([None, 0.0, 0.0, 0.0], [None])
    with pytest.raises(JobError, match="scorer failed on a completion"):
        _with(world, box).verify(job)
    assert box.calls == [4, 1]                   # the whole group, then the one item once more


def test_a_dispute_the_second_try_settles_is_an_acceptance(world, worker_key):
    job = _honest_job(world, worker_key, rewards=[1.0, 0.0, 0.0, 0.0])
    box = ScriptedSandbox([None, 0.0, 0.0, 0.0], [1.0])
    v = _with(world, box).verify(job)
    assert v.accepted, v.reason
    assert box.calls == [4, 1]


def test_a_dispute_the_verifier_scored_cleanly_is_a_rejection_not_counted_against_the_worker(world, worker_key):
    """The verifier scores 0.0 where the coordinator wrote 1.0, without a failure of its own (the
    coordinator's scorer erred): the group is not trained, the worker is not at fault."""
    job = _honest_job(world, worker_key, rewards=[1.0, 0.0, 0.0, 0.0])
    box = ScriptedSandbox([0.0, 0.0, 0.0, 0.0])
    v = _with(world, box).verify(job)
    assert not v.accepted and v.worker_fault is False
    assert [c.name for c in v.checks if not c.passed] == ["reward"]
    assert v.reason.startswith("not counted against the worker: reward: coordinator reward 1.0")
    reward = next(c for c in v.checks if c.name == "reward")
    assert reward.stats["disputed"] == [0] and reward.stats["worker_fault"] is False
    assert box.calls == [4]                     # nothing failed here: no second try


def test_a_worker_that_lies_about_its_rewards_is_at_fault_whatever_the_dispute(world, worker_key):
    job = _honest_job(world, worker_key, rewards=[1.0, 0.0, 0.0, 0.0], claimed=[1.0, 1.0, 1.0, 1.0])
    v = _with(world, ScriptedSandbox([0.0, 0.0, 0.0, 0.0])).verify(job)
    assert not v.accepted and v.worker_fault is True
    assert "worker claims reward 1.0" in v.reason


def test_a_cheater_cannot_hide_behind_a_dispute(world, worker_key):
    """Forged tokens (the proof and sampling checks fail) and a reward the verifier's scorer
    could not score: the other failures decide, a rejection at the worker's fault (a ban),
    not a deferral."""
    job = _honest_job(world, worker_key, rewards=[1.0, 0.0, 0.0, 0.0])
    sub = Submission.model_validate(job.submission.body)
    forged = [c.model_copy(update={"token_ids": [7] * (len(c.token_ids) - 1) + c.token_ids[-1:]})
              for c in sub.completions]
    job = world.job(job.lease, sub.model_copy(update={"completions": forged}), worker_key)
    job = job.model_copy(update={"rewards": [1.0, 0.0, 0.0, 0.0]})
    v = _with(world, ScriptedSandbox([None, 0.0, 0.0, 0.0], [None])).verify(job)
    assert not v.accepted and v.worker_fault is True
    failed = {c.name for c in v.checks if not c.passed}
    assert "reward" in failed and failed & {"proof", "sampling"}, failed


def _proof(n: int) -> str:
    return base64.b64encode(build_proof(torch.randn(n, 64, generator=torch.Generator().manual_seed(n)))).decode()


def _spelled(code: str) -> str:
    return "eval(bytes((" + ",".join(str(b) for b in code.encode()) + ",)).decode())"


def test_a_real_scorer_that_runs_out_of_the_verifiers_wall_clock_defers_the_job(world, worker_key):
    """The same text and scorer, scored by a real sandbox: one whose item clock is shorter than
    the scorer's 0.8 s (the verifier's machine, busier than the coordinator's was) defers the
    job instead of rejecting it; one with the protocol's clock accepts it. Cheap check (no
    model): the text is a scorer-timing fixture, not a policy sample."""
    world.max_tokens = 256
    lease, env = world.lease(worker_key)
    text = _spelled("[__import__('time').sleep(0.8),42][1]")   # eval_scorer: 0.1 when eval(text) == "42"
    ids = world.tokenizer.encode(text, add_special_tokens=False) + [world.eos]
    assert world.tokenizer.decode(ids[:-1]) == text and len(ids) <= 256
    comps = [Completion(token_ids=ids, finish_reason="eos", proof=_proof(len(ids))) for _ in lease.seeds]
    sub = Submission(lease_id=lease.lease_id, policy_version=lease.max_policy_version, completions=comps,
                     engine=EngineInfo(name="test", dtype="float32"))
    job = world.job(env, sub, worker_key, full_check=False).model_copy(
        update={"task_kind": EVAL_SCORER, "task_answer": "42", "rewards": [0.1] * len(comps)})
    busy = Sandbox(Limits(item_timeout_s=0.3, batch_timeout_s=8.0, spares=1), allow_modules=("tests.hostile.scoring",))
    calm = Sandbox(Limits(item_timeout_s=3.0, batch_timeout_s=20.0, spares=1), allow_modules=("tests.hostile.scoring",))
    try:
        with pytest.raises(JobError):
            verify_job(job, coordinator_key=world.coordinator.public, tokenizer=world.tokenizer, models=world.models,
                       settings=dataclasses.replace(world.settings, sandbox=busy.start()), ledger=world.ledger)
        v = verify_job(job, coordinator_key=world.coordinator.public, tokenizer=world.tokenizer, models=world.models,
                       settings=dataclasses.replace(world.settings, sandbox=calm.start()), ledger=world.ledger)
        assert v.accepted, v.reason
    finally:
        busy.close()
        calm.close()
