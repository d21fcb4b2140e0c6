"""Errors raised by the protocol library.

    ProtocolError
    ├── MessageError        a message is malformed or violates a limit
    ├── SignatureError      a signature does not verify, or the signer is not the expected one
    ├── StaleMessageError   a timestamp is outside the accepted clock skew
    ├── KeyFileError        a key file cannot be read, parsed or written safely
    └── ProofError          an activation proof is malformed, truncated or null

Every message says what is wrong and, where it helps, what to change.
"""


class ProtocolError(Exception):
    """Base of every error raised by `protocol`."""


class MessageError(ProtocolError):
    """A message is malformed or violates a protocol limit."""


class SignatureError(ProtocolError):
    """A signature is invalid, or was made by a key other than the one required."""


class StaleMessageError(ProtocolError):
    """A signed message's timestamp lies outside the accepted window."""


class KeyFileError(ProtocolError):
    """A key file cannot be read, parsed or written safely."""


class ProofError(ProtocolError):
    """An activation proof cannot be decoded (malformed, truncated, null, wrong version)."""
