"""The reward check: rewards are recomputed from the completion text, never taken on trust.

The verifier scores each decoded completion with `protocol.tasks.score` (the coordinator's
scorer) and compares with the rewards the coordinator computed (they enter the training
buffer). A worker's own claim (`claimed_rewards`) is never used for anything; if a worker
sends one that is false, that is a lie about its work and the check fails.
"""

from __future__ import annotations

from protocol.errors import ProtocolError
from protocol.messages import CheckResult
from protocol.tasks import score
from verifier.checks import first_failures, result, within
from verifier.job import OpenedJob

NAME = "reward"


def check_reward(oj: OpenedJob, texts: list[str | None], *, tolerance: float = 1e-6) -> CheckResult:
    job, sub = oj.job, oj.submission
    undecodable = [i for i, t in enumerate(texts) if t is None]
    if undecodable:
        return result(NAME, False, {}, f"completion {undecodable[0]} cannot be decoded by the run's tokenizer")
    try:
        mine = [float(score(job.task_kind, job.task_answer, t)) for t in texts]
    except ProtocolError as exc:
        return result(NAME, False, {}, f"cannot score task kind {job.task_kind!r}: {exc}")
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
    stats = {"recomputed": mine, "mean": sum(mine) / len(mine) if mine else 0.0,
             "worker_claimed": claimed is not None}
    return result(NAME, not problems, stats, first_failures(problems))
