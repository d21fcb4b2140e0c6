"""Errors of `swarmrl audit`.

    VerifierError            (verifier.errors)
    └── AuditError           the archive cannot answer: folder missing or not an archive, unknown
                             submission, checkpoint not archived or not matching its signed
                             manifest, bad filter; the message says what to change

A rollout that fails re-verification is not an error: it is the answer (a `Reverification`
whose recorded verdict does not hold).
"""

from __future__ import annotations

from verifier.errors import VerifierError


class AuditError(VerifierError):
    """The audit cannot be done as asked; one line for the user."""
