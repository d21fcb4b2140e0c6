"""The lease-and-data check: does the submission answer exactly the lease it names, computed
in a dtype the run allows?

Everything here is decided from the signed lease and the signed submission alone, so it runs
on every job (the coordinator ran the same rules at intake; re-checking them here means a
verdict never rests on the coordinator's word alone, and an auditor re-running the verifier
on archived envelopes gets the same answer).
"""

from __future__ import annotations

from protocol import dtypes
from protocol.errors import ProofError
from protocol.proof import decode_header, from_b64
from protocol.messages import CheckResult
from verifier.checks import first_failures, result
from verifier.job import OpenedJob

NAME = "lease_and_data"


def check_lease_and_data(oj: OpenedJob, *, run_id: str | None, chunk_size: int, topk: int,
                         vocab_size: int | None = None, judgeable_dtypes: tuple[str, ...] | None = None) -> CheckResult:
    """`judgeable_dtypes`: the dtypes this verifier has limits for (None: not checked)."""
    lease, sub, job = oj.lease, oj.submission, oj.job
    problems: list[str] = []
    declared = dtypes.canonical(sub.engine.dtype)
    if declared not in lease.allowed_dtypes:
        problems.append(f"computed in {sub.engine.dtype or 'an undeclared dtype'!r}; this run allows "
                        f"{', '.join(lease.allowed_dtypes)}")
    elif judgeable_dtypes is not None and declared not in judgeable_dtypes:
        problems.append(f"computed in {declared}, for which this verifier has no calibrated limits")
    if run_id is not None and lease.run_id != run_id:
        problems.append(f"lease is for run {lease.run_id!r}, not {run_id!r}")
    if not (job.worker_id == lease.worker_id == oj.signer_id):
        problems.append(f"lease was issued to {lease.worker_id}, the submission is signed by {oj.signer_id}"
                        f" (job names {job.worker_id})")
    if sub.lease_id != lease.lease_id:
        problems.append(f"submission answers lease {sub.lease_id}, the job's lease is {lease.lease_id}")
    if not lease.min_policy_version <= sub.policy_version <= lease.max_policy_version:
        problems.append(f"policy version {sub.policy_version} is outside the lease's "
                        f"[{lease.min_policy_version}, {lease.max_policy_version}]")
    if len(sub.completions) != len(lease.seeds):
        problems.append(f"{len(sub.completions)} completions for {len(lease.seeds)} seeds")
    if len(job.rewards) != len(sub.completions):
        problems.append(f"the job carries {len(job.rewards)} rewards for {len(sub.completions)} completions")
    max_tokens = lease.sampling.max_tokens
    for i, c in enumerate(sub.completions):
        n = len(c.token_ids)
        if n == 0 or n > max_tokens:
            problems.append(f"completion {i} has {n} tokens (allowed: 1..{max_tokens})")
        if vocab_size is not None and any(t >= vocab_size for t in c.token_ids):
            problems.append(f"completion {i} has a token id outside the vocabulary of {vocab_size}")
        try:
            header = decode_header(from_b64(c.proof))
        except ProofError as exc:
            problems.append(f"completion {i}: {exc}")
            continue
        if (header.chunk_size, header.topk) != (chunk_size, topk):
            problems.append(f"completion {i}: proof uses chunk size {header.chunk_size} and top-k "
                            f"{header.topk}, required {chunk_size} and {topk}")
        if header.tokens != n:
            problems.append(f"completion {i}: proof covers {header.tokens} tokens, the completion has {n}")
    stats = {"completions": len(sub.completions), "seeds": len(lease.seeds),
             "policy_version": sub.policy_version, "problems": len(problems)}
    return result(NAME, not problems, stats, first_failures(problems))
