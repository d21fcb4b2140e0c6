"""Errors raised by the protocol library.

    ProtocolError
    ├── MessageError        a message is malformed or violates a limit
    │   └── ScopeError      a signed message is bound to another run or addressed to another role
    ├── SignatureError      a signature does not verify, or the signer is not the expected one
    ├── StaleMessageError   a timestamp is outside the accepted clock skew
    ├── KeyFileError        a key file cannot be read, parsed or written safely
    ├── ProofError          an activation proof is malformed, truncated or null
    ├── PinError            a key the network serves differs from the one pinned in the config
    ├── Rejected            a service refused a request (HTTP 4xx): resending the same message
    │                       gets the same answer (a 429 says how long to wait: `retry_after_s`)
    ├── Unavailable         a service could not be reached or failed (connection error,
    │                       timeout, 5xx): try again later, with backoff
    └── Stopped             a stop was requested while a call waited to be retried

`protocol.http` translates transport failures into `Rejected` and `Unavailable` at the
boundary, so callers handle two errors, not httpx's; `protocol.retry.retry_call` is the one
rule for which of them is retried, and raises `Stopped`. Every message says what is wrong
and, where it helps, what to change.
"""


class ProtocolError(Exception):
    """Base of every error raised by `protocol`."""


class MessageError(ProtocolError):
    """A message is malformed or violates a protocol limit."""


class ScopeError(MessageError):
    """A signed message names another run or another receiving role than this receiver's."""


class SignatureError(ProtocolError):
    """A signature is invalid, or was made by a key other than the one required."""


class StaleMessageError(ProtocolError):
    """A signed message's timestamp lies outside the accepted window."""


class KeyFileError(ProtocolError):
    """A key file cannot be read, parsed or written safely."""


class ProofError(ProtocolError):
    """An activation proof cannot be decoded (malformed, truncated, null, wrong version)."""


class PinError(ProtocolError):
    """A public key served by the network (GET /v1/run, a relay, a peer) differs from the key
    pinned in this role's config (`protocol.config.KeyPins`)."""


class Rejected(ProtocolError):
    """The service refused the request (4xx). `status` and `detail` say why; `reason` is the
    machine-readable cause when the service names one (the coordinator's `reason` codes);
    `retry_after_s` is the service's Retry-After, when it sent one."""

    def __init__(self, status: int, detail: str, retry_after_s: float | None = None, reason: str = ""):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.reason = reason


class Unavailable(ProtocolError):
    """The service could not be reached or failed (connection error, timeout, 5xx)."""


class Unreachable(Unavailable):
    """No connection to the service could be made: the request was never sent (so it changed
    nothing there), unlike a timeout or a lost answer, after which it may have taken effect."""


class Stopped(ProtocolError):
    """Raised inside waits and retries once a stop was requested (SIGTERM/SIGINT)."""
