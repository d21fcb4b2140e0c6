"""Red-team regressions: what a hostile submission (or a degenerate prefill) must never do to
the verifier: crash it, or leave a completion unchecked and still be accepted."""

import base64

import pytest
import torch

from protocol.messages import Completion, EngineInfo, Submission
from protocol.proof import build_proof
from tests.adversarial.harness import engine_for, honest_submissions
from verifier import judge as judge_mod
from verifier.checks.proof import check_proof
from verifier.job import open_job
from verifier.judge import judge
from verifier.seen import SeenLedger
from verifier.thresholds import FLOAT32


def _proof(T, H=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return base64.b64encode(build_proof(torch.randn(T, H, generator=g))).decode()


def _sub(lease, n_tokens=12):
    comps = [Completion(token_ids=[5 + i] * (n_tokens - 1) + [lease.eos_token_id], finish_reason="eos",
                        proof=_proof(n_tokens, seed=i)) for i in range(len(lease.seeds))]
    return Submission(lease_id=lease.lease_id, policy_version=lease.max_policy_version, completions=comps,
                      engine=EngineInfo(name="test", dtype="float32"))


def test_a_chunk_with_nothing_left_to_compare_fails_without_crashing(world, worker_key):
    """Every top-k value of the verifier's chunk sits within the boundary band (here: all equal)
    and every claim is off: each position is left out as 'maybe not selected', so the chunk
    compares nothing. That must fail the proof check, not divide by zero in the verifier."""
    lease, env = world.lease(worker_key)
    oj = open_job(world.job(env, _sub(lease), worker_key), world.coordinator.public)
    hidden = [torch.ones(12, 64) for _ in lease.seeds]
    r = check_proof(oj, hidden, FLOAT32, chunk_size=32, topk=128)
    assert not r.passed
    assert "nothing" in r.detail or "compared" in r.detail


def _honest(world, worker_key):
    lease, env = world.lease(worker_key)
    engine = engine_for(world.versions[world.current], world.current)
    sub = honest_submissions(engine, [lease], world.current)[0]
    return world.job(env, sub, worker_key)


def test_a_prefill_that_covers_fewer_completions_is_no_acceptance(world, worker_key):
    """`judge` must not read a short prefill as 'the rest passed': completions the model
    outputs do not cover were not checked, so the submission is not accepted."""
    job = _honest(world, worker_key)
    oj, outputs = world.verifier_outputs(job)
    texts = [world.tokenizer.decode(c.token_ids) for c in oj.submission.completions]
    full = judge(oj, world.settings, SeenLedger(), texts, outputs=outputs, vocab_size=80)
    assert full.accepted, full.reason  # the honest baseline
    outputs.hidden, outputs.logits = outputs.hidden[:1], outputs.logits[:1]
    short = judge(oj, world.settings, SeenLedger(), texts, outputs=outputs, vocab_size=80)
    assert not short.accepted
    assert "covers" in short.reason


def test_an_unexpected_error_in_a_check_is_a_rejection_not_a_crash(world, worker_key, monkeypatch):
    """A bug a submission can reach in a check (any exception other than JobError) must not
    escape `verify_job`: that would stop the service loop, and the job, claimed again after
    its claim expires, would stop every verifier in turn. It fails closed: a rejection."""
    job = _honest(world, worker_key)

    def boom(*a, **kw):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(judge_mod, "check_proof", boom)
    v = world.verify(job)
    assert not v.accepted
    failed = [c for c in v.checks if not c.passed]
    assert [c.name for c in failed] == ["verifier"]
    assert "ZeroDivisionError" in failed[0].detail and v.submission_id == job.submission_id


def test_a_job_error_still_means_no_verdict(world, worker_key, monkeypatch):
    """The fail-closed net must not swallow JobError (the job cannot be judged now)."""
    from verifier.errors import JobError

    job = _honest(world, worker_key)

    def unavailable(*a, **kw):
        raise JobError("policy version is not available")

    monkeypatch.setattr(world.models, "model", unavailable)
    with pytest.raises(JobError):
        world.verify(job)


def test_an_error_that_quotes_worker_bytes_still_makes_a_valid_rejection(world, worker_key, monkeypatch):
    """The error's text may quote worker data (a NUL, non-ASCII): the rejection still forms
    (a CheckResult refuses a NUL in its detail)."""
    job = _honest(world, worker_key)

    def boom(*a, **kw):
        raise ValueError("token \x00\u2028\U0001f600 broke it")

    monkeypatch.setattr(judge_mod, "check_proof", boom)
    v = world.verify(job)
    assert not v.accepted and "\x00" not in v.reason and "ValueError" in v.reason


def test_a_model_source_that_breaks_is_no_verdict_not_a_rejection(world, worker_key, monkeypatch):
    """A model that cannot be had is the verifier's problem: no verdict (JobError), and the
    honest submission is not rejected for it."""
    from verifier.errors import JobError

    job = _honest(world, worker_key)

    def broken(*a, **kw):
        raise RuntimeError("safetensors header is corrupt")

    monkeypatch.setattr(world.models, "model", broken)
    with pytest.raises(JobError, match="cannot be had"):
        world.verify(job)


class PanicException(BaseException):
    """What a Rust tokenizer raises through pyo3 when it panics (tiktoken-backed tokenizers
    on an id in their vocabulary's gap: openai/tiktoken#47): a BaseException, so an
    `except Exception` does not catch it."""


class PanickingTokenizer:
    def __init__(self, inner, bad_id):
        self.inner, self.bad_id = inner, bad_id

    def decode(self, ids, **kw):
        if self.bad_id in ids:
            raise PanicException("no entry found for key")
        return self.inner.decode(ids, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_tokenizer_panic_on_a_worker_token_is_a_rejection(world, worker_key):
    """A token id inside the model's vocabulary that the tokenizer cannot decode (and panics
    on) fails the reward check; it does not escape and stop the service loop."""
    job = _honest(world, worker_key)
    oj = open_job(job, world.coordinator.public)
    bad = oj.submission.completions[0].token_ids[0]
    world.tokenizer = PanickingTokenizer(world.tokenizer, bad)
    v = world.verify(job)
    assert not v.accepted
    assert any(c.name == "reward" and "cannot be decoded" in c.detail for c in v.checks)


def test_keyboard_interrupt_while_decoding_still_stops(world, worker_key):
    job = _honest(world, worker_key)

    class Interrupting:
        def __getattr__(self, name):
            return getattr(world.tokenizer, name)

        def decode(self, ids, **kw):
            raise KeyboardInterrupt

    world.tokenizer = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        world.verify(job)


def test_a_panic_in_a_check_is_a_rejection_and_in_the_model_source_no_verdict(world, worker_key, monkeypatch):
    from verifier.errors import JobError

    job = _honest(world, worker_key)

    def panics(*a, **kw):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    with monkeypatch.context() as m:
        m.setattr(judge_mod, "check_proof", panics)
        v = world.verify(job)
        assert not v.accepted and "PanicException" in v.reason
    monkeypatch.setattr(world.models, "model", panics)
    with pytest.raises(JobError, match="PanicException"):
        world.verify(_honest(world, worker_key))
