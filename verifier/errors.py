"""Errors of the verifier service.

    ProtocolError                 (protocol.errors; the CLI prints these as one line)
    └── VerifierError
        ├── JobError      a job cannot be judged now (its policy version cannot be had, a
        │                 model fails to load); no verdict is posted, the job returns to
        │                 the queue when the coordinator's claim expires
        └── SetupError    the service cannot start (no relays, no tokenizer)

Bad input from workers is never an error here: it is a failed check in a verdict.
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class VerifierError(ProtocolError):
    """Base of every error raised by `verifier`."""


class JobError(VerifierError):
    """This job cannot be judged now; it is left for a later claim."""


class SetupError(VerifierError):
    """The verifier cannot start; the message says what to change."""
