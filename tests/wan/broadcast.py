"""One weight broadcast across the simulated internet: origin -> region relays -> workers.

    result = run_broadcast(net, work, size_bytes, peers=False)   # net: a running tests.wan.netns.Net

What runs, each process in its site's namespace (so every byte crosses the emulated links):
- the origin (shardcast.origin.Origin, as inside the trainer) at the operator site, port 8750,
  and, with `peers`, the run's bootstrap libp2p node there (the coordinator's role: it
  announces the version on the run's topic);
- one `swarmrl relay` per region site, mirroring the origin (with `peers`, advertising itself
  and serving its verified shards to peers);
- one client per worker site (shardcast.client.ShardcastClient given every relay URL; with
  `peers`, a libp2p node serving its cache and `PeerShards` as the client's peer source). Each
  long-polls the relays, then fetches, verifies every shard against the signed manifest,
  fsyncs and renames the version into place, and writes its timings.

`run_broadcast` starts the clients once the relays serve (as in a run, where relays are up
before workers come), publishes once every client's long-poll is held by every relay (the
relays' `shardcast_longpolls_waiting`) and had time to pre-open its data connections (two
round trips and 0.5 s more), and returns, per client, the time from
publish to its first shard byte and to holding the verified version, and the bytes it took
from peers. `during(seconds_after_publish, action)` runs fault actions mid-broadcast (e.g. a
relay's uplink cut). The process entry points (`origin`, `client`) are this module's `main`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from swarmrl.procs import ProcessGroup, child_env, write_config
from tests.wan.netns import InNamespace, Net

ORIGIN_PORT = 8750
RELAY_PORT = 8800
P2P_PORT = 4001
RUN_ID = "wan-broadcast"
MiB = 1024 * 1024


def make_checkpoint(folder: Path, size: int) -> Path:
    """A checkpoint folder whose one weights file holds `size` incompressible bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "wan-bench"}')
    with open(folder / "model.safetensors", "wb") as fh:
        for start in range(0, size, 16 * MiB):
            fh.write(os.urandom(min(16 * MiB, size - start)))
    return folder


# -- the processes ---------------------------------------------------------------------------------
def origin_main(work: Path, address: str, shard_mb: int, peers: bool) -> None:
    """Serve the origin; publish `work/ckpt` when `work/publish` appears; write the publish time."""
    from protocol.identity import KeyPair
    from shardcast.config import OriginConfig
    from shardcast.origin import Origin

    operator = KeyPair.load_or_create(work / "keys" / "operator.key")
    origin = Origin(OriginConfig(host=address, port=ORIGIN_PORT, data_dir=work / "origin",
                                 shard_size=shard_mb * MiB), operator, RUN_ID)
    origin.start()
    node = None
    if peers:
        from shardcast.p2p import P2PConfig, start_node

        coordinator = KeyPair.load_or_create(work / "keys" / "coordinator.key")
        node = start_node(P2PConfig(listen_host=address, listen_port=P2P_PORT, allow_private_addresses=True,
                                    advert_interval_s=2.0), coordinator, RUN_ID, operator.public, coordinator.public,
                          role="coordinator")
        if node is None:
            raise SystemExit("the bootstrap node did not start (is libp2p installed?)")
    (work / "origin.ready").write_text("1")
    while not (work / "publish").exists():
        time.sleep(0.02)
    t0 = time.time()
    env = origin.publish(work / "ckpt", version=0, step=0)
    t_pub = time.time()
    if node is not None:
        node.announce_version(env)
    (work / "origin.json").write_text(json.dumps({"called": t0, "published": t_pub}))
    threading.Event().wait()   # serve until terminated


