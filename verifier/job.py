"""A verification job, opened: the coordinator's signed lease and the worker's signed
submission, checked and typed, plus the decoded proofs.

Collaborators: `verifier.service` receives `VerificationJob`s from the coordinator's claim
route and calls `open_job`; the check functions in `verifier.checks` read `OpenedJob`.

Archived envelopes are re-verified without the clock check (a queued submission may be
older than the allowed skew); the lease must be signed by the coordinator key of the run,
the submission by the worker the job names, and its body must be exactly what it parses to
(`protocol.envelope.open_envelope`: no "1" read as 1, what is signed is what is judged). The
lease is addressed to a worker and the submission to the coordinator, and both envelopes must be signed for the run the lease names
(`check_lease_and_data` compares that run with the verifier's own). A job whose envelopes do
not open is not an error of the verifier: `open_job` raises and the caller turns that into a
failed `signatures` check.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.envelope import AUDIENCE_COORDINATOR, AUDIENCE_WORKER, open_envelope
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
    return OpenedJob(job=job, lease=lease.body, submission=sub.body, signer_id=sub.signer_id,
                     signer_hex=sub.signer.hex, nonce=sub.nonce)

