"""Lease conformance: does a submission answer exactly the lease it names?

The one statement of the rule. The coordinator's intake refuses a submission with the first
problem found (its 4xx names `reason`), before anything is stored; the verifier reports every
problem in its `lease_and_data` and `termination` checks, so a verdict never rests on the
coordinator's word alone, and an auditor re-running the verifier on archived envelopes gets the
same answer. Decided from the signed `Lease` and `Submission` alone (the lease's state — active,
expired, submitted — is the coordinator's, `coordinator.rules.intake.check_lease`):

    reason              check            the submission ...
    wrong_run           lease_and_data   answers a lease of another run (when `run_id` is given)
    not_your_lease      lease_and_data   is signed by another key than the lease's worker
    wrong_lease         lease_and_data   names another lease
    dtype_not_allowed   lease_and_data   was computed in a dtype the lease does not allow
    wrong_version       lease_and_data   claims a policy version outside the lease's range
    wrong_count         lease_and_data   has not exactly one completion per seed
    too_long            lease_and_data   has a completion over the lease's max_tokens
    bad_termination     lease_and_data   has an empty completion
    token_out_of_vocab  lease_and_data   has a token id outside the vocabulary (when known)
    bad_termination     termination      ends otherwise than its finish reason says: 'eos' is
                                         EOS last and nowhere before; 'length' is exactly
                                         max_tokens tokens and no EOS
    bad_proof           lease_and_data   has a proof that does not decode, covers another number
                                         of tokens, uses another chunk size or top-k than
                                         `protocol.proof`'s, or another hidden size (when known)

Problems come in this order (per completion: length, vocabulary, termination, proof), so the
first is the one intake answers. Pure: no clock, no model, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import dtypes
from protocol.errors import ProofError
from protocol.messages import Completion, Lease, Submission
from protocol.proof import DEFAULT_CHUNK_SIZE, DEFAULT_TOPK, decode_header, from_b64

LEASE_AND_DATA = "lease_and_data"
TERMINATION = "termination"


@dataclass(frozen=True)
class Problem:
    reason: str                  # machine-readable (the coordinator's 4xx `reason`)
    check: str                   # LEASE_AND_DATA or TERMINATION: the verifier check it fails
    detail: str                  # one line that says what to change
    completion: int | None = None  # index of the completion it is about, if one


def lease_problems(lease: Lease, sub: Submission, *, signer_id: str, run_id: str | None = None,
                   vocab_size: int | None = None, hidden_size: int | None = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE, topk: int = DEFAULT_TOPK,
                   first: bool = False) -> list[Problem]:
    """Every way `sub` (signed by `signer_id`) fails to answer `lease`, in the order of the module
    docstring; with `first`, at most the first one. `run_id`, `vocab_size` and `hidden_size`: what
    the caller knows (None: not checked)."""
    found: list[Problem] = []

    def add(reason: str, check: str, detail: str, completion: int | None = None) -> bool:
        found.append(Problem(reason, check, detail, completion))
        return first

    if run_id is not None and lease.run_id != run_id:
        if add("wrong_run", LEASE_AND_DATA, f"lease is for run {lease.run_id!r}, not {run_id!r}"):
            return found
    if lease.worker_id != signer_id:
        if add("not_your_lease", LEASE_AND_DATA, f"lease {lease.lease_id} was issued to {lease.worker_id}, the "
                                                 f"submission is signed by {signer_id}"):
            return found
    if sub.lease_id != lease.lease_id:
        if add("wrong_lease", LEASE_AND_DATA, f"the submission answers lease {sub.lease_id}, not lease "
                                              f"{lease.lease_id}"):
            return found
    if dtypes.canonical(sub.engine.dtype) not in lease.allowed_dtypes:
        if add("dtype_not_allowed", LEASE_AND_DATA, f"computed in {sub.engine.dtype or 'an undeclared dtype'!r}; "
                                                    f"this run allows {', '.join(lease.allowed_dtypes)} (set the "
                                                    "worker's dtype to one)"):
            return found
    if not lease.min_policy_version <= sub.policy_version <= lease.max_policy_version:
        if add("wrong_version", LEASE_AND_DATA, f"policy version {sub.policy_version} is outside the lease's range "
                                                f"[{lease.min_policy_version}, {lease.max_policy_version}]"):
            return found
    if len(sub.completions) != len(lease.seeds):
        if add("wrong_count", LEASE_AND_DATA, f"{len(sub.completions)} completions for {len(lease.seeds)} seeds "
                                              "(one per seed, in order)"):
            return found
    for i, c in enumerate(sub.completions):
        for p in _completion_problems(i, c, lease, vocab_size, hidden_size, chunk_size, topk):
            if add(p.reason, p.check, p.detail, i):
                return found
    return found


def _completion_problems(i: int, c: Completion, lease: Lease, vocab_size: int | None, hidden_size: int | None,
                         chunk_size: int, topk: int) -> list[Problem]:
    ids, n = c.token_ids, len(c.token_ids)
    max_tokens, eos = lease.sampling.max_tokens, lease.eos_token_id
    out: list[Problem] = []
    if n > max_tokens:
        out.append(Problem("too_long", LEASE_AND_DATA, f"completion {i} has {n} tokens (allowed: up to the lease's "
                                                       f"max_tokens, {max_tokens})"))
    elif n == 0:
        out.append(Problem("bad_termination", LEASE_AND_DATA, f"completion {i} has 0 tokens (allowed: 1..{max_tokens})"))
    if vocab_size is not None and n and max(ids) >= vocab_size:
        out.append(Problem("token_out_of_vocab", LEASE_AND_DATA, f"completion {i} has token id {max(ids)}, outside "
                                                                 f"the vocabulary of {vocab_size}"))
    out += [Problem("bad_termination", TERMINATION, d) for d in _termination(i, c, eos, max_tokens)]
    try:
        header = decode_header(from_b64(c.proof))
    except ProofError as exc:
        return out + [Problem("bad_proof", LEASE_AND_DATA, f"completion {i}: proof does not decode: {exc}")]
    if header.tokens != n:
        out.append(Problem("bad_proof", LEASE_AND_DATA, f"completion {i}: proof covers {header.tokens} tokens, the "
                                                        f"completion has {n}"))
    if (header.chunk_size, header.topk) != (chunk_size, topk):
        out.append(Problem("bad_proof", LEASE_AND_DATA, f"completion {i}: proof uses chunk size {header.chunk_size} "
                                                        f"and top-k {header.topk}; this run requires {chunk_size} and "
                                                        f"{topk}"))
    if hidden_size and n and header.hidden_size != hidden_size:
        out.append(Problem("bad_proof", LEASE_AND_DATA, f"completion {i}: proof is over hidden size "
                                                        f"{header.hidden_size}; the model's is {hidden_size}"))
    return out


def _termination(i: int, c: Completion, eos: int, max_tokens: int) -> list[str]:
    ids = c.token_ids
    if c.finish_reason == "eos":
        if not ids or ids[-1] != eos:
            return [f"completion {i} says 'eos' but does not end with EOS (token {eos})"]
        if eos in ids[:-1]:
            return [f"completion {i} has an EOS before its end (it must stop at the first)"]
        return []
    out = []
    if len(ids) != max_tokens:
        out.append(f"completion {i} stopped for length after {len(ids)} tokens, the lease's max_tokens is {max_tokens}")
    if eos in ids:
        out.append(f"completion {i} contains EOS but claims finish reason 'length'")
    return out
