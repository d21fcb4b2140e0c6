"""The reward check: rewards are recomputed from the completion text, never taken on trust.

The verifier scores the decoded completions in the scorer sandbox (`protocol.sandbox`: the
same scorer, limits and round trip as the coordinator's intake, so both compute the same
reward; worker text never reaches a scorer in the process that holds the verifier's key) and
compares with the rewards the coordinator computed (they enter the training buffer). A
completion whose scoring failed (timeout, crash, garbage) scores 0 on both sides; the reasons
are in the stats. When the sandbox itself cannot run, the check raises JobError (no verdict:
the job returns to the queue). A worker's own claim (`claimed_rewards`) is never used for anything; if a
worker sends one that is false, that is a lie about its work and the check fails.
`swarmrl audit reverify` runs this same check.
"""

from __future__ import annotations

from protocol.errors import ProtocolError
from protocol.messages import CheckResult
from protocol.sandbox import Sandbox, SandboxError, ScoreItem, shared
from verifier.checks import first_failures, result, within
from verifier.errors import JobError
from verifier.job import OpenedJob

NAME = "reward"
# A scorer's reasons may quote worker text (an exception's message): only the first few, cut,
# go into the verdict, whose size the coordinator caps (64 KiB per verdict): a group of 256
# reasons of 160 characters each (4 bytes each in UTF-8) would not fit, and a refused verdict
# leaves the job undecided, claimed and prefilled again and again.
MAX_REASONS = 8
MAX_REASON_CHARS = 160


def check_reward(oj: OpenedJob, texts: list[str | None], *, tolerance: float = 1e-6,
                 sandbox: Sandbox | None = None) -> CheckResult:
    job, sub = oj.job, oj.submission
    undecodable = [i for i, t in enumerate(texts) if t is None]
    if undecodable:
        return result(NAME, False, {}, f"completion {undecodable[0]} cannot be decoded by the run's tokenizer")
    try:
        scored = (sandbox or shared()).score(job.task_kind, [ScoreItem(t, job.task_answer, job.task_metadata) for t in texts])
    except SandboxError as exc:  # nothing was scored: no verdict now, the job goes back to the queue
        raise JobError(f"the scorer sandbox cannot score submission {job.submission_id} now: {exc}") from exc
    except ProtocolError as exc:
        return result(NAME, False, {}, f"cannot score task kind {job.task_kind!r}: {exc}")
    mine = [r.reward for r in scored]
    problems: list[str] = []
    if len(job.rewards) != len(mine):
        problems.append(f"{len(job.rewards)} coordinator rewards for {len(mine)} completions")
    else:
        bad = [i for i, (a, b) in enumerate(zip(job.rewards, mine)) if not within(abs(a - b), tolerance)]
        if bad:
            i = bad[0]
            problems.append(f"coordinator reward {job.rewards[i]} of completion {i} differs from the "
                            f"recomputed {mine[i]} ({len(bad)} completions)")
    claimed = sub.claimed_rewards
    if claimed is not None:
        if len(claimed) != len(mine):
            problems.append(f"worker claims {len(claimed)} rewards for {len(mine)} completions")
        else:
            lies = [i for i, (a, b) in enumerate(zip(claimed, mine)) if not within(abs(a - b), tolerance)]
            if lies:
                i = lies[0]
                problems.append(f"worker claims reward {claimed[i]} for completion {i}, which scores "
                                f"{mine[i]} ({len(lies)} false claims)")
    failures = [(str(i), r.reason) for i, r in enumerate(scored) if r.reason]
    stats = {"recomputed": mine, "mean": sum(mine) / len(mine) if mine else 0.0,
             "worker_claimed": claimed is not None,
             "scoring_failure_count": len(failures),
             "scoring_failures": {i: why[:MAX_REASON_CHARS] for i, why in failures[:MAX_REASONS]}}
    return result(NAME, not problems, stats, first_failures(problems))