def client_main(work: Path, name: str, address: str, relays: list[str], peers: bool, parallel: int) -> None:
    from protocol.identity import KeyPair
    from shardcast.client import ShardcastClient
    from shardcast.fetch import FetchEvents, FetchOptions

    operator = KeyPair.load_or_create(work / "keys" / "operator.key")
    cache = work / "clients" / name
    first: list[float] = []
    by_source: dict[str, int] = {}
    lock = threading.Lock()

    def on_bytes(source: str, n: int) -> None:
        with lock:
            if not first:
                first.append(time.time())
            by_source[source] = by_source.get(source, 0) + n

    peer_shards = None
    node = None
    if peers:
        from shardcast.p2p import FolderStore, P2PConfig, PeerShards, bootstrap_multiaddr, start_node

        coordinator = KeyPair.load_or_create(work / "keys" / "coordinator.key")
        boot = bootstrap_multiaddr(json.loads((work / "sites.json").read_text())["operator"], P2P_PORT,
                                   coordinator.peer_id)
        cache.mkdir(parents=True, exist_ok=True)
        node = start_node(P2PConfig(listen_host="0.0.0.0", announce_host=address, listen_port=P2P_PORT,
                                    bootstrap=[boot], allow_private_addresses=True, advert_interval_s=2.0),
                          KeyPair.generate(), RUN_ID, operator.public, coordinator.public,
                          FolderStore(cache, operator.public), role="worker")
        if node is None:
            raise SystemExit("the client's libp2p node did not start")
        peer_shards = PeerShards(node, operator.public)
    client = ShardcastClient(relays, operator.public, cache, run_id=RUN_ID, peers=peer_shards,
                             events=FetchEvents(on_bytes=on_bytes), options=FetchOptions(parallel=parallel))
    (work / "clients" / f"{name}.ready").write_text("1")
    version = client.wait_for_version(None, 600)
    if version is None:
        raise SystemExit("no version announced within 600 s")
    heard = time.time()
    client.fetch(version)
    done = time.time()
    out = {"first_byte": first[0] if first else None, "heard": heard, "done": done, "by_source": by_source}
    (work / "clients" / f"{name}.json").write_text(json.dumps(out))
    if node is not None:
        threading.Event().wait()   # keep serving peers until terminated
    client.close()


# -- orchestration -------------------------------------------------------------------------------
@dataclass
class ClientResult:
    name: str
    heard_s: float               # publish -> the client knows the new version (long-poll or topic)
    first_byte_s: float          # publish -> first shard byte
    done_s: float                # publish -> verified version in place
    from_peers_bytes: int
    rtt_ms: float                # to the operator, from propagation delays


@dataclass
class BroadcastResult:
    size_bytes: int
    peers: bool
    publish_s: float             # the origin's publish() (hash + sign), before the clock starts
    clients: list[ClientResult]
    link_stats: dict = field(default_factory=dict)

    @property
    def all_done_s(self) -> float:
        return max(c.done_s for c in self.clients)


def _relay_config(net: Net, work: Path, region: str, peers: bool, operator_hex: str, coord_peer: str) -> Path:
    from shardcast.config import RelayConfig
    from shardcast.p2p import P2PConfig, bootstrap_multiaddr

    site = net.topo.site(region)
    op = net.topo.operator.address
    p2p = P2PConfig(enabled=peers, listen_host=site.address, listen_port=P2P_PORT, allow_private_addresses=True,
                    advert_interval_s=2.0, bootstrap=[bootstrap_multiaddr(op, P2P_PORT, coord_peer)] if peers else [])
    cfg = RelayConfig(upstreams=[f"http://{op}:{ORIGIN_PORT}"], operator_key=operator_hex, host=site.address,
                      port=RELAY_PORT, data_dir=work / region, run_id=RUN_ID, region=region, log_level="info",
                      capacity_mbps=site.up_mbps, p2p=p2p)
    return write_config(work / "config" / f"{region}.toml", cfg)


