"""One job, start to verdict: open, decode, prefill (for a full check), judge.

Collaborators: `verifier.service` calls `verify_job` for every claimed job; bench scripts,
`swarmrl audit reverify` and the red-team tests call it too, so what they measure is what the
service does. The model for a policy version comes from a `ModelSource` (the service's is
`verifier.models`, an LRU over shardcast-fetched checkpoints; tests pass a dict).

Raises JobError only when the job cannot be judged now (its policy version cannot be
had, the prefill or the scorer sandbox fails, the verifier's disk or memory gives out);
everything wrong with the submission itself ends in a rejecting verdict — and so does any
other exception raised while judging it (a check the submission broke): it is rejected with
a failed `verifier` check naming the error, never accepted, and it cannot stop the service
loop (which would stop every verifier that claims the job in turn). A version
outside the lease, or a compute dtype the run does not allow, is never fetched: the data
check rejects it without the model.

Which dtype the prefill computes in. The run decides which dtypes are allowed (the lease
carries them); the worker declares the one it used; the verifier prefills in that dtype and
judges with that dtype's limits (`verifier.thresholds`), because an honest worker and a
prefill in the same dtype agree almost bit for bit. Declaring a dtype must buy a cheater
nothing: bf16's limits are wider than fp32's (bf16 rounding noise between engines is as
large as a small weight change), so a worker that computes in fp32 with slightly changed
weights and declares bf16 would hide the change in bf16's allowance. The precision probe
closes that: for a low-precision declaration, one completion (drawn at random, so a worker
cannot compute only that one honestly) is also prefilled in fp32; a bf16 computation cannot
come closer to the fp32 values than bf16 rounding allows (`higher_precision_floor`), so a
completion that does was computed in fp32, and the whole submission is then judged by a
fp32 prefill with the fp32 limits — or rejected, if the run does not allow fp32. The probe
costs one completion's prefill (1/G of the submission's); the index is recorded in the
verdict so an audit repeats the same probe.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from protocol.errors import ProofError, ProtocolError
from protocol.identity import PublicKey
from protocol.lm import decode_completion
from protocol.messages import Verdict, VerificationJob
from verifier.checks.proof import completion_pool
from verifier.errors import JobError
from verifier.job import OpenedJob, open_job
from verifier.judge import JudgeSettings, ModelOutputs, judge, model_ready, unjudgeable_verdict, unopenable_verdict
from verifier.prefill import prefill, vocab_size
from verifier.seen import SeenLedger

FULL = "float32"
# Errors of the verifier's own machine while judging: no verdict now (JobError), the job
# returns to the queue. Any other exception is a check that the submission broke: a rejection.
_NOT_NOW = (OSError, sqlite3.Error, MemoryError)
# What still ends the work: everything else raised while judging (pyo3's PanicException, a
# BaseException, included) is a rejection or, from the model source, JobError.
_STOP = (KeyboardInterrupt, SystemExit, GeneratorExit)
log = logging.getLogger("swarmrl.verifier")
_PROBE_RNG = random.SystemRandom()


class ModelSource(Protocol):
    def model(self, version: int, dtype: str | None = None) -> Any:
        """The policy model of `version` computing in `dtype` (None: the source's default),
        ready for a forward pass (JobError if unavailable)."""


@dataclass
class Timings:
    """Seconds spent on the last job, by stage (for metrics and bench scripts)."""

    model_s: float = 0.0
    prefill_s: float = 0.0
    checks_s: float = 0.0


def _decode(tokenizer: Any, ids: list[int]) -> str | None:
    """The completion's text, or None when the tokenizer cannot decode these ids (hostile
    ids: the reward check then fails the submission instead of the verifier crashing).
    Whatever the tokenizer raises counts, pyo3's PanicException included: a Rust tokenizer
    that panics (tiktoken-backed ones do on an id in their vocabulary's gap, which the
    model's padded vocabulary still allows) raises a BaseException, which `except Exception`
    would let through to stop the service loop. Only the "stop now" ones pass."""
    try:
        return decode_completion(tokenizer, ids)
    except _STOP:
        raise
    except BaseException:  # noqa: BLE001 - see the docstring
        return None


def _model(models: ModelSource, version: int, dtype: str, job_id: str) -> Any:
    """The model from `models`; any failure to provide it is the verifier's, not the
    submission's: JobError (no verdict now), never a rejection."""
    try:
        return models.model(version, dtype)
    except (JobError, *_STOP):
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException (safetensors) included
        raise JobError(f"policy version {version} in {dtype} for submission {job_id} cannot be had: "
                       f"{type(exc).__name__}: {exc}") from exc


def _run_prefill(model: Any, oj: OpenedJob, job_id: str, only: list[int] | None = None) -> ModelOutputs:
    try:
        out = prefill(model, oj, only=only)
    except (RuntimeError, IndexError, ValueError) as exc:  # e.g. out of memory, context too long
        raise JobError(f"the prefill of submission {job_id} failed: {type(exc).__name__}: {exc}") from exc
    out.non_finite = out.non_finite or not all(bool(torch.isfinite(h).all()) for h in out.hidden)  # logits: prefill
    return out


def precision_probe(oj: OpenedJob, declared: str, outputs: ModelOutputs, models: ModelSource,
                    settings: JudgeSettings, index: int | None) -> ModelOutputs:
    """For a low-precision declaration: probe one completion with a float32 prefill, and
    return what the submission must be judged on (see the module docstring)."""
    thr = settings.for_dtype(declared)
    if thr is None or thr.higher_precision_floor <= 0 or declared == FULL or outputs.non_finite:
        return outputs
    comps = oj.submission.completions
    i = index if index is not None and 0 <= index < len(comps) else _PROBE_RNG.randrange(len(comps))
    version = oj.submission.policy_version
    model32 = _model(models, version, FULL, oj.submission_id)
    probe = _run_prefill(model32, oj, oj.submission_id, only=[i])
    try:
        pool = completion_pool(probe.hidden[0], comps[i].proof, chunk_size=settings.chunk_size, topk=settings.topk)
    except ProofError:
        return replace(outputs, probe={"completion": i, "fp32_mant_mean": None})
    distance = pool.mant_mean
    outputs = replace(outputs, probe={"completion": i, "fp32_mant_mean": round(distance, 4)
                                      if distance == distance and distance < 1e18 else None})
    if probe.non_finite or not distance < thr.higher_precision_floor:
        return outputs
    note = (f"declared {declared}, but the float32 prefill explains completion {i} to a mean mantissa error of "
            f"{distance:.3f} (< {thr.higher_precision_floor}, closer than {declared} rounding allows): computed in "
            "float32")
    if FULL in oj.lease.allowed_dtypes and settings.for_dtype(FULL) is not None:
        full = _run_prefill(model32, oj, oj.submission_id)
        return replace(full, dtype=FULL, precision_note=note + ", so judged by the float32 limits",
                       probe=outputs.probe)
    return replace(outputs, precision_violation=True, precision_note=note + ", which this run does not allow")


def verify_job(job: VerificationJob, *, coordinator_key: PublicKey, tokenizer: Any, models: ModelSource,
               settings: JudgeSettings, ledger: SeenLedger, now: float | None = None,
               timings: Timings | None = None, probe_index: int | None = None) -> Verdict:
    """`probe_index`: the completion the precision probe looks at (None: drawn at random;
    audits pass the one the original verdict recorded)."""
    t = timings if timings is not None else Timings()
    try:
        oj = open_job(job, coordinator_key)
    except ProtocolError as exc:
        return unopenable_verdict(job, exc)
    try:
        return _judge_opened(job, oj, tokenizer=tokenizer, models=models, settings=settings, ledger=ledger,
                             now=now, t=t, probe_index=probe_index)
    except (JobError, *_STOP):
        raise
    except _NOT_NOW as exc:  # the verifier's machine (disk, ledger, memory), not the submission
        raise JobError(f"submission {job.submission_id} cannot be judged now: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:  # noqa: BLE001 - a check the submission broke (a Rust panic included): fail closed
        log.exception("judging submission %s failed; it is rejected", job.submission_id)
        return unjudgeable_verdict(job, exc)


def _judge_opened(job: VerificationJob, oj: OpenedJob, *, tokenizer: Any, models: ModelSource,
                  settings: JudgeSettings, ledger: SeenLedger, now: float | None, t: Timings,
                  probe_index: int | None) -> Verdict:
    texts = [_decode(tokenizer, c.token_ids) for c in oj.submission.completions]
    outputs, vocab = None, None
    version = oj.submission.policy_version
    declared = settings.judgeable(oj)
    if job.full_check and declared and oj.lease.min_policy_version <= version <= oj.lease.max_policy_version:
        t0 = time.perf_counter()
        model = _model(models, version, declared, job.submission_id)
        t1 = time.perf_counter()
        vocab = vocab_size(model)
        if model_ready(oj, vocab):
            outputs = _run_prefill(model, oj, job.submission_id)
            outputs.dtype = declared
            outputs = precision_probe(oj, declared, outputs, models, settings, probe_index)
        t.model_s, t.prefill_s = t1 - t0, time.perf_counter() - t1
    t2 = time.perf_counter()
    verdict = judge(oj, settings, ledger, texts, outputs=outputs, vocab_size=vocab, now=now)
    t.checks_s = time.perf_counter() - t2
    return verdict
