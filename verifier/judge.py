"""From an opened job (and, for a full check, the prefill's outputs) to a `Verdict`.

Collaborators: `verifier.pipeline` opens the job, decodes the completions, runs the prefill
(`verifier.prefill`) in the dtype the worker computed in when the coordinator asked for a
full check, and posts what `judge` returns. `judge` itself is pure apart from the replay
ledger it records into.

Cheap checks (lease_and_data — which includes "the declared compute dtype is one the run
allows and the verifier has limits for" —, termination without the model, reward, replay)
run on every job; the model checks (proof, sampling, and termination's EOS test) run when
`outputs` is given. A submission is accepted only if every check that ran passed. The
verdict's `full_check` says whether the model checks were asked for; when the data is too
broken to run the model on (wrong counts, token ids outside the vocabulary, a dtype the
run does not allow) the submission is rejected on the cheap checks alone.

A reward dispute (the coordinator's and the verifier's scorings of the same text disagree,
`verifier.checks.reward`) is no doing of the worker: when it is the submission's only failure
the verdict is a rejection with `worker_fault` False (no ban), or, when the verifier's own
scorer failed on it, no verdict now (`only_a_dispute`).

Failing closed: a prefill that produced a non-finite hidden state or logit is a rejection
(proof check, reason "non-finite"), never something to compare against; so are outputs that
do not cover every completion (`covers`: an uncovered completion was not checked); a submission whose
values the float32 prefill explains better than any bf16 computation could is judged by the
float32 limits whatever it declared (`ModelOutputs.precision_note`), or rejected when the run
does not allow float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from protocol import dtypes
from protocol.envelope import envelope_digest
from protocol.messages import NO_FAULT_CHECKS, CheckResult, Verdict, VerificationJob
from protocol.proof import DEFAULT_CHUNK_SIZE, DEFAULT_TOPK
from protocol.sandbox import Sandbox
from verifier.checks import NON_FINITE, result
from verifier.checks.data import check_lease_and_data
from verifier.checks.proof import NAME as PROOF, check_proof
from verifier.checks.replay import check_replay
from verifier.checks.reward import check_reward
from verifier.checks.sampling import NAME as SAMPLING, PositionScores, check_sampling, sampling_gaps_and_ties
from verifier.checks.termination import check_termination
from verifier.errors import JobError
from verifier.job import OpenedJob
from verifier.seen import SeenLedger
from verifier.thresholds import CALIBRATED, Thresholds


@dataclass(frozen=True)
class JudgeSettings:
    run_id: str | None
    limits: Mapping[str, Thresholds] = field(default_factory=lambda: dict(CALIBRATED))
    chunk_size: int = DEFAULT_CHUNK_SIZE
    topk: int = DEFAULT_TOPK
    # The run's vocabulary (the model's embedding rows), known without loading the model, so the
    # cheap path checks token ids too: the coordinator's intake refuses ids outside it, but a
    # verdict must not rest on the coordinator's word (a tokenizer decodes such ids silently).
    vocab_size: int | None = None
    # The scorer sandbox the reward check recomputes rewards in (None: the process's shared one,
    # `protocol.sandbox.shared`); tests pass one with other limits.
    sandbox: Sandbox | None = None

    def for_dtype(self, dtype: str) -> Thresholds | None:
        """The limits for a computation in `dtype`, or None when it has none (not calibrated)."""
        name = dtypes.canonical(dtype)
        return self.limits.get(name) if name else None

    def judgeable(self, oj: OpenedJob) -> str | None:
        """The canonical dtype the worker declares when the run allows it and it has limits, else None."""
        name = dtypes.canonical(oj.submission.engine.dtype)
        if name is None or name not in oj.lease.allowed_dtypes or name not in self.limits:
            return None
        return name


@dataclass
class ModelOutputs:
    """The verifier's prefill of one submission: per completion, (T, H) final hidden states
    and (T, V) logits at the positions that chose its tokens, computed in `dtype`. The
    verifier's own prefill gives each completion's logits already reduced, chunk by chunk, to
    the sampling check's `PositionScores` (`verifier.prefill`); tests may pass logits.

    `non_finite`: the prefill produced Inf/NaN somewhere (nothing is compared then).
    `precision_note`: why the judged dtype is not the declared one (the float32 prefill
    explained the values better than bf16 could), or why that makes the submission fail
    (`precision_violation`). `probe`: the precision probe's completion index and its mean
    mantissa error against the float32 prefill (recorded so audits repeat the same probe)."""

    hidden: list[torch.Tensor]
    logits: list[torch.Tensor | PositionScores]
    dtype: str = ""
    non_finite: bool = False
    precision_note: str = ""
    precision_violation: bool = False
    probe: dict | None = None


def model_ready(oj: OpenedJob, vocab_size: int) -> bool:
    """Whether the submission is well formed enough to run the model on."""
    comps = oj.submission.completions
    return (len(comps) == len(oj.lease.seeds) and all(c.token_ids for c in comps)
            and all(len(c.token_ids) <= oj.lease.sampling.max_tokens for c in comps)
            and all(max(c.token_ids) < vocab_size for c in comps))


def judge(oj: OpenedJob, settings: JudgeSettings, ledger: SeenLedger, texts: list[str | None], *,
          outputs: ModelOutputs | None = None, vocab_size: int | None = None,
          now: float | None = None) -> Verdict:
    """`vocab_size`: the loaded model's (a full check); else the settings' (the cheap path)."""
    checks: list[CheckResult] = [
        check_lease_and_data(oj, run_id=settings.run_id, chunk_size=settings.chunk_size, topk=settings.topk,
                             vocab_size=vocab_size if vocab_size is not None else settings.vocab_size,
                             judgeable_dtypes=tuple(settings.limits)),
    ]
    thr = settings.for_dtype(outputs.dtype) if outputs is not None else None
    if outputs is not None and thr is None:  # a pipeline error: never judge without limits
        raise ValueError(f"no limits for a prefill in {outputs.dtype!r}")
    gaps = ties = None
    if (outputs is not None and thr is not None and covers(oj, outputs) and not outputs.non_finite
            and not outputs.precision_violation):
        gaps, ties = sampling_gaps_and_ties(outputs.logits, oj.completions, list(oj.lease.seeds),
                                            oj.lease.sampling.temperature, rounding=thr.sampling_rel_tolerance)
    last_gaps = None
    if gaps is not None:
        last_gaps = [float(g[-1]) if c.finish_reason == "eos" and g.numel() else None
                     for g, c in zip(gaps, oj.submission.completions)]
    tolerance = thr.sampling_tolerance if thr is not None else 0.0
    checks.append(check_termination(oj, last_gaps=last_gaps, tolerance=tolerance))
    checks.append(check_reward(oj, texts, tolerance=(thr or CALIBRATED["float32"]).reward_tolerance,
                               sandbox=settings.sandbox))
    checks.append(check_replay(oj, ledger, now=now))
    if outputs is not None and thr is not None:
        checks.extend(model_checks(oj, settings, outputs, thr, gaps, ties))
    return make_verdict(oj.job, checks, worker_fault=not only_a_dispute(oj.job, checks))


def only_a_dispute(job: VerificationJob, checks: list[CheckResult]) -> bool:
    """Whether the submission's only failure is a reward dispute (`verifier.checks.reward`): the
    coordinator's and the verifier's scorings of the same text disagree and nothing else failed.
    Then the worker is not at fault: True (a rejection without a ban). When the verifier's own
    scoring failed on a disputed completion (even after its second try), JobError instead: no
    verdict now, the job goes back to the queue for a later try (after
    `verification_max_claims` tries the coordinator drops it, without a ban). Any other failed
    check decides as it always did, so a cheater cannot hide behind a dispute."""
    failed = [c for c in checks if not c.passed]
    if not failed or any(c.name not in NO_FAULT_CHECKS or c.stats.get("worker_fault", True) for c in failed):
        return False
    if any(c.stats.get("disputed_here") for c in failed):
        raise JobError(f"submission {job.submission_id}: the verifier's scorer failed on a completion whose reward "
                       f"the coordinator computed ({failed[0].detail}); left for a later try")
    return True


def covers(oj: OpenedJob, outputs: ModelOutputs) -> bool:
    """Whether `outputs` holds the prefill of every completion (a completion it does not cover
    was not checked, so it cannot count as passed)."""
    n = len(oj.submission.completions)
    return len(outputs.hidden) == n and len(outputs.logits) == n


def model_checks(oj: OpenedJob, settings: JudgeSettings, outputs: ModelOutputs, thr: Thresholds,
                 gaps: list[torch.Tensor] | None, ties: list[int] | None) -> list[CheckResult]:
    """The proof and sampling checks, or their failures when the prefill cannot be compared."""
    extra = {"prefill_dtype": outputs.dtype, "declared_dtype": dtypes.canonical(oj.submission.engine.dtype) or ""}
    if outputs.probe is not None:
        extra["precision_probe"] = outputs.probe
    if outputs.non_finite:
        why = (f"{NON_FINITE} values (NaN/Inf) in the verifier's {outputs.dtype} prefill of this submission: "
               "it cannot be verified, so it is not accepted")
        return [result(PROOF, False, extra, why), result(SAMPLING, False, {}, f"{NON_FINITE} logits; not checked")]
    if outputs.precision_violation:
        return [result(PROOF, False, extra, outputs.precision_note)]
    if not covers(oj, outputs):
        why = (f"the verifier's prefill covers {len(outputs.hidden)} hidden-state and {len(outputs.logits)} logit "
               f"sets for {len(oj.submission.completions)} completions: not judged, so not accepted")
        return [result(PROOF, False, extra, why), result(SAMPLING, False, {}, why)]
    proof = check_proof(oj, outputs.hidden, thr, chunk_size=settings.chunk_size, topk=settings.topk)
    stats = {**proof.stats, **extra}
    detail = proof.detail
    if outputs.precision_note:
        stats["precision_note"] = outputs.precision_note
        detail = f"{detail} ({outputs.precision_note})" if detail else ""
    assert gaps is not None
    return [result(PROOF, proof.passed, stats, detail),
            check_sampling(oj, gaps, tolerance=thr.sampling_tolerance, ties=ties)]


def make_verdict(job: VerificationJob, checks: list[CheckResult], *, worker_fault: bool = True) -> Verdict:
    failed = [c for c in checks if not c.passed]
    reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    if failed and not worker_fault:
        reason = "not counted against the worker: " + reason
    if len(reason) > 2000:
        reason = reason[:1997] + "..."
    return Verdict(submission_id=job.submission_id, accepted=not failed, full_check=job.full_check,
                   checks=checks, reason=reason, submission_sha256=envelope_digest(job.submission),
                   lease_sha256=envelope_digest(job.lease), worker_fault=worker_fault or not failed)


def unjudgeable_verdict(job: VerificationJob, error: Exception) -> Verdict:
    """A submission whose judging raised (anything but JobError) is rejected: what cannot be
    judged is not accepted. The error is named (escaped: it may quote worker data)."""
    what = f"{type(error).__name__}: {error}"[:500]
    what = what.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")
    return make_verdict(job, [result("verifier", False, {}, f"the verifier could not judge this submission ({what}); "
                                                             "it is not accepted")])


def unopenable_verdict(job: VerificationJob, error: Exception) -> Verdict:
    """A job whose envelopes do not verify is rejected: nothing in it can be trusted."""
    return make_verdict(job, [result("signatures", False, {}, str(error))])
