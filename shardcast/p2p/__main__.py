"""`python -m shardcast.p2p`: one swarm node as a process, scriptable over stdin/stdout.

For operators (a standalone bootstrap peer; watching what a run announces) and for the
multi-process integration test. It prints one JSON object per line on stdout:

    {"event": "ready", "peer_id": ..., "addrs": [...]}
    {"event": "announcement", "kind": ..., "signer": ..., "body": {...}, "received_at": t}
    {"event": "ok", "cmd": ..., ...result}    or    {"event": "error", "cmd": ..., "error": ...}

and reads one JSON command per line on stdin (EOF or {"cmd": "stop"} stops the node):

    {"cmd": "announce_version", "manifest_file": PATH}   # key must be operator's or coordinator's
    {"cmd": "advertise_relay", "url": URL, "region": R, "capacity_mbps": C}
    {"cmd": "withdraw_relay", "url": URL}
    {"cmd": "notice", "text": T, "level": L}
    {"cmd": "state"}    latest version, relays, peers holding versions, counters, connected peers
    {"cmd": "fetch", "version": V}   every shard from peers, verified, assembled into --serve-dir/V

Example (a bootstrap peer for run r1 on port 4001):
    python -m shardcast.p2p --run-id r1 --operator-key HEX --key-file coord.key --listen-port 4001
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from protocol.durable import fsync_dir
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.identity import KeyPair, PublicKey
from shardcast.errors import CorruptData
from shardcast.layout import write_manifest
from shardcast.p2p.config import P2PConfig
from shardcast.p2p.exchange import PeerShards
from shardcast.p2p.node import P2PNode
from shardcast.p2p.store import FolderStore

_out_lock = threading.Lock()


def emit(**event) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shardcast.p2p", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-id", required=True)
    p.add_argument("--operator-key", required=True, help="hex public key that signs manifests")
    p.add_argument("--coordinator-key", default="", help="hex public key of the coordinator")
    p.add_argument("--key-file", type=Path, required=True, help="this node's identity (created if missing)")
    p.add_argument("--role", default="peer")
    p.add_argument("--serve-dir", type=Path, default=None, help="versions folder to serve and fetch into")
    p.add_argument("--config-json", default="{}", help="P2PConfig fields as JSON")
    p.add_argument("--listen-port", type=int, default=None)
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def assemble(peers: PeerShards, version: int, dest_root: Path) -> dict:
    """Fetch every shard of `version` from peers and publish it whole as dest_root/version."""
    env = peers.manifest_envelope(version)
    manifest = peers.manifest(version)
    work = dest_root / f".tmp-{version}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    handles = {}
    try:
        for f in manifest.files:
            (work / f.path).parent.mkdir(parents=True, exist_ok=True)
            handles[f.path] = open(work / f.path, "wb")
        for shard in manifest.shards:
            data = peers.fetch_shard(version, shard.index)
            os.pwrite(handles[shard.path].fileno(), data, shard.offset)
    finally:
        for fh in handles.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
    for f in manifest.files:
        digest = hashlib.sha256((work / f.path).read_bytes()).hexdigest()
        if digest != f.sha256:
            raise CorruptData(f"{f.path} does not match the manifest after assembly")
    write_manifest(work, env)
    os.rename(work, dest_root / str(version))
    fsync_dir(dest_root)
    return {"version": version, "bytes": manifest.total_bytes, "shards": len(manifest.shards)}


def handle(node: P2PNode, peers: PeerShards | None, serve_dir: Path | None, cmd: dict) -> dict:
    name = cmd.get("cmd")
    if name == "announce_version":
        env = Envelope.model_validate_json(Path(cmd["manifest_file"]).read_bytes())
        published_at = time.time()  # taken before publishing, so latencies measured from it are not flattered
        node.announce_version(env)
        return {"published_at": published_at}
    if name == "advertise_relay":
        node.advertise_relay(cmd["url"], region=cmd.get("region", ""), capacity_mbps=float(cmd.get("capacity_mbps", 0)))
        return {}
    if name == "withdraw_relay":
        node.withdraw_relay(cmd["url"])
        return {}
    if name == "notice":
        node.notice(cmd["text"], level=cmd.get("level", "info"))
        return {}
    if name == "state":
        now = time.time()
        return {
            "latest": node.latest_version(),
            "relays": [r.url for r in node.view.relays(now)],
            "peers": {p.peer_id: list(p.versions) for p in node.view.peers(now)},
            "counters": node.counters.snapshot(),
            "connected": node.connected_peers(),
        }
    if name == "fetch":
        if peers is None or serve_dir is None:
            raise ProtocolError("fetch needs --serve-dir")
        t0 = time.time()
        result = assemble(peers, int(cmd["version"]), serve_dir)
        node.refresh_have()
        return {**result, "seconds": time.time() - t0}
    raise ProtocolError(f"unknown command {name!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg_fields = json.loads(args.config_json)
    if args.listen_port is not None:
        cfg_fields["listen_port"] = args.listen_port
    if args.bootstrap:
        cfg_fields["bootstrap"] = args.bootstrap
    cfg = P2PConfig(**cfg_fields)
    key = KeyPair.load_or_create(args.key_file)
    operator = PublicKey.from_hex(args.operator_key)
    coordinator = PublicKey.from_hex(args.coordinator_key) if args.coordinator_key else None
    store = None
    if args.serve_dir is not None:
        args.serve_dir.mkdir(parents=True, exist_ok=True)
        store = FolderStore(args.serve_dir, operator)
    node = P2PNode(cfg, key, args.run_id, operator, coordinator, store, role=args.role)
    addrs = node.start()
    peers = PeerShards(node, operator) if store is not None else None
    sub = node.subscribe()

    def pump() -> None:
        while node.running:
            ann = sub.get(timeout=0.2)
            if ann is not None:
                emit(event="announcement", kind=ann.kind, signer=ann.signer_id,
                     body=ann.body.model_dump(mode="json", exclude={"manifest"}), received_at=time.time())

    threading.Thread(target=pump, name="p2p-events", daemon=True).start()
    emit(event="ready", peer_id=node.peer_id, addrs=addrs)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
                if cmd.get("cmd") == "stop":
                    break
                emit(event="ok", cmd=cmd.get("cmd"), **handle(node, peers, args.serve_dir, cmd))
            except (ProtocolError, ValueError, KeyError, OSError) as exc:
                emit(event="error", cmd=line.strip()[:200], error=f"{type(exc).__name__}: {exc}")
    finally:
        node.stop()
        emit(event="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
