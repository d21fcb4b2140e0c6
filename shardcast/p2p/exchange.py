"""PeerShards: verified shards from other peers over libp2p, one more source for the client.

ShardcastClient (or any caller) uses it beside its relays:

    peers = PeerShards(node, operator_key)
    peers.peers_with(version)        -> peer ids that advertise the whole version
    peers.manifest(version)          -> the PolicyManifest, verified with the operator key
    peers.fetch_shard(version, i)    -> bytes, checked with protocol.manifest.check_shard
    peers.fetch_into(version, shards, sink)  -> writes verified shards through a
                                        shardcast.fetch.ShardSink (the client's partial
                                        checkpoint), e.g. for what relays could not supply

Integrity is exactly as from a relay: the manifest is the operator-signed one (embedded in
a version announcement, or asked of a peer and opened with the operator key, and compared
with the hash the announcement named), and every shard is checked against it before it is
returned. A peer that fails or serves a wrong byte gets a strike and is tried last; one with
`max_strikes` strikes is not asked again. Peer ids cost nothing, so a peer that has served
verified bytes is asked before untried ones (ranked by strikes less deliveries): thousands of
fresh keys that stall cannot push it behind them. Among equals, peers are tried in random
order so that load spreads. A peer that answers "busy" (its serving slots full, which
throw-away keys can arrange) is an attempt but no strike. A peer the node will not dial now (its address out of dial
budget: many keys naming one address, shardcast.p2p._host) is passed over without a strike
or an attempt. What is remembered per peer and per version is bounded.
Blocking; call it from a worker thread in asyncio code.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from protocol.envelope import Envelope
from protocol.errors import ProtocolError, SignatureError
from protocol.identity import PublicKey
from protocol.manifest import check_shard, open_manifest
from protocol.messages import PolicyManifest
from shardcast.errors import CorruptData, FetchFailed, VersionUnavailable
from shardcast.p2p import wire
from shardcast.p2p.announcements import manifest_digest
from shardcast.p2p.errors import DialDeferred, PeerBusy, PeerRequestFailed
from shardcast.p2p.node import P2PNode
from shardcast.p2p.view import PeerInfo
from shardcast.watch import verify_manifest_bytes

if TYPE_CHECKING:
    from protocol.messages import ShardEntry
    from shardcast.fetch import ShardSink

log = logging.getLogger("shardcast.p2p")
MAX_TRACKED_PEERS = 4096   # peers whose strikes and deliveries are remembered (the oldest forgotten)
MANIFESTS_KEPT = 16


class PeerShards:
    def __init__(self, node: P2PNode, operator_key: PublicKey, *, attempts: int = 4,
                 max_strikes: int = 3, rng: random.Random | None = None):
        self.node, self.operator_key = node, operator_key
        self.attempts, self.max_strikes = attempts, max_strikes
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._strikes: OrderedDict[str, int] = OrderedDict()
        self._delivered: OrderedDict[str, int] = OrderedDict()
        self._manifests: dict[int, tuple[Envelope, PolicyManifest]] = {}

    def peers_with(self, version: int) -> list[str]:
        return [p.peer_id for p in self._candidates(version)]

    def _candidates(self, version: int) -> list[PeerInfo]:
        with self._lock:
            strikes, delivered = dict(self._strikes), dict(self._delivered)
        peers = [p for p in self.node.peers_with(version) if strikes.get(p.peer_id, 0) < self.max_strikes]
        self.rng.shuffle(peers)
        return sorted(peers, key=lambda p: strikes.get(p.peer_id, 0) - delivered.get(p.peer_id, 0))

    def _strike(self, peer_id: str, n: int = 1) -> None:
        _count(self._lock, self._strikes, peer_id, n)

    def _credit(self, peer_id: str) -> None:
        _count(self._lock, self._delivered, peer_id, 1)

    def manifest_envelope(self, version: int) -> Envelope:
        return self._manifest(version)[0]

    def manifest(self, version: int) -> PolicyManifest:
        return self._manifest(version)[1]

    def _manifest(self, version: int) -> tuple[Envelope, PolicyManifest]:
        with self._lock:
            hit = self._manifests.get(version)
        if hit is not None:
            return hit
        info = self.node.view.version(version)
        if info is not None and info.manifest is not None:
            hit = (info.manifest, open_manifest(info.manifest, self.operator_key))
        else:
            want = info.manifest_sha256 if info is not None else None
            hit = self._ask_manifest(version, want)
        with self._lock:
            self._manifests[version] = hit
            for v in sorted(self._manifests)[:-MANIFESTS_KEPT]:
                del self._manifests[v]
        return hit

    def _ask_manifest(self, version: int, want_sha: str | None) -> tuple[Envelope, PolicyManifest]:
        peers = self._candidates(version)
        if not peers:
            raise VersionUnavailable(f"no peer advertises version {version}")
        req = wire.ShardRequest(run_id=self.node.run_id, op="manifest", version=version)
        asked = 0
        for peer in peers:
            if asked >= self.attempts:
                break
            asked += 1
            try:
                raw = self.node.request(peer, req, wire.MAX_MANIFEST_BYTES)
                env, manifest = verify_manifest_bytes(raw, self.operator_key, self.node.run_id)
            except DialDeferred:
                asked -= 1  # not dialled (its host is out of dial budget): no attempt, no strike
                continue
            except PeerBusy as exc:
                log.info("p2p: manifest %d from %s: %s", version, peer.peer_id, exc)  # an attempt, no strike
                continue
            except PeerRequestFailed as exc:
                log.info("p2p: manifest %d from %s failed: %s", version, peer.peer_id, exc)
                self._strike(peer.peer_id)
                continue
            except ProtocolError as exc:  # the message quotes none of the peer's bytes
                log.warning("p2p: peer %s served an invalid manifest for version %d: %s", peer.peer_id, version, exc)
                self._strike(peer.peer_id, self.max_strikes)
                continue
            if manifest.version != version or manifest.run_id != self.node.run_id or (
                    want_sha is not None and manifest_digest(env) != want_sha):
                log.warning("p2p: peer %s served another manifest than version %d's", peer.peer_id, version)
                self._strike(peer.peer_id, self.max_strikes)
                continue
            return env, manifest
        raise FetchFailed(f"no peer supplied a valid manifest for version {version}")

    def fetch_shard(self, version: int, index: int) -> bytes:
        """Shard `index` of `version` from some peer, verified against the signed manifest.
        Raises VersionUnavailable (nobody has it), FetchFailed or CorruptData."""
        manifest = self.manifest(version)
        if not 0 <= index < len(manifest.shards):
            raise FetchFailed(f"version {version} has {len(manifest.shards)} shards, not {index + 1}")
        shard = manifest.shards[index]
        peers = self._candidates(version)
        if not peers:
            raise VersionUnavailable(f"no peer advertises version {version}")
        req = wire.ShardRequest(run_id=self.node.run_id, op="shard", version=version, index=index)
        corrupt = asked = 0
        for peer in peers:
            if asked >= self.attempts:
                break
            asked += 1
            try:
                data = self.node.request(peer, req, shard.size)
            except DialDeferred:
                asked -= 1  # not dialled (its host is out of dial budget): no attempt, no strike
                continue
            except PeerBusy as exc:
                log.info("p2p: shard %d of version %d from %s: %s", index, version, peer.peer_id, exc)
                continue  # an attempt, no strike
            except PeerRequestFailed as exc:
                log.info("p2p: shard %d of version %d from %s failed: %s", index, version, peer.peer_id, exc)
                self._strike(peer.peer_id)
                continue
            try:
                check_shard(shard, data)
            except SignatureError as exc:
                log.warning("p2p: peer %s served a corrupt shard: %s", peer.peer_id, exc)
                self._strike(peer.peer_id, self.max_strikes)
                corrupt += 1
                continue
            self._credit(peer.peer_id)
            return data
        if asked and corrupt == asked:
            raise CorruptData(f"every peer asked ({asked}) served a corrupt shard {index} of version {version}")
        raise FetchFailed(f"no peer supplied shard {index} of version {version} ({asked} tried, "
                          f"{len(peers)} advertise it)")

    def fetch_into(self, version: int, shards: "list[ShardEntry]", sink: "ShardSink") -> int:
        """Fetch `shards` of `version` from peers, one at a time, writing each verified shard
        through `sink` (begin, write at the given offset, end, commit: the protocol of
        shardcast.fetch). Returns the bytes written; raises like `fetch_shard`."""
        written = 0
        for shard in shards:
            # `fetch_shard` checks the bytes against the manifest peers serve; they are written
            # into the caller's, so both must describe this shard alike (two signed manifests of
            # one version: an origin that lost its data folder and published the number again).
            theirs = self.manifest(version).shards
            if shard.index >= len(theirs) or theirs[shard.index] != shard:
                raise CorruptData(f"peers hold another signed manifest of version {version} than the "
                                  f"one being downloaded (shard {shard.index} differs)")
            data = self.fetch_shard(version, shard.index)
            fd, base = sink.begin(shard)
            try:
                view = memoryview(data)
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, view[done:], base + done)
            finally:
                sink.end(shard, fd)
            sink.commit(shard)
            written += len(data)
        return written


def _count(lock: threading.Lock, table: OrderedDict[str, int], peer_id: str, n: int) -> None:
    with lock:
        table[peer_id] = table.pop(peer_id, 0) + n
        while len(table) > MAX_TRACKED_PEERS:
            table.popitem(last=False)
