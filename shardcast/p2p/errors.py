"""Errors raised by the libp2p swarm layer (`shardcast.p2p`).

    ShardcastError                 (shardcast.errors)
    └── P2PError                   base of everything below
        ├── P2PUnavailable         libp2p is not installed, or the host could not start
        │                          (port taken, network blocked); callers fall back to HTTP
        ├── P2PStopped             the node was stopped (or its thread died) before the call
        ├── Rejected               an announcement failed the gate (unsigned, forged, stale,
        │                          replayed, wrong role, rate-limited); `reason` says which
        └── PeerRequestFailed      a shard-exchange request to one peer failed (no route, refused,
            │                      timed out, malformed or oversized reply)
            └── DialDeferred       ... not even tried: its address's host is out of dial budget
                                   (throw-away keys naming one host); no fault of the peer

Shard bytes that do not match the signed manifest surface as shardcast.errors.CorruptData, and
a shard that no peer could supply as shardcast.errors.FetchFailed, exactly as from relays.
"""

from shardcast.errors import ShardcastError


class P2PError(ShardcastError):
    """Base of every error raised by shardcast.p2p."""


class P2PUnavailable(P2PError):
    """The libp2p layer cannot run here; use HTTP only."""


class P2PStopped(P2PError):
    """The node is not running."""


class Rejected(P2PError):
    """An announcement that must be dropped. `reason` is a short machine-readable word;
    `forged`: no honest peer forwards it (a signature that fails for the key it names fails at
    every peer), so whoever forwarded it made it."""

    def __init__(self, reason: str, detail: str = "", *, forged: bool = False):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.forged = forged


class PeerRequestFailed(P2PError):
    """One shard-exchange request to one peer failed."""


class PeerBusy(PeerRequestFailed):
    """The peer refused a request as busy (its serving slots are full): no fault of its own,
    and throw-away keys can keep an honest holder's slots full; not a strike."""


class DialDeferred(PeerRequestFailed):
    """A request not sent: dialling the peer would pass its host's dial budget (shardcast.p2p.
    _host.DIALS_PER_HOST). Nothing was dialled, so the peer is not to blame."""
