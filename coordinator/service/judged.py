"""Does a verdict judge what this coordinator stored? (issue 17, item 7)

A verdict carries, signed, the `protocol.envelope.envelope_digest` of the submission envelope
and of the lease envelope it judged (`Verdict.submission_sha256`, `Verdict.lease_sha256`).
`check_judged` compares them with the digests of what the coordinator stored for that
submission: the submission's digest is recorded at intake (`submissions.envelope_sha256`; rows
older than migration 0004 have none and it is computed from the stored envelope), the lease's
is computed from the stored lease envelope (a few hundred bytes). A verdict on anything else
(an edited copy of the job, another lease, a job of another coordinator) is refused with a 422
before anything changes.

Called by `coordinator.service.verification.verdict` inside its transaction, after the
submission is known to exist and to be queued.
"""

from __future__ import annotations

from sqlalchemy import Connection

from coordinator.errors import Invalid
from coordinator.store import submissions
from protocol.envelope import Envelope, envelope_digest
from protocol.messages import Verdict


def check_judged(conn: Connection, v: Verdict) -> None:
    """Raise Invalid unless `v` names the digests of the stored submission and lease envelopes."""
    row = submissions.judged(conn, v.submission_id)
    if row is None:
        return  # an unknown submission: the caller's NotFound
    try:
        stored_sub = row.envelope_sha256 or envelope_digest(Envelope.model_validate_json(row.envelope))
        stored_lease = envelope_digest(Envelope.model_validate_json(row.lease_envelope))
    except (ValueError, TypeError, AttributeError):  # a stored envelope of an older format, or pruned
        raise Invalid("unverifiable", f"submission {v.submission_id} has no stored envelope in the current "
                                      "format to compare the verdict with") from None
    for what, named, stored in (("submission", v.submission_sha256, stored_sub),
                                ("lease", v.lease_sha256, stored_lease)):
        if named != stored:
            raise Invalid(f"wrong_{what}_digest",
                          f"the verdict on {v.submission_id} judged a {what} envelope with digest {named[:16]}…, "
                          f"but the one this coordinator stored has {stored[:16]}…; judge the job exactly as "
                          "claimed from this coordinator")
