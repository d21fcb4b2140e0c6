"""Configuration of a role's libp2p node (`P2PConfig`), embedded by the role configs.

Every role that joins the swarm layer (coordinator as bootstrap peer, trainer, relays,
workers, verifiers) builds a `P2PNode` from one of these. Defaults suit the internet; tests
and the demo shorten the intervals and allow loopback addresses (`allow_private_addresses`). `enabled=False`, a missing libp2p package or a blocked
network all mean "HTTP only" (see `shardcast.p2p.start_node`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator


class P2PConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="join the libp2p swarm layer when libp2p is installed")
    listen_host: str = Field("127.0.0.1", description="IPv4 address the libp2p host listens on (0.0.0.0 for all)")
    listen_port: int = Field(0, ge=0, le=65535, description="TCP port (0 = a free port)")
    announce_host: str = Field("", description="IPv4 address put in adverts instead of listen_host (e.g. a public IP)")
    bootstrap: list[Annotated[str, Field(min_length=1, max_length=2048)]] = Field(
        default_factory=list,  # each as long as RunInfo.p2p_bootstrap carries (protocol.messages.MAX_URL_CHARS)
        description="multiaddrs of bootstrap peers, each ending in /p2p/<peer id> (the coordinator's)",
    )
    bootstrap_interval_s: float = Field(5.0, gt=0, description="how often unconnected bootstrap peers are re-dialled")
    advert_interval_s: float = Field(10.0, gt=0, description="how often standing adverts (version, relay, shards held) are repeated")
    advert_ttl_s: float = Field(30.0, gt=0, le=600, description="how long receivers keep an advert that is not repeated")
    max_skew_s: float = Field(60.0, gt=0, description="announcements older or newer than this (signer's clock) are dropped")
    rate_burst: int = Field(6, ge=1, description="untrusted adverts (relays, shard holders): burst per signer")
    rate_per_s: float = Field(0.5, gt=0, description="untrusted adverts: sustained rate per signer")
    heartbeat_interval_s: int = Field(1, ge=1, description="gossipsub heartbeat (mesh upkeep) in seconds")
    gossip_degree: int = Field(6, ge=1, description="gossipsub mesh degree D")
    max_messages_per_s: float = Field(200.0, gt=0, description="gossipsub spam gate: messages per forwarding peer per second")
    max_dial_peers: int = Field(8, ge=0, description="peers from adverts this node keeps connections to (besides bootstrap)")
    request_timeout_s: float = Field(60.0, gt=0, description="one shard-exchange request (connect, ask, read the bytes)")
    min_rate_bps: float = Field(64 * 1024, gt=0, description="a shard-exchange reply body slower than this (after "
                                "its window) is dropped and the peer struck, as a relay's shard transfer is")
    rate_window_s: float = Field(10.0, gt=0, description="... judged over this window (the most credit a burst "
                                 "buys); a reply's head must also come within it")
    max_concurrent_serves: int = Field(8, ge=1, description="shard requests this node serves at once")
    allow_private_addresses: bool = Field(
        False, description="admit adverts that point at private, loopback or link-local addresses or at DNS names "
                           "(relay URLs, peer multiaddrs); off on the internet, on for local swarms and tests "
                           "(operator-endorsed relays may use any address either way)")
    unendorsed_relays: int = Field(8, ge=0, le=512, description="relays without the operator's endorsement kept at "
                                   "once, in all (a budget throw-away keys cannot grow; endorsed relays never "
                                   "compete for it)")
    unendorsed_relays_per_signer: int = Field(1, ge=0, le=4, description="relays without endorsement one key may "
                                              "have in that budget")

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_names_a_peer(cls, addrs: list[str]) -> list[str]:
        for a in addrs:
            if not a.startswith("/") or "/p2p/12D3KooW" not in a:
                raise ValueError(f"bootstrap address {a!r} must be a multiaddr ending in /p2p/<peer id>, "
                                 "e.g. /ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...")
        return addrs


def bootstrap_multiaddr(host: str, port: int, peer_id: str) -> str:
    """The multiaddr other roles put in `bootstrap` to reach a node (e.g. the coordinator's,
    whose peer id is its protocol identity's): /ip4/<host>/tcp/<port>/p2p/<peer id>."""
    return f"/ip4/{host}/tcp/{port}/p2p/{peer_id}"
