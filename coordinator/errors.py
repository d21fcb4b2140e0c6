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
    ├── RateLimited       429  too many requests (carries Retry-After)
    └── Unavailable       503  the database did not answer (a dropped connection, a busy
                               SQLite) or a concurrent request changed the same rows first;
                               nothing changed, send the same request again

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


class Unavailable(CoordinatorError):
    status = 503

    def __init__(self, reason: str, detail: str, retry_after_s: float = 1.0):
        super().__init__(reason, detail)
        self.retry_after_s = retry_after_s


def database_unavailable(exc: Exception) -> Unavailable:
    """The refusal for a database error that is not the request's fault: SQLAlchemy's
    OperationalError (the server went away, a connection was cut, a deadlock was broken,
    SQLite stayed locked past its busy timeout) or IntegrityError (a request on another replica
    changed the same rows first: two registrations of one key, identical completions on two
    leases). The transaction was rolled back, so the same envelope may be sent again; sent
    again, it meets the checks that name what happened (409 duplicate_completion, ...)."""
    from sqlalchemy.exc import IntegrityError

    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, IntegrityError):
        return Unavailable("concurrent_change", "a concurrent request changed the same records first; nothing "
                                                "changed, send the request again")
    return Unavailable("database_unavailable", f"the coordinator's database did not answer ({first}); "
                                               "nothing changed, send the request again")


class ConfigError(ProtocolError):
    """The coordinator cannot start with this configuration (one clear line; the CLI prints it)."""
