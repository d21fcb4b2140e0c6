"""From an opened job (and, for a full check, the prefill's outputs) to a `Verdict`.

Collaborators: `verifier.service` opens the job, decodes the completions, runs the prefill
(`verifier.prefill`) when the coordinator asked for a full check, and posts what `judge`
returns. `judge` itself is pure apart from the replay ledger it records into.

Cheap checks (lease_and_data, termination without the model, reward, replay) run on every
job; the model checks (proof, sampling, and termination's EOS test) run when `outputs` is
given. A submission is accepted only if every check that ran passed. The verdict's
`full_check` says whether the model checks were asked for; when the data is too broken to
run the model on (wrong counts, token ids outside the vocabulary) the submission is
rejected on the cheap checks alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.envelope import envelope_digest
from protocol.messages import CheckResult, Verdict, VerificationJob
from protocol.proof import DEFAULT_CHUNK_SIZE, DEFAULT_TOPK
from verifier.checks import result
from verifier.checks.data import check_lease_and_data
from verifier.checks.proof import check_proof
from verifier.checks.replay import check_replay
from verifier.checks.reward import check_reward
from verifier.checks.sampling import check_sampling, sampling_gaps_and_ties
from verifier.checks.termination import check_termination
from verifier.job import OpenedJob
from verifier.seen import SeenLedger
from verifier.thresholds import LOW_PRECISION, Thresholds


@dataclass(frozen=True)
class JudgeSettings:
    run_id: str | None
    thresholds: Thresholds = Thresholds()
    low_precision: Thresholds = LOW_PRECISION
    chunk_size: int = DEFAULT_CHUNK_SIZE
    topk: int = DEFAULT_TOPK
    match_dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")

    def for_dtype(self, prefill_dtype: str) -> Thresholds:
        """The limits for a prefill computed in `prefill_dtype`."""
        return self.low_precision if prefill_dtype in ("bfloat16", "float16") else self.thresholds


@dataclass
class ModelOutputs:
    """The verifier's prefill of one submission: per completion, (T, H) final hidden states
    and (T, V) logits at the positions that chose its tokens."""

    hidden: list[torch.Tensor]
    logits: list[torch.Tensor]
    dtype: str = ""


def model_ready(oj: OpenedJob, vocab_size: int) -> bool:
    """Whether the submission is well formed enough to run the model on."""
    comps = oj.submission.completions
    return (len(comps) == len(oj.lease.seeds) and all(c.token_ids for c in comps)
            and all(len(c.token_ids) <= oj.lease.sampling.max_tokens for c in comps)
            and all(max(c.token_ids) < vocab_size for c in comps))


def judge(oj: OpenedJob, settings: JudgeSettings, ledger: SeenLedger, texts: list[str | None], *,
          outputs: ModelOutputs | None = None, vocab_size: int | None = None,
          now: float | None = None) -> Verdict:
    thr = settings.for_dtype(outputs.dtype if outputs is not None else "")
    checks: list[CheckResult] = [
        check_lease_and_data(oj, run_id=settings.run_id, chunk_size=settings.chunk_size, topk=settings.topk,
                             vocab_size=vocab_size),
    ]
    gaps = ties = None
    if outputs is not None:
        gaps, ties = sampling_gaps_and_ties(outputs.logits, oj.completions, list(oj.lease.seeds),
                                            oj.lease.sampling.temperature, rounding=thr.sampling_rel_tolerance)
    last_gaps = None
    if gaps is not None:
        last_gaps = [float(g[-1]) if c.finish_reason == "eos" and g.numel() else None
                     for g, c in zip(gaps, oj.submission.completions)]
    checks.append(check_termination(oj, last_gaps=last_gaps, tolerance=thr.sampling_tolerance))
    checks.append(check_reward(oj, texts, tolerance=thr.reward_tolerance))
    checks.append(check_replay(oj, ledger, now=now))
    if outputs is not None and gaps is not None:
        proof = check_proof(oj, outputs.hidden, thr, chunk_size=settings.chunk_size, topk=settings.topk)
        checks.append(proof.model_copy(update={"stats": {**proof.stats, "prefill_dtype": outputs.dtype}}))
        checks.append(check_sampling(oj, gaps, tolerance=thr.sampling_tolerance, ties=ties))
    return make_verdict(oj.job, checks)


def make_verdict(job: VerificationJob, checks: list[CheckResult]) -> Verdict:
    failed = [c for c in checks if not c.passed]
    reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    if len(reason) > 2000:
        reason = reason[:1997] + "..."
    return Verdict(submission_id=job.submission_id, accepted=not failed, full_check=job.full_check,
                   checks=checks, reason=reason, submission_sha256=envelope_digest(job.submission),
                   lease_sha256=envelope_digest(job.lease))


def unopenable_verdict(job: VerificationJob, error: Exception) -> Verdict:
    """A job whose envelopes do not verify is rejected: nothing in it can be trusted."""
    return make_verdict(job, [result("signatures", False, {}, str(error))])
