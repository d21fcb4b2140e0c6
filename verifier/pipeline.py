"""One job, start to verdict: open, decode, prefill (for a full check), judge.

Collaborators: `verifier.service` calls `verify_job` for every claimed job; bench scripts
and the red-team tests call it too, so what they measure is what the service does. The
model for a policy version comes from a `ModelSource` (the service's is `verifier.models`,
an LRU over shardcast-fetched checkpoints; tests pass a dict).

Raises JobError only when the job cannot be judged now (its policy version cannot be
had); everything wrong with the submission itself ends in a rejecting verdict. A version
outside the lease is never fetched: the data check rejects it without the model.

The prefill computes in the dtype the worker declares (`EngineInfo.dtype`) when it is one of
`settings.match_dtypes`. Measured on the tiny model: a bf16 worker's KV-cache decode and a
bf16 prefill agree almost bit for bit (pooled mantissa error <= 0.013), while bf16 against
an fp32 prefill differs by ~1 ulp on average, which is as large as the effect of a small
weight change. Matching the dtype lets the thresholds be tight for every honest worker;
declaring another dtype gains a cheater nothing, because every matched comparison is tight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.errors import ProtocolError
from protocol.identity import PublicKey
from protocol.lm import decode_completion
from protocol.messages import Verdict, VerificationJob
from verifier.errors import JobError
from verifier.job import open_job
from verifier.judge import JudgeSettings, judge, model_ready, unopenable_verdict
from verifier.prefill import prefill, vocab_size
from verifier.seen import SeenLedger


class ModelSource(Protocol):
    def model(self, version: int, dtype: str | None = None) -> Any:
        """The policy model of `version` computing in `dtype` (None: the source's default),
        ready for a forward pass (JobError if unavailable)."""


_CANONICAL = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
              "float16": "float16", "fp16": "float16"}


def prefill_dtype(declared: str, allowed: tuple[str, ...]) -> str | None:
    """The dtype the verifier computes in for a worker that declares `declared`: the same one
    when it is allowed, else None (the verifier's configured dtype)."""
    name = _CANONICAL.get(declared.strip().lower().replace("torch.", ""))
    return name if name in allowed else None


@dataclass
class Timings:
    """Seconds spent on the last job, by stage (for metrics and bench scripts)."""

    model_s: float = 0.0
    prefill_s: float = 0.0
    checks_s: float = 0.0


def _decode(tokenizer: Any, ids: list[int]) -> str | None:
    """The completion's text, or None when the tokenizer cannot decode these ids (hostile
    ids: the reward check then fails the submission instead of the verifier crashing)."""
    try:
        return decode_completion(tokenizer, ids)
    except (OverflowError, ValueError, IndexError, TypeError, KeyError):
        return None


def verify_job(job: VerificationJob, *, coordinator_key: PublicKey, tokenizer: Any, models: ModelSource,
               settings: JudgeSettings, ledger: SeenLedger, now: float | None = None,
               timings: Timings | None = None) -> Verdict:
    t = timings if timings is not None else Timings()
    try:
        oj = open_job(job, coordinator_key)
    except ProtocolError as exc:
        return unopenable_verdict(job, exc)
    texts = [_decode(tokenizer, c.token_ids) for c in oj.submission.completions]
    outputs, vocab = None, None
    version = oj.submission.policy_version
    if job.full_check and oj.lease.min_policy_version <= version <= oj.lease.max_policy_version:
        t0 = time.perf_counter()
        dtype = prefill_dtype(oj.submission.engine.dtype, settings.match_dtypes)
        model = models.model(version, dtype)
        t1 = time.perf_counter()
        vocab = vocab_size(model)
        if model_ready(oj, vocab):
            try:
                outputs = prefill(model, oj)
            except (RuntimeError, IndexError, ValueError) as exc:  # e.g. out of memory, context too long
                raise JobError(f"the prefill of submission {job.submission_id} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        t.model_s, t.prefill_s = t1 - t0, time.perf_counter() - t1
    t2 = time.perf_counter()
    verdict = judge(oj, settings, ledger, texts, outputs=outputs, vocab_size=vocab, now=now)
    t.checks_s = time.perf_counter() - t2
    return verdict
