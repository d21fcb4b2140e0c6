"""The lease-and-data check: does the submission answer exactly the lease it names, computed
in a dtype the run allows?

The rule is `protocol.conformance.lease_problems`, the one the coordinator's intake applied
(it refused the first problem; here every `lease_and_data` problem is reported): run, signer,
lease, dtype, version range, one completion per seed, lengths, vocabulary, proofs that decode
to the completion's tokens with the required chunk size and top-k. Re-checking them here means
a verdict never rests on the coordinator's word alone, and an auditor re-running the verifier
on archived envelopes gets the same answer. Added here, what only a verifier knows: the job
must name the lease's worker and carry one reward per completion, and the declared dtype must
be one this verifier has calibrated limits for.
"""

from __future__ import annotations

from protocol import dtypes
from protocol.conformance import LEASE_AND_DATA, lease_problems
from protocol.messages import CheckResult
from verifier.checks import first_failures, result
from verifier.job import OpenedJob

NAME = LEASE_AND_DATA


def check_lease_and_data(oj: OpenedJob, *, run_id: str | None, chunk_size: int, topk: int,
                         vocab_size: int | None = None, judgeable_dtypes: tuple[str, ...] | None = None) -> CheckResult:
    """`judgeable_dtypes`: the dtypes this verifier has limits for (None: not checked)."""
    lease, sub, job = oj.lease, oj.submission, oj.job
    problems = [p.detail for p in lease_problems(lease, sub, signer_id=oj.signer_id, run_id=run_id,
                                                 vocab_size=vocab_size, chunk_size=chunk_size, topk=topk)
                if p.check == LEASE_AND_DATA]
    declared = dtypes.canonical(sub.engine.dtype)
    if judgeable_dtypes is not None and declared in lease.allowed_dtypes and declared not in judgeable_dtypes:
        problems.append(f"computed in {declared}, for which this verifier has no calibrated limits")
    if job.worker_id != lease.worker_id:
        problems.append(f"the job names worker {job.worker_id}, the lease was issued to {lease.worker_id}")
    if len(job.rewards) != len(sub.completions):
        problems.append(f"the job carries {len(job.rewards)} rewards for {len(sub.completions)} completions")
    stats = {"completions": len(sub.completions), "seeds": len(lease.seeds),
             "policy_version": sub.policy_version, "problems": len(problems)}
    return result(NAME, not problems, stats, first_failures(problems))
