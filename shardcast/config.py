"""Configuration of a shardcast relay (`swarmrl relay --upstream URL`) and of the origin, and
the limits of their public HTTP front (`FrontLimits`, shardcast.front)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.config import KeyPins
from protocol.errors import PinError
from protocol.identity import public_bytes_from_peer_id
from shardcast.p2p.config import P2PConfig


class FrontLimits(BaseModel):
    """What one client may hold of a node's public port (shardcast.front). The node's API is
    bodiless GETs, so requests with a body are refused unless a route is given a cap."""

    model_config = ConfigDict(extra="forbid")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head (line and headers) must arrive "
                                    "whole this soon after its first byte; slower, the connection is closed")
    body_timeout_s: float = Field(10.0, gt=0, description="a request body must arrive whole this soon after "
                                  "its head; slower, the connection is closed")
    idle_timeout_s: float = Field(75.0, gt=0, description="a keep-alive connection silent this long between "
                                  "requests is closed (a new connection must start its first request within "
                                  "header_timeout_s)")
    max_transfers_per_address: int | None = Field(None, ge=1, description="shard bodies one client address "
                                                  "may be sent at once (more get 503 and go elsewhere); None: "
                                                  "half the node's max_transfers, so one address that "
                                                  "stalls its transfers never holds every slot")
    max_connections_per_address: int = Field(64, ge=1, description="open connections one client address may "
                                             "hold; more are answered 503 and closed")
    max_connections: int = Field(4096, ge=1, description="open connections in all; more are answered 503 "
                                 "and closed")
    body_caps: dict[str, int] = Field(default_factory=dict, description="request body bytes allowed by path "
                                      "prefix (longest prefix wins), e.g. {\"/v1/\": 1024}")
    default_body_bytes: int = Field(0, ge=0, description="request body bytes allowed on paths no prefix in "
                                    "body_caps matches (the API's routes take none)")

    @field_validator("body_caps")
    @classmethod
    def _caps(cls, v: dict[str, int]) -> dict[str, int]:
        for prefix, cap in v.items():
            if not prefix.startswith("/") or cap < 0:
                raise ValueError(f"body_caps entry {prefix!r}: {cap} must map a path prefix (/...) to bytes >= 0")
        return v


class RelayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstreams: list[str] = Field(..., min_length=1, description="origin or relay URLs to mirror")
    operator_key: str = Field(..., description="hex public key that must sign every manifest")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8800, description="port to listen on (0 = free port, written to data_dir/relay.port)")
    data_dir: Path = Field(Path("./swarmrl-data/relay"), description="verified shards on disk")
    keep_versions: int = Field(3, ge=1, description="newest versions kept; older ones deleted")
    parallel: int = Field(4, ge=1, le=64, description="shard transfers from upstreams at once")
    max_transfers: int = Field(64, ge=1, le=4096,
                               description="shard bodies sent downstream at once (sent with sendfile: "
                                           "kernel socket buffers, no block in the process); more get "
                                           "503, go elsewhere")
    log_level: str = Field("info", description="python logging level of the relay process")
    direct_io: bool = Field(True, description="write mirrored shards with O_DIRECT where the file "
                                              "system allows it (around the page cache: less CPU)")
    # -- the libp2p swarm layer (shardcast.p2p): the relay advertises itself on the run's topic
    p2p: P2PConfig = Field(default_factory=P2PConfig,
                           description="libp2p swarm layer: advertise this relay and serve its verified shards to "
                                       "peers; needs p2p.bootstrap (the coordinator's multiaddr, first: its peer id "
                                       "names the key whose version announcements are admitted)")
    run_id: str = Field("", description="the one run whose versions this relay mirrors and serves, and whose swarm "
                                        "topic it joins (empty = the run of the first version it holds, pinned)")
    public_url: str = Field("", description="URL advertised to peers (empty = http://host:port as bound)")
    region: str = Field("", max_length=64, description="region advertised to peers (free text, e.g. eu-west)")
    capacity_mbps: float = Field(0.0, ge=0, description="upload capacity advertised to peers (relays are ranked by it)")
    endorsement: Path | None = Field(None, description="file with the operator's endorsement of this relay's key "
                                                       "and public URL (python -m shardcast.p2p.endorse), carried "
                                                       "in its adverts: peers keep it in a table that unendorsed "
                                                       "adverts cannot fill")
    front: FrontLimits = Field(default_factory=FrontLimits, description="limits per client on the public port")

    pins: KeyPins = Field(default_factory=KeyPins,
                          description="keys trusted ahead of the network: `operator` must equal operator_key, and "
                                      "`coordinator` the key named by the /p2p/ id of the first p2p.bootstrap "
                                      "address (whose version announcements are admitted); a difference stops the "
                                      "relay at start (empty = not checked)")

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"upstream {u!r} must be an http:// or https:// URL")
        return [u.rstrip("/") for u in v]

    @model_validator(mode="after")
    def _pinned(self) -> "RelayConfig":
        """The relay takes the operator key from its config and the coordinator's from its
        bootstrap address: both must be the pinned ones."""
        boot = self.p2p.bootstrap[0] if self.p2p.bootstrap else ""
        raw = public_bytes_from_peer_id(boot.rsplit("/p2p/", 1)[-1]) if "/p2p/" in boot else None
        try:
            self.pins.check(source="this relay config (operator_key, p2p.bootstrap)", operator=self.operator_key,
                            coordinator=raw.hex() if raw is not None else None)
        except PinError as exc:
            raise ValueError(str(exc)) from None
        return self


class OriginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="address the origin serves on")
    port: int = Field(8750, description="port the origin serves on (0 = free port)")
    data_dir: Path = Field(Path("./swarmrl-data/origin"), description="published versions")
    shard_size: int = Field(50 * 1024 * 1024, ge=1024, description="bytes per shard")
    keep_versions: int = Field(3, ge=1, description="newest versions kept; older ones deleted")
    front: FrontLimits = Field(default_factory=FrontLimits, description="limits per client on the public port")
