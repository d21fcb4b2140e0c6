"""Prometheus metrics of one shardcast node (origin or relay), each in its own registry.

Served at GET /metrics by `shardcast.serving`. Counters are updated by the serving code
(bytes and shards served), the mirror (shards fetched, verified, failures by source) and
the origin (publishes). Source labels are upstream URLs, so their number is bounded by the
node's configuration.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NodeMetrics:
    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_served = Counter("shardcast_bytes_served", "shard bytes sent downstream",
                                    registry=r)
        self.shard_requests = Counter("shardcast_shard_requests", "shard requests by outcome",
                                      ["outcome"], registry=r)
        self.transfers = Gauge("shardcast_transfers_active", "shard bodies being sent now",
                               registry=r)
        self.longpolls = Gauge("shardcast_longpolls_waiting",
                               "long-polls waiting for a new version", registry=r)
        self.latest_version = Gauge("shardcast_latest_version", "newest version held (-1: none)",
                                    registry=r)
        self.versions_held = Gauge("shardcast_versions_held", "versions held on disk", registry=r)
        self.bytes_fetched = Counter("shardcast_bytes_fetched", "bytes received from upstreams",
                                     registry=r)
        self.shards_verified = Counter("shardcast_shards_verified",
                                       "shards that matched the manifest", registry=r)
        self.verify_failures = Counter("shardcast_verify_failures",
                                       "shards or manifests that failed verification, by source",
                                       ["source"], registry=r)
        self.fetch_errors = Counter("shardcast_fetch_errors", "transfer errors by source",
                                    ["source"], registry=r)
        self.front_refusals = Counter("shardcast_front_refusals",
                                      "connections and requests the public port refused, by reason "
                                      "(shardcast.front_guard)", ["reason"], registry=r)
        self.publishes = Counter("shardcast_publishes", "versions published (origin)", registry=r)
        self.publish_seconds = Histogram("shardcast_publish_seconds", "time to publish a version",
                                         registry=r, buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.latest_version.set(-1)
        self.role = role
