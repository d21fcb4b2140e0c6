"""The cheap checks: what a submission must satisfy before it is stored and queued.

These run on every submission at once, in this order (the first failure is the answer): the
lease belongs to the signer, is still active and unexpired (`check_lease`, on the lease's
state in the database); then the submission conforms to the signed lease
(`check_completions`: the one rule of `protocol.conformance`, which the verifier applies too —
dtype, version range, one completion per seed, lengths, vocabulary, termination, and proofs
that decode to the completion's tokens with the protocol's chunk size, top-k and the model's
hidden size). The model-based checks (proofs against a prefill, sampling) are the verifier's.

All functions are pure; the caller supplies the lease, its state, the clock and the vocabulary.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

from coordinator.errors import Conflict, Forbidden, Gone, Invalid
from protocol.conformance import lease_problems
from protocol.messages import Completion, Lease, Submission


def check_lease(state: Any, signer_id: str, now: float) -> None:
    """`state`: the lease's row (lease_id, worker_id, status: active | submitted | released |
    expired | revoked | duplicate, expires_at)."""
    if state.worker_id != signer_id:
        raise Forbidden("not_your_lease", f"lease {state.lease_id} was issued to another worker")
    if state.status == "submitted":
        raise Conflict("duplicate_submission", f"lease {state.lease_id} was already submitted")
    if state.status == "duplicate":   # coordinator.service.work._close_duplicate: a resend gets the same answer
        raise Conflict("duplicate_completion", f"lease {state.lease_id} was refused: its completions were already "
                                               "submitted for its task; lease new work")
    if state.status != "active":
        raise Gone("lease_closed", f"lease {state.lease_id} is {state.status}; lease new work")
    if now > state.expires_at:
        raise Gone("lease_expired", f"lease {state.lease_id} expired {now - state.expires_at:.0f} s ago; "
                                    "lease new work and submit sooner")


def check_completions(sub: Submission, lease: Lease, signer_id: str, vocab_size: int,
                      hidden_size: int | None = None) -> int:
    """Raise Invalid (with the rule's reason) unless `sub` conforms to `lease`; return the total
    token count."""
    found = lease_problems(lease, sub, signer_id=signer_id, vocab_size=vocab_size, hidden_size=hidden_size,
                           first=True)
    if found:
        raise Invalid(found[0].reason, found[0].detail)
    return sum(len(c.token_ids) for c in sub.completions)


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
