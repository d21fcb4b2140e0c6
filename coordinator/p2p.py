"""The coordinator's node in the libp2p swarm layer (shardcast.p2p): the run's bootstrap peer.

Started in the process that runs the coordinator's background work (the app's lifespan with
`background=True`; the leader of `workers > 1`), with the coordinator's own key, so its peer
id is the coordinator's protocol id and its announcements pass every peer's gate. It:

- is advertised in GET /v1/run (`RunInfo.p2p_bootstrap`: its multiaddrs, then any configured
  `p2p.bootstrap` peers); the other server processes of `workers > 1` read the leader's
  multiaddrs from `data_dir/coordinator.p2p`, which the leader writes at start and removes at stop;
- announces each policy version on the run's topic: at once after POST /v1/policy accepted it
  (`announce`, in the process that took the request, when that one has the node), and from the
  sweep (`catch_up`: any newer current version, e.g. posted to another process, or the
  current one after a restart). The announcement carries the operator-signed manifest, so
  receivers verify it exactly as they would from a relay.

With `p2p.listen_port = 0` the port picked is remembered in `data_dir/p2p.port` and asked for
again at the next start, so the multiaddr that workers learned survives a coordinator restart
(a fixed `listen_port` is what a public deployment sets anyway).

Nothing here can fail a request: without libp2p, with `p2p.enabled = false` or with the node
down, the coordinator serves HTTP exactly as before (one log line at start).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.context import Context
from coordinator.store import policy
from protocol.durable import write_atomic
from protocol.envelope import Envelope
from shardcast.p2p import P2PError, P2PNode, libp2p_available, start_node

log = logging.getLogger("swarmrl.coordinator")
ADDR_FILE = "coordinator.p2p"
PORT_FILE = "p2p.port"


@dataclass
class CoordinatorSwarm:
    node: P2PNode
    announced: int | None = None          # newest version announced by this node
    lock: threading.Lock = field(default_factory=threading.Lock)


def _addr_file(ctx: Context) -> Path:
    return Path(ctx.cfg.data_dir) / ADDR_FILE


def start(ctx: Context) -> None:
    """Start the node (or log one line and leave `ctx.p2p` None)."""
    cfg = ctx.cfg
    node, last = None, _last_port(ctx)
    if last is not None:
        node = start_node(cfg.p2p.model_copy(update={"listen_port": last}), ctx.key, cfg.run_id, ctx.operator,
                          ctx.key.public, role="coordinator", if_unavailable="picking another port")
    node = node or start_node(cfg.p2p, ctx.key, cfg.run_id, ctx.operator, ctx.key.public, role="coordinator")
    if node is None:
        if not cfg.p2p.enabled:
            log.info("p2p: disabled in the config; HTTP only")
        return
    ctx.p2p = CoordinatorSwarm(node)
    port = node.multiaddrs[0].split("/tcp/", 1)[1].split("/", 1)[0] if node.multiaddrs else ""
    if cfg.p2p.listen_port == 0 and port.isdigit():
        write_atomic(Path(cfg.data_dir) / PORT_FILE, port + "\n", durable=False)
    write_atomic(_addr_file(ctx), json.dumps(node.multiaddrs), durable=False)
    log.info("p2p: bootstrap peer of run %s at %s", cfg.run_id, ", ".join(node.multiaddrs))


def _last_port(ctx: Context) -> int | None:
    """With listen_port 0: the port of the previous start, to be asked for first."""
    cfg = ctx.cfg
    if not cfg.p2p.enabled or cfg.p2p.listen_port != 0 or not libp2p_available():
        return None
    try:
        return int((Path(cfg.data_dir) / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def stop(ctx: Context) -> None:
    swarm, ctx.p2p = ctx.p2p, None
    if swarm is None:
        return
    _addr_file(ctx).unlink(missing_ok=True)
    swarm.node.stop()


def bootstrap_addrs(ctx: Context) -> list[str]:
    """What GET /v1/run advertises: this run's node(s), then configured bootstrap peers."""
    own: list[str] = []
    if ctx.p2p is not None:
        own = ctx.p2p.node.multiaddrs
    elif ctx.cfg.workers > 1 and ctx.cfg.p2p.enabled:
        try:
            own = [str(a) for a in json.loads(_addr_file(ctx).read_text())][:8]
        except (OSError, ValueError, TypeError):
            own = []
    return (own + [a for a in ctx.cfg.p2p.bootstrap if a not in own])[:16]


def _announce(swarm: CoordinatorSwarm, version: int, manifest: Envelope) -> None:
    with swarm.lock:
        if swarm.announced is not None and version <= swarm.announced:
            return
        try:
            swarm.node.announce_version(manifest)
        except P2PError as exc:
            log.warning("p2p: could not announce policy version %d: %s", version, exc)
            return
        swarm.announced = version
    log.info("p2p: policy version %d announced", version)


async def announce(ctx: Context, manifest: Envelope, version: int) -> None:
    """After POST /v1/policy accepted `version`: announce it now (off the event loop)."""
    swarm = ctx.p2p
    if swarm is not None:
        await asyncio.to_thread(_announce, swarm, version, manifest)


async def catch_up(ctx: Context) -> None:
    """From the sweep: announce the current version if this node has not yet."""
    swarm = ctx.p2p
    if swarm is None:
        return
    with ctx.db.read() as conn:
        current = policy.current(conn)
        if current is None or (swarm.announced is not None and current <= swarm.announced):
            return
        row = policy.get(conn, current)
    if row is not None:
        await asyncio.to_thread(_announce, swarm, current, Envelope.model_validate_json(row.manifest))