def _wait_files(paths: list[Path], group: ProcessGroup, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        dead = [c.name for c in group.children if not c.alive and c.popen.returncode != 0]
        if dead:
            raise RuntimeError(f"{what}: {dead} exited:\n" + "\n".join(group.get(d).tail(15) for d in dead))
        if time.monotonic() > deadline:
            missing = [p.name for p in paths if not p.exists()]
            raise TimeoutError(f"{what}: still missing {missing} after {timeout_s:.0f} s")
        time.sleep(0.1)


LONGPOLLS = re.compile(r"^shardcast_longpolls_waiting(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)


def _wait_longpolls(net: Net, site: str, url: str, n: int, group: ProcessGroup, timeout_s: float) -> None:
    """Wait until the node at `url` (in `site`) holds at least `n` long-polls."""
    import httpx

    probe = InNamespace(net, site)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                held = sum(float(x) for x in LONGPOLLS.findall(probe.call(
                    lambda: httpx.get(url + "/metrics", timeout=5).text, timeout=10)))
            except (httpx.HTTPError, TimeoutError):
                held = 0
            if held >= n:
                return
            dead = [c.name for c in group.children if not c.alive and c.popen.returncode != 0]
            if dead:
                raise RuntimeError(f"long-polls at {site}: {dead} exited")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{site} holds {held:.0f} of {n} long-polls after {timeout_s:.0f} s")
            time.sleep(0.2)
    finally:
        probe.close()


def run_broadcast(net: Net, work: Path, size_bytes: int, *, peers: bool = False, shard_mb: int = 8,
                  parallel: int = 4, clients: list[str] | None = None, timeout_s: float = 900,
                  during: list[tuple[float, Callable[[], None]]] = ()) -> BroadcastResult:
    """Broadcast one checkpoint of `size_bytes` to `clients` (default: every worker site)."""
    from protocol.identity import KeyPair

    topo = net.topo
    work.mkdir(parents=True, exist_ok=True)
    (work / "clients").mkdir(exist_ok=True)
    operator = KeyPair.load_or_create(work / "keys" / "operator.key")
    coordinator = KeyPair.load_or_create(work / "keys" / "coordinator.key")
    (work / "sites.json").write_text(json.dumps({s.name: s.address for s in topo.sites}))
    make_checkpoint(work / "ckpt", size_bytes)
    names = clients if clients is not None else [w.name for w in topo.workers]
    relay_urls = [f"http://{r.address}:{RELAY_PORT}" for r in topo.regions]
    env = child_env(threads=1)
    with ProcessGroup(work / "logs") as group:
        group.start("origin", ["origin", str(work), topo.operator.address, str(shard_mb), str(int(peers))],
                    env=env, module="tests.wan.broadcast", prefix=net.exec_prefix("operator"))
        _wait_files([work / "origin.ready"], group, 120, "origin")
        for r in topo.regions:
            cfg = _relay_config(net, work, r.name, peers, operator.public.hex, coordinator.peer_id)
            group.start(r.name, ["relay", "--config", str(cfg)], env=env, prefix=net.exec_prefix(r.name))
        _wait_files([work / r.name / "relay.port" for r in topo.regions], group, 120, "relays")
        for name in names:
            group.start(name, ["client", str(work), name, topo.site(name).address, ",".join(relay_urls),
                               str(int(peers)), str(parallel)],
                        env=env, module="tests.wan.broadcast", prefix=net.exec_prefix(name))
        _wait_files([work / "clients" / f"{n}.ready" for n in names], group, 180, "clients")
        for r, url in zip(topo.regions, relay_urls):
            _wait_longpolls(net, r.name, url, len(names), group, 120)   # every client is long-polling
        # A waiting client pre-opens a data connection to its best relays (`shardcast.fetch.
        # prewarm`: a connect and a probe, two round trips) as it starts each long-poll; a
        # swarm publishes minutes apart, so a waiting client has long finished that. Publishing
        # the instant the long-polls are held would measure the start-up instead (the farthest
        # clients then paid a handshake more: first byte 0.86-0.93 s at RTT 275-300 ms).
        settle = max(2 * topo.rtt_ms(n, r.name) for n in names for r in topo.regions) / 1000 + 0.5
        time.sleep(max(settle, 3.0 if peers else 0.0))   # with peers: every client's node has met the swarm
        before = net.stats()["links"]
        (work / "publish").write_text("1")
        _wait_files([work / "origin.json"], group, 300, "publish")
        pub = json.loads((work / "origin.json").read_text())
        timers = [threading.Timer(max(0.0, pub["published"] + delay - time.time()), action) for delay, action in during]
        for t in timers:
            t.start()
        try:
            _wait_files([work / "clients" / f"{n}.json" for n in names], group, timeout_s, "broadcast")
        finally:
            for t in timers:
                t.cancel()
        after = net.stats()["links"]
    results = []
    for n in names:
        r = json.loads((work / "clients" / f"{n}.json").read_text())
        from_peers = sum(v for k, v in r["by_source"].items() if not k.startswith("http"))
        t = pub["published"]
        results.append(ClientResult(n, r["heard"] - t, (r["first_byte"] or r["done"]) - t, r["done"] - t,
                                    from_peers, topo.rtt_ms(n, "operator")))
    delta = {s: {d: after[s][d]["bytes"] - before[s][d]["bytes"] for d in ("up", "down")} for s in after}
    return BroadcastResult(size_bytes, peers, pub["published"] - pub["called"], results, delta)


def main() -> None:
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "origin":
        origin_main(Path(rest[0]), rest[1], int(rest[2]), rest[3] == "1")
    elif what == "client":
        client_main(Path(rest[0]), rest[1], rest[2], rest[3].split(","), rest[4] == "1", int(rest[5]))
    else:
        raise SystemExit(f"unknown process {what!r} (origin | client)")


if __name__ == "__main__":
    main()
