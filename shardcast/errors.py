"""Errors raised by shardcast (origin, relay, client).

    ProtocolError                 (protocol.errors; the CLI prints these as one line)
    └── ShardcastError            base of everything below
        ├── PublishError          the origin refused a checkpoint (empty folder, version not newer,
        │                         same version with other content)
        ├── VersionUnavailable    no source holds this version (pruned, or never published)
        ├── CorruptData           bytes do not match the signed manifest (a shard or a whole file)
        ├── FetchFailed           every source failed for a shard after the allowed attempts
        └── RefusedAnswer         a relay, upstream or peer answered with something refused
            │                     unread: a body over its cap, a compressed body
            └── AnswerTimeout     ... or not within the request's deadline (dripped or silent)

A forged or inconsistent manifest surfaces as protocol.errors.SignatureError / MessageError
from `protocol.manifest.open_manifest`; shardcast catches those at the boundary and treats
the source that served it as hostile.
"""

from protocol.errors import ProtocolError


class ShardcastError(ProtocolError):
    """Base of every error raised by shardcast."""


class PublishError(ShardcastError):
    """The origin cannot publish this checkpoint as this version."""


class VersionUnavailable(ShardcastError):
    """No reachable source holds the requested version."""


class CorruptData(ShardcastError):
    """Bytes that do not match the signed manifest."""


class FetchFailed(ShardcastError):
    """A shard could not be fetched from any source."""


class RefusedAnswer(ShardcastError):
    """An untrusted source's answer that is refused (shardcast.bounded): too large or compressed."""


class AnswerTimeout(RefusedAnswer):
    """An untrusted source did not complete its answer within the request's deadline."""
