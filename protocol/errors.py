"""Errors raised by the protocol library.

    ProtocolError
    ├── MessageError        a message is malformed or violates a limit
    │   └── ScopeError      a signed message is bound to another run or addressed to another role
    ├── SignatureError      a signature does not verify, or the signer is not the expected one
    ├── StaleMessageError   a timestamp is outside the accepted clock skew
    ├── KeyFileError        a key file cannot be read, parsed or written safely
    ├── ProofError          an activation proof is malformed, truncated or null
    └── PinError            a key the network serves differs from the one pinned in the config

Every message says what is wrong and, where it helps, what to change.
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
