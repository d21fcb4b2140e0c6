"""How each role joins the swarm layer, so that a role's own hook stays a few lines.

    node = join_run(cfg.p2p, key, run_info, store_dir=cache, role="worker")   # workers, verifiers
    swarm = RelaySwarm(cfg, relay, key_file, port_file); swarm.start(); ...; swarm.stop()  # relays
    node_status(node)                                                         # for /status pages
    key_of_peer(multiaddr)                                                    # the key a /p2p/ id names

Workers and verifiers bootstrap from `P2PConfig.bootstrap` or else from the coordinator's
`RunInfo.p2p_bootstrap` (GET /v1/run), trust the operator and coordinator keys the run
names, and serve their verified checkpoint cache (`FolderStore`). A relay has no RunInfo:
its run is `RelayConfig.run_id` or that of the manifests it mirrors, and the coordinator's key
is the one named by its first bootstrap multiaddr (a libp2p multiaddr ending in /p2p/<id>
pins the peer's key: the secure channel authenticates it, so whoever configured the
bootstrap peer configured that key).

Every function here returns None (or does nothing) with one log line when libp2p is
missing, p2p is disabled or no bootstrap peer is known: the role goes on over HTTP only.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.identity import KeyPair, PublicKey, public_bytes_from_peer_id
from protocol.messages import RunInfo
from shardcast.p2p.config import P2PConfig
from shardcast.p2p.errors import P2PError
from shardcast.p2p.node import P2PNode, start_node
from shardcast.p2p.store import FolderStore

if TYPE_CHECKING:
    from shardcast.config import RelayConfig

log = logging.getLogger("shardcast.p2p")
STATUS_PEERS = 64      # peers holding versions listed by node_status
STATUS_VERSIONS = 16   # ... with their newest versions


def key_of_peer(addr: str) -> PublicKey | None:
    """The Ed25519 key named by the /p2p/<peer id> of a multiaddr (None if it names none)."""
    raw = public_bytes_from_peer_id(addr.rsplit("/p2p/", 1)[-1]) if "/p2p/" in addr else None
    return PublicKey(raw) if raw is not None else None


def _with_bootstrap(cfg: P2PConfig, bootstrap: list[str]) -> P2PConfig | None:
    try:
        return P2PConfig.model_validate({**cfg.model_dump(), "bootstrap": list(bootstrap)})
    except ValidationError as exc:
        log.warning("p2p: unusable bootstrap addresses %s (%s); continuing over HTTP only",
                    bootstrap, exc.errors()[0].get("msg", exc))
        return None


def join_run(cfg: P2PConfig, key: KeyPair, info: RunInfo, *, store_dir: Path | None = None,
             role: str = "peer") -> P2PNode | None:
    """Start a worker's or verifier's node for the run `info` describes (None: HTTP only)."""
    if not cfg.enabled:
        log.info("p2p: disabled in the %s config; HTTP only", role)
        return None
    bootstrap = list(cfg.bootstrap) or list(info.p2p_bootstrap)
    if not bootstrap:
        log.info("p2p: the coordinator advertises no bootstrap peer (no swarm layer in this run); HTTP only")
        return None
    full = _with_bootstrap(cfg, bootstrap)
    if full is None:
        return None
    operator = PublicKey.from_hex(info.operator_key)
    store = None
    if store_dir is not None:
        Path(store_dir).mkdir(parents=True, exist_ok=True)
        store = FolderStore(Path(store_dir), operator)
    return start_node(full, key, info.run_id, operator, PublicKey.from_hex(info.coordinator_key), store, role)


def node_status(node: P2PNode | None) -> dict[str, Any] | None:
    """What a role's /status shows of its node (None: no node). Peers holding versions: the
    STATUS_PEERS heard from last, each with its STATUS_VERSIONS newest versions, and how many
    there are in all (any key may advertise any 64 versions: 4096 such peers made the status
    5.7 MB of JSON, rebuilt every 2 s)."""
    if node is None:
        return None
    now = time.time()
    try:
        connected = len(node.connected_peers())
    except P2PError:
        connected = 0
    peers = node.view.peers(now)
    shown = sorted(peers, key=lambda p: p.heard_at, reverse=True)[:STATUS_PEERS]
    return {
        "peer_id": node.peer_id, "running": node.running, "addrs": node.multiaddrs, "connected": connected,
        "latest_version": node.latest_version(),
        "relays": [r.url for r in node.relays()],
        "peers_holding": {p.peer_id: list(p.versions)[-STATUS_VERSIONS:] for p in shown},
        "peers_holding_total": len(peers),
        "counters": node.counters.snapshot(),
    }


class RelaySwarm:
    """A shardcast relay's node: advertises the relay (its public URL, region, capacity and
    the versions it holds whole) and serves those versions' verified shards to peers
    (`FolderStore` over the relay's versions folder, which holds only verified shards).
    `start` returns at once: a thread waits until the relay listens (`port_file`) and its
    run is known, then starts the node. `stop` withdraws the advert and stops the node."""

    def __init__(self, cfg: "RelayConfig", relay: Any, key_file: Path, port_file: Path):
        self.cfg, self.relay, self.key_file, self.port_file = cfg, relay, Path(key_file), Path(port_file)
        self.operator = PublicKey.from_hex(cfg.operator_key)
        self.node: P2PNode | None = None
        self.url = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.cfg.p2p.enabled:
            log.info("p2p: disabled in the relay config; HTTP only")
            return
        if not self.cfg.p2p.bootstrap:
            log.info("p2p: no bootstrap peer configured (p2p.bootstrap: the coordinator's multiaddr, from "
                     "GET /v1/run); the relay is not advertised on the swarm layer")
            return
        self._thread = threading.Thread(target=self._main, name="relay-p2p", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        url = self._public_url()
        run_id = self._run_id()
        if url is None or run_id is None:
            return
        try:
            key = KeyPair.load_or_create(self.key_file)
        except ProtocolError as exc:
            log.warning("p2p: the relay's key: %s; continuing over HTTP only", exc)
            return
        coordinator = key_of_peer(self.cfg.p2p.bootstrap[0])
        endorsement = self._endorsement(key, run_id, url, coordinator)
        node = start_node(self.cfg.p2p, key, run_id, self.operator, coordinator,
                          FolderStore(self.relay.root, self.operator), role="relay")
        if node is None:
            return
        with self._lock:
            if self._stop.is_set():
                node.stop()
                return
            self.node, self.url = node, url
        try:
            node.advertise_relay(url, region=self.cfg.region, capacity_mbps=self.cfg.capacity_mbps,
                                 versions=self.relay.complete_versions, endorsement=endorsement)
            log.info("p2p: relay %s advertised on the swarm of run %s (%s)", url, run_id,
                     "endorsed by the operator" if endorsement is not None else "not endorsed")
        except P2PError as exc:
            log.warning("p2p: could not advertise the relay: %s", exc)

    def _endorsement(self, key: KeyPair, run_id: str, url: str, coordinator: PublicKey | None) -> Envelope | None:
        """The operator's endorsement from `cfg.endorsement`, or None (with one line saying why)."""
        if self.cfg.endorsement is None:
            log.info("p2p: relay key %s has no endorsement (peers keep unendorsed relays within a small "
                     "budget); the operator can endorse it: python -m shardcast.p2p.endorse --key OPERATOR_KEY "
                     "--run-id %s --relay-key %s --url %s", key.public.hex, run_id, key.public.hex, url)
            return None
        from shardcast.p2p.endorse import load_endorsement

        endorsers = {self.operator.hex} | ({coordinator.hex} if coordinator is not None else set())
        try:
            return load_endorsement(self.cfg.endorsement, run_id=run_id, relay_key=key.public, url=url,
                                    endorsers=endorsers)
        except P2PError as exc:
            log.error("p2p: %s; advertising the relay without it", exc)
            return None

    def _public_url(self) -> str | None:
        if self.cfg.public_url:
            return self.cfg.public_url.rstrip("/")
        port = self.cfg.port
        if not port:
            while not self._stop.is_set():
                try:
                    port = int(self.port_file.read_text().strip())
                    break
                except (FileNotFoundError, ValueError):
                    self._stop.wait(0.05)
            else:
                return None
        host = self.cfg.host
        if host in ("0.0.0.0", "::", ""):
            host = self.cfg.p2p.announce_host or "127.0.0.1"
            if not self.cfg.p2p.announce_host:
                log.warning("p2p: the relay listens on all addresses; advertising %s (set public_url or "
                            "p2p.announce_host so that peers can reach it)", host)
        return f"http://{host}:{port}"

    def _run_id(self) -> str | None:
        """The relay's run: configured, else pinned by the first version it holds (waiting for one)."""
        said = False
        while not self._stop.is_set():
            run_id = self.cfg.run_id or getattr(self.relay, "run_id", None)
            if run_id:
                return run_id
            if not said:
                log.info("p2p: waiting for the first policy version to learn the run (or set run_id)")
                said = True
            self._stop.wait(0.5)
        return None

    def stop(self) -> None:
        """Withdraw the advert and stop the node (idempotent)."""
        with self._lock:
            self._stop.set()
            node, self.node = self.node, None
        if node is not None:
            node.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
