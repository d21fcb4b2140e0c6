"""The cheap checks: what a submission must satisfy before it is stored and queued.

These run on every submission at once, in this order (the first failure is the answer):
the lease belongs to the signer, is still active and unexpired; the declared compute dtype
is one the run allows; the policy version is in
the lease's range; there is one completion per seed; every token id is in the vocabulary;
every completion respects max_tokens and ends as its finish reason says (EOS last and
nowhere else, or exactly max_tokens without EOS); every proof is base64 whose decoded size
fits the completion's length. The model-based checks (proofs, sampling) are the verifier's.

All functions are pure; the caller supplies the lease facts, the clock and the vocabulary.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.errors import Conflict, Forbidden, Gone, Invalid
from protocol import dtypes
from protocol.messages import Completion, Submission
from protocol.proof import DEFAULT_CHUNK_SIZE, DEFAULT_TOPK, proof_size_bounds

CHUNK_TOKENS, TOPK = DEFAULT_CHUNK_SIZE, DEFAULT_TOPK   # the only proof layout a run accepts

@dataclass(frozen=True)
class LeaseFacts:
    """What intake needs to know about the lease a submission answers."""

    lease_id: str
    worker_id: str
    status: str            # active | submitted | released | expired | revoked
    expires_at: float
    min_version: int
    max_version: int
    n_seeds: int
    max_tokens: int
    eos_token_id: int


def check_lease(lease: LeaseFacts, signer_id: str, now: float) -> None:
    if lease.worker_id != signer_id:
        raise Forbidden("not_your_lease", f"lease {lease.lease_id} was issued to another worker")
    if lease.status == "submitted":
        raise Conflict("duplicate_submission", f"lease {lease.lease_id} was already submitted")
    if lease.status != "active":
        raise Gone("lease_closed", f"lease {lease.lease_id} is {lease.status}; lease new work")
    if now > lease.expires_at:
        raise Gone("lease_expired", f"lease {lease.lease_id} expired {now - lease.expires_at:.0f} s ago; "
                                    "lease new work and submit sooner")


def default_proof_check(blob: bytes, n_tokens: int) -> None:
    """Size plausibility of a proof blob (the verifier decodes it fully)."""
    lo, hi = proof_size_bounds(n_tokens)
    if not lo <= len(blob) <= hi or not blob:
        raise Invalid("bad_proof", f"a proof for {n_tokens} tokens has {lo}..{hi} bytes, got {len(blob)}")


ProofCheck = Callable[[bytes, int], None]


def codec_proof_check(hidden_size: int | None) -> ProofCheck:
    """The check intake uses: the blob decodes as a `protocol.proof` container (structure
    only; the verifier compares the values), covers exactly the completion's tokens, uses
    the protocol's chunk size and top-k, and the model's hidden size when it is known."""
    from protocol.errors import ProofError
    from protocol.proof import decode_header

    def check(blob: bytes, n_tokens: int) -> None:
        try:
            h = decode_header(blob)
        except ProofError as exc:
            raise Invalid("bad_proof", f"proof does not decode: {exc}") from None
        if h.tokens != n_tokens:
            raise Invalid("bad_proof", f"proof covers {h.tokens} tokens, the completion has {n_tokens}")
        if (h.chunk_size, h.topk) != (CHUNK_TOKENS, TOPK):
            raise Invalid("bad_proof", f"proof uses chunk size {h.chunk_size} and top-k {h.topk}; this run "
                                       f"requires {CHUNK_TOKENS} and {TOPK}")
        if hidden_size and n_tokens and h.hidden_size != hidden_size:
            raise Invalid("bad_proof", f"proof is over hidden size {h.hidden_size}; the model's is {hidden_size}")

    return check


def check_completions(sub: Submission, lease: LeaseFacts, vocab_size: int,
                      proof_check: ProofCheck = default_proof_check,
                      allowed_dtypes: tuple[str, ...] | None = None) -> int:
    """Raise Invalid unless the completions fit the lease; return the total token count.
    `allowed_dtypes`: the run's compute dtypes (the declared one must be among them)."""
    if allowed_dtypes is not None and dtypes.canonical(sub.engine.dtype) not in allowed_dtypes:
        raise Invalid("dtype_not_allowed", f"computed in {sub.engine.dtype or 'an undeclared dtype'!r}; this run "
                                           f"allows {', '.join(allowed_dtypes)} (set the worker's dtype to one)")
    if not lease.min_version <= sub.policy_version <= lease.max_version:
        raise Invalid("wrong_version", f"policy version {sub.policy_version} is outside this lease's "
                                       f"range [{lease.min_version}, {lease.max_version}]")
    if len(sub.completions) != lease.n_seeds:
        raise Invalid("wrong_count", f"the lease has {lease.n_seeds} seeds, the submission "
                                     f"{len(sub.completions)} completions (one per seed, in order)")
    total = 0
    for i, c in enumerate(sub.completions):
        _check_one(i, c, lease, vocab_size, proof_check)
        total += len(c.token_ids)
    return total


def _check_one(i: int, c: Completion, lease: LeaseFacts, vocab_size: int, proof_check: ProofCheck) -> None:
    ids = c.token_ids
    n = len(ids)
    if n > lease.max_tokens:
        raise Invalid("too_long", f"completion {i} has {n} tokens, max_tokens is {lease.max_tokens}")
    if n and max(ids) >= vocab_size:
        raise Invalid("token_out_of_vocab", f"completion {i} has token id {max(ids)}; the vocabulary has {vocab_size}")
    eos = lease.eos_token_id
    if c.finish_reason == "eos":
        if n == 0 or ids[-1] != eos:
            raise Invalid("bad_termination", f"completion {i} says 'eos' but does not end with EOS ({eos})")
        if eos in ids[:-1]:
            raise Invalid("bad_termination", f"completion {i} goes on after an EOS token")
    else:
        if n != lease.max_tokens:
            raise Invalid("bad_termination", f"completion {i} says 'length' but has {n} of {lease.max_tokens} tokens")
        if eos in ids:
            raise Invalid("bad_termination", f"completion {i} says 'length' but contains EOS")
    try:
        blob = base64.b64decode(c.proof, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("bad_proof", f"completion {i}: proof is not valid base64") from None
    proof_check(blob, n)


def content_hash(completions: list[Completion]) -> str:
    """Identity of a group's content (tokens, proofs, finish reasons), for duplicate detection."""
    h = hashlib.sha256()
    for c in completions:
        h.update(len(c.token_ids).to_bytes(4, "big"))
        h.update(array("q", c.token_ids).tobytes())
        h.update(c.finish_reason.encode())
        h.update(b"|")
        h.update(c.proof.encode())
        h.update(b"\n")
    return h.hexdigest()
