"""The libp2p swarm layer of shardcast: discovery and peer shard exchange beside HTTP.

Every role may run a `P2PNode` (its peer id is its protocol identity's, "12D3KooW..."). The
coordinator is the bootstrap peer. On the run's gossipsub topic travel signed announcements:
new policy versions (operator or coordinator key), relays joining and leaving (any key,
rate-limited, expiring, at public addresses unless allowed; kept apart when the operator
endorsed them), peers holding shards (likewise) and coordinator notices. Receivers
admit only what `Gate` accepts. Peers serve verified shards over libp2p streams
(`/swarmrl/shards/1`), and `PeerShards` fetches and checks them like a relay's.

    node = start_node(cfg, key, run_id, operator_key, coordinator_key, store)  # None: HTTP only
    node.announce_version(manifest_env)                     # trainer / coordinator
    node.advertise_relay(url, region=..., capacity_mbps=...)  # relay
    node.wait_for_version(after, timeout_s); node.relays()  # workers, verifiers
    PeerShards(node, operator_key).fetch_shard(version, index)

Imports nothing of libp2p until a node starts, so this package imports without the `p2p`
extra; `libp2p_available()` says whether it is installed.

Modules: config (P2PConfig), announcements (kinds, bodies, Gate, relay endorsements),
addresses (where an untrusted advert may point), view (SwarmView: endorsed relays apart from
a small budget of unendorsed ones), endorse (`python -m shardcast.p2p.endorse`), store
(ShardStore, FolderStore), wire (stream protocol), node (P2PNode, the trio bridge), _host
(the trio side), exchange (PeerShards), errors.
"""

from shardcast.p2p.announcements import (
    KIND_HAVE, KIND_NOTICE, KIND_RELAY, KIND_VERSION, Announcement, Gate, HaveAdvert, Notice,
    RelayAdvert, VersionAnnouncement, manifest_digest,
)
from shardcast.p2p.config import P2PConfig, bootstrap_multiaddr
from shardcast.p2p.errors import P2PError, P2PStopped, P2PUnavailable, PeerRequestFailed, Rejected
from shardcast.p2p.exchange import PeerShards
from shardcast.p2p.node import P2PNode, Subscription, libp2p_available, start_node
from shardcast.p2p.store import FolderStore, ShardStore
from shardcast.p2p.view import PeerInfo, RelayInfo, SwarmView, VersionInfo

__all__ = [
    "KIND_HAVE", "KIND_NOTICE", "KIND_RELAY", "KIND_VERSION", "Announcement", "FolderStore", "Gate",
    "HaveAdvert", "Notice", "P2PConfig", "P2PError", "P2PNode", "P2PStopped", "P2PUnavailable",
    "PeerInfo", "PeerRequestFailed", "PeerShards", "Rejected", "RelayAdvert", "RelayInfo",
    "ShardStore", "Subscription", "SwarmView", "VersionAnnouncement", "VersionInfo",
    "bootstrap_multiaddr", "libp2p_available", "manifest_digest", "start_node",
]
