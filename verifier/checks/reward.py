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

A disagreement between the coordinator's reward and the recomputed one is a *dispute*, not a
lie: the worker sends token ids, and both sides score the same text with the same scorer and
limits. It happens when a scorer's wall clock (`protocol.sandbox.Limits.item_timeout_s`) runs
out on one side's busier machine and not on the other's, or when a scorer is not
deterministic. The check still fails (the group must not be trained on a reward two scorers
disagree on), but its stats say so (`disputed`, `worker_fault`), and `verifier.judge` turns
a submission whose only failure is a dispute into no verdict (when the verifier's own scoring
failed: it may succeed on a later try, so a first such item is scored again at once, and if
it fails again the job goes back to the queue) or into a rejection that is not the worker's
fault (`protocol.messages.Verdict.worker_fault`: no ban). Before, each was a rejection, and
a rejection bans: an honest worker was banned because the verifier's machine was slow.
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
    box = sandbox or shared()
    items = [ScoreItem(t, job.task_answer, job.task_metadata) for t in texts]
    try:
        scored = box.score(job.task_kind, items)
        scored = _rescored_failures(box, job.task_kind, items, scored, job.rewards, tolerance)
    except SandboxError as exc:  # nothing was scored: no verdict now, the job goes back to the queue
        raise JobError(f"the scorer sandbox cannot score submission {job.submission_id} now: {exc}") from exc
    except ProtocolError as exc:
        return result(NAME, False, {}, f"cannot score task kind {job.task_kind!r}: {exc}")
    mine = [r.reward for r in scored]
    lies: list[str] = []
    disputes: list[str] = []
    disputed: list[int] = []
    failed_here = 0   # disputed completions whose scoring failed here: another try may settle them
    if len(job.rewards) != len(mine):
        lies.append(f"{len(job.rewards)} coordinator rewards for {len(mine)} completions")
    else:
        disputed = [i for i, (a, b) in enumerate(zip(job.rewards, mine)) if not within(abs(a - b), tolerance)]
        if disputed:
            i = disputed[0]
            failed_here = sum(1 for j in disputed if scored[j].reason)
            disputes.append(f"coordinator reward {job.rewards[i]} of completion {i} differs from the recomputed "
                            f"{mine[i]} ({len(disputed)} completions; {failed_here} of them failed to score here): "
                            "a dispute between the two scorings, not the worker's doing")
    claimed = sub.claimed_rewards
    if claimed is not None:
        if len(claimed) != len(mine):
            lies.append(f"worker claims {len(claimed)} rewards for {len(mine)} completions")
        else:
            false = [i for i, (a, b) in enumerate(zip(claimed, mine)) if not within(abs(a - b), tolerance)]
            if false:
                i = false[0]
                lies.append(f"worker claims reward {claimed[i]} for completion {i}, which scores "
                            f"{mine[i]} ({len(false)} false claims)")
    failures = [(str(i), r.reason) for i, r in enumerate(scored) if r.reason]
    stats = {"recomputed": mine, "mean": sum(mine) / len(mine) if mine else 0.0,
             "worker_claimed": claimed is not None,
             "scoring_failure_count": len(failures),
             "scoring_failures": {i: why[:MAX_REASON_CHARS] for i, why in failures[:MAX_REASONS]}}
    if disputed:
        stats["disputed"] = disputed[:MAX_REASONS]
        stats["disputed_count"] = len(disputed)
        stats["disputed_here"] = failed_here
        stats["worker_fault"] = bool(lies)
    problems = lies + disputes
    return result(NAME, not problems, stats, first_failures(problems))


def _rescored_failures(box: Sandbox, kind: str, items: list[ScoreItem], scored: list, rewards: list[float],
                       tolerance: float) -> list:
    """`scored`, with the completions whose scoring failed here and whose reward differs from the
    coordinator's scored once more (a wall clock that ran out on a busy moment): a dispute that
    a second try settles costs one batch, not the job's claim and a re-judging later."""
    if len(rewards) != len(scored):
        return scored
    again = [i for i, (r, c) in enumerate(zip(scored, rewards)) if r.reason and not within(abs(r.reward - c), tolerance)]
    if not again:
        return scored
    retried = box.score(kind, [items[i] for i in again])
    out = list(scored)
    for i, r in zip(again, retried):
        out[i] = r
    return out
