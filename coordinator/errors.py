"""Errors of the coordinator: every refusal is one of these, with an HTTP status, a short
machine-readable `reason` (the label of the `swarmrl_coordinator_rejections_total` metric)
and a one-line `detail` that tells the sender what to change.

    CoordinatorError
    ├── BadRequest        400  malformed JSON, stale timestamp
    ├── Unauthorized      401  bad signature or key
    ├── Forbidden         403  signed by a key that may not do this (banned, not a verifier, ...)
    ├── NotFound          404  unknown worker, lease, submission
    ├── Conflict          409  replayed nonce, duplicate submission, already decided
    ├── Gone              410  expired or returned lease
    ├── TooLarge          413  body over the configured limit
    ├── Invalid           422  well-formed but wrong: schema, token ids, lengths, proofs, versions
    └── RateLimited       429  too many requests (carries Retry-After)

Routes translate these into `{"detail": ..., "reason": ...}` responses; a request that raises one changes
no state (the store rolls the transaction back).
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class CoordinatorError(Exception):
    status = 400

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BadRequest(CoordinatorError):
    status = 400


class Unauthorized(CoordinatorError):
    status = 401


class Forbidden(CoordinatorError):
    status = 403


class NotFound(CoordinatorError):
    status = 404


class Conflict(CoordinatorError):
    status = 409


class Gone(CoordinatorError):
    status = 410


class TooLarge(CoordinatorError):
    status = 413


class Invalid(CoordinatorError):
    status = 422


class RateLimited(CoordinatorError):
    status = 429

    def __init__(self, reason: str, detail: str, retry_after_s: float):
        super().__init__(reason, detail)
        self.retry_after_s = retry_after_s


class ConfigError(ProtocolError):
    """The coordinator cannot start with this configuration (one clear line; the CLI prints it)."""
