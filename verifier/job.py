"""A verification job, opened: the coordinator's signed lease and the worker's signed
submission, checked and typed, plus the decoded proofs.

Collaborators: `verifier.service` receives `VerificationJob`s from the coordinator's claim
route and calls `open_job`; the check functions in `verifier.checks` read `OpenedJob`.

Archived envelopes are re-verified without the clock check (a queued submission may be
older than the allowed skew); the lease must be signed by the coordinator key of the run,
the submission by the worker the job names, and its body must be exactly the canonical form
of the `Submission` it parses to (no "1" read as 1: what is signed is what is judged). The
lease is addressed to a worker and the submission to the coordinator, and both envelopes must be signed for the run the lease names
(`check_lease_and_data` compares that run with the verifier's own). A job whose envelopes do
not open is not an error of the verifier: `open_job` raises and the caller turns that into a
failed `signatures` check.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from protocol.envelope import AUDIENCE_COORDINATOR, AUDIENCE_WORKER, open_envelope
from protocol.errors import MessageError
from protocol.identity import PublicKey
from protocol.messages import KIND_LEASE, KIND_SUBMISSION, Lease, Submission, VerificationJob


@dataclass(frozen=True)
class OpenedJob:
    job: VerificationJob
    lease: Lease
    submission: Submission
    signer_id: str        # peer id of the submission's signer
    signer_hex: str       # its public key, hex
    nonce: str            # the submission envelope's nonce

    @property
    def submission_id(self) -> str:
        return self.job.submission_id

    @property
    def completions(self) -> list[list[int]]:
        return [c.token_ids for c in self.submission.completions]


def open_job(job: VerificationJob, coordinator_key: PublicKey) -> OpenedJob:
    """Verify both envelopes of `job`; raises a ProtocolError subclass if either fails."""
    lease = open_envelope(job.lease, KIND_LEASE, Lease, max_skew_s=None, signer=coordinator_key,
                          run_id=job.lease.body.get("run_id"), audience=AUDIENCE_WORKER)
    sub = open_envelope(job.submission, KIND_SUBMISSION, Submission, max_skew_s=None,
                        run_id=lease.body.run_id, audience=AUDIENCE_COORDINATOR)
    where = _coerced(job.submission.body, sub.body.model_dump(mode="json", exclude_unset=True), "")
    if where is not None:
        raise MessageError(f"the signed submission is not in canonical form at {where or 'its top'}: "
                           "what was signed must be exactly what is judged (no value that only parses to it)")
    return OpenedJob(job=job, lease=lease.body, submission=sub.body, signer_id=sub.signer_id,
                     signer_hex=sub.signer.hex, nonce=sub.nonce)


def _coerced(sent: Any, parsed: Any, path: str) -> str | None:
    """Where the body as signed (`sent`) differs from the canonical JSON of what it parses to
    (`parsed`), or None. pydantic's lax mode parses "1", 1.0 and true as the integer 1: such a
    body is judged as a submission its signer did not write byte for byte. One leniency: an
    integer where a float is expected (JSON clients write 1 for 1.0), as the same number."""
    if isinstance(parsed, dict):
        if not isinstance(sent, dict) or set(sent) != set(parsed):
            return path
        for k in parsed:
            bad = _coerced(sent[k], parsed[k], f"{path}.{k}" if path else k)
            if bad is not None:
                return bad
        return None
    if isinstance(parsed, list):
        if not isinstance(sent, list) or len(sent) != len(parsed):
            return path
        for i, (a, b) in enumerate(zip(sent, parsed)):
            bad = _coerced(a, b, f"{path}[{i}]")
            if bad is not None:
                return bad
        return None
    if type(parsed) is float and type(sent) is int and float(sent) == parsed:
        return None
    return None if type(sent) is type(parsed) and sent == parsed else path
