"""ShardcastClient: how workers, verifiers and the trainer's peers obtain policy versions.

    c = ShardcastClient(relays, operator_key, cache_dir)
    v = c.wait_for_version(after=None, timeout_s=30)   # long-poll: newest version > after
    path = c.fetch(v)                                   # verified checkpoint folder, cached
    c.close()

Trust: only the operator's public key. A manifest must verify against it (and match the
run, when `run_id` is given); every shard must match its hash in that manifest before it
counts; every file must match its whole-file hash before the version becomes visible.

Layout (shardcast.layout): complete versions at `cache_dir/N/` (each with `.manifest.json`),
downloads in progress at `cache_dir/.partial/N/` (shardcast.partial). `cache_dir/N` appears
only by renaming a finished, checked, fsynced partial folder, so a half-written checkpoint
is never visible there. A per-version lock file makes concurrent `fetch` calls (threads or
processes sharing the cache) download once. After a crash, `fetch` resumes: shards already
verified (and still intact on disk) are kept, only the others are downloaded.

Collaborators: shardcast.watch (manifests, long-polls), shardcast.fetch (parallel shard
downloads with failover), shardcast.selection (choice of relay by measured throughput and
success), shardcast.transfer (data connections: kept across downloads, and one pre-opened to
each of the best relays while `wait_for_version` waits, so a new version's first shard request
does not pay a TCP handshake on a slow link).

Untrusted sources cannot hold it: every request to a relay has a deadline, a byte cap and
identity encoding (shardcast.bounded for manifests and long-polls, shardcast.fetch and
shardcast.transfer for shards: a minimum rate, bodies capped at the manifest's sizes), so
`wait_for_version(after, timeout_s)` returns within `timeout_s` whatever relays do, and a
relay that stalls, drips or lies is dropped, ranked down, and the fetch completes from the
others (`FetchOptions` holds the limits).

With `peers` (a shardcast.p2p.PeerShards over the role's running libp2p node), the swarm
layer joins in, always beside HTTP and never trusted more: relays advertised on the run's
topic are used beside the configured ones (and dropped when their adverts are withdrawn or
expire; configured ones stay; which adverts are kept is the swarm view's rule: operator-
endorsed relays, plus a small budget of unendorsed ones; an unendorsed one gets shards only when
no other source is usable, `selection`); a version announced on the topic wins the race of
`wait_for_version` against the relays' long-polls (its embedded manifest verified like a
relay's); a manifest is taken from the swarm before relays are asked; shards the relays
cannot deliver (no relay, or no byte for `PEER_STALL_S`) come from peers, each checked
against the signed manifest; and a version that lands in the cache is advertised at once
(the node serves the cache when it is the node's store).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from protocol.durable import fsync_dir
from protocol.envelope import Envelope
from protocol.errors import MessageError, SignatureError
from protocol.identity import PublicKey
from protocol.messages import ShardEntry
from shardcast.bounded import in_daemon_thread, short
from shardcast.errors import FetchFailed, ShardcastError, VersionUnavailable
from shardcast.fetch import Downloader, FetchEvents, FetchOptions, ShardSink, prewarm
from shardcast.layout import (
    MANIFEST_NAME, read_manifest, remove_tree, version_dirs, versions_to_prune,
    write_manifest,
)
from shardcast.partial import PartialCheckpoint
from shardcast.selection import Sources
from shardcast.transfer import Connections
from shardcast.watch import Announced, fetch_manifest, verify_manifest_bytes, wait_for_newer

if TYPE_CHECKING:
    from shardcast.p2p.exchange import PeerShards

log = logging.getLogger("shardcast.client")
PARTIAL_DIR = ".partial"
PRUNE_GRACE_S = 120.0   # a version handed out this recently is not pruned
MANIFESTS_REMEMBERED = 16
PEER_STALL_S = 10.0     # with peers: a shard without a byte from any relay this long goes to peers


class ShardFallback(Protocol):
    """Another source of shards (shardcast.p2p.PeerShards fits): writes the given shards of
    `version` through `sink`, committing each only after it matched the signed manifest;
    raises a ShardcastError when it cannot."""

    def fetch_into(self, version: int, shards: list[ShardEntry], sink: ShardSink) -> object: ...


def _touched(folder: Path) -> Path:
    """Mark a version as just handed out (its folder's mtime), so pruning spares it a while."""
    os.utime(folder)
    return folder


class ShardcastClient:
    def __init__(self, relays: list[str], operator_key: PublicKey | str, cache_dir: Path, *,
                 run_id: str | None = None, keep_versions: int | None = None,
                 options: FetchOptions | None = None, durable: bool = True,
                 check_files: bool = False, events: FetchEvents | None = None,
                 fallback: ShardFallback | None = None, peers: "PeerShards | None" = None,
                 direct_io: bool = True):
        """`relays`: origin or relay URLs; `operator_key`: the key (or its hex) that signs
        manifests; `run_id`: when given, manifests of other runs are refused; `keep_versions`:
        complete versions kept in the cache (None: all; a version handed out in the last
        two minutes is never pruned, so several clients may share one cache); `durable`: fsync
        before a version becomes visible; `check_files`: also re-hash every assembled file against its
        whole-file hash. Off by default because it proves nothing more: the signed manifest's
        shards tile each file exactly (protocol.manifest.check_manifest_consistency) and every
        shard is hashed on arrival, so verified shards ARE the file; the second pass only costs
        a full re-read (it measured as the largest client CPU cost in bench/shardcast.py).
        Auditors still re-check whole files (`swarmrl audit reverify`); `events`: callbacks for metrics (bytes received, shards verified,
        corrupt shards, transfer errors); `fallback`: another source of shards (e.g.
        peers over libp2p, `shardcast.p2p.PeerShards`) for the shards the relays could not
        deliver; `peers`: the libp2p swarm layer (see the module docstring), also the
        fallback unless one is given; `relays` may then be empty (relays are learned);
        `direct_io`: write shards with O_DIRECT where the file system allows it (around the
        page cache: far less CPU per byte, see shardcast.fetch; the version is read from disk
        when it is loaded)."""
        if not relays and peers is None:
            raise ShardcastError("no shardcast relays configured: give at least one relay URL")
        for url in relays:
            if not str(url).startswith(("http://", "https://")):
                raise ShardcastError(f"relay {url!r} must be an http:// or https:// URL")
        self.operator_key = (PublicKey.from_hex(operator_key) if isinstance(operator_key, str)
                             else operator_key)
        self.cache_dir = Path(cache_dir)
        (self.cache_dir / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.keep_versions = keep_versions
        self.options = options or FetchOptions()
        if peers is not None and self.options.stall_s is None:
            self.options = replace(self.options, stall_s=PEER_STALL_S)
        self.durable = durable
        self.check_files = check_files
        self.direct_io = direct_io
        self.events = events
        self.fallback = fallback if fallback is not None else peers
        self.peers = peers
        self.sources = Sources(list(relays))
        self._configured = set(self.sources.urls)
        self._learned: set[str] = set()
        self._announced: dict[int, Announced] = {}
        self._abort = threading.Event()
        # data connections kept across downloads, one pre-opened per best relay while waiting
        self.conns = Connections(self.options.connect_timeout_s)

    # -- versions ------------------------------------------------------------------------------
    def wait_for_version(self, after: int | None, timeout_s: float) -> int | None:
        """Newest version > `after` announced by any relay (or on the swarm's topic, with
        `peers`) within `timeout_s`, else None."""
        self._merge_relays()
        prewarm(self.conns, self.sources, -1 if after is None else after + 1)
        found = wait_for_newer(self.sources, self.operator_key, after, timeout_s, self.run_id,
                               also=self._swarm_version if self.peers is not None else None)
        if found is None:
            return None
        self._remember(found)
        return found.version

    def _remember(self, ann: Announced) -> None:
        """Keep a verified manifest for `fetch`; only the newest few (they can be large)."""
        self._announced.setdefault(ann.version, ann)
        for v in sorted(self._announced)[:-MANIFESTS_REMEMBERED]:
            self._announced.pop(v, None)

    def offer_manifest(self, envelope: Envelope) -> int:
        """Hand over a signed manifest obtained elsewhere (e.g. the coordinator's GET
        /v1/policy), so `fetch` need not ask the relays for it. It is verified like any
        other (operator key, run); returns its version. Raises SignatureError/MessageError."""
        return self._accept(envelope, "offered").version

    def _accept(self, envelope: Envelope, source: str) -> Announced:
        """Verify a manifest from outside the relays (operator key, run) and remember it."""
        env, manifest = verify_manifest_bytes(envelope.model_dump_json().encode(),
                                              self.operator_key, self.run_id)
        ann = Announced(env, manifest, source)
        self._remember(ann)
        return ann

    def cached_versions(self) -> list[int]:
        """Complete versions in the local cache."""
        return sorted(v for v, p in version_dirs(self.cache_dir).items()
                      if (p / MANIFEST_NAME).exists())

    # -- fetching ------------------------------------------------------------------------------
    def fetch(self, version: int, progress: Callable[[int, int], None] | None = None) -> Path:
        """The folder of `version`, downloading and verifying it if it is not cached.

        `progress(done_bytes, total_bytes)` is called after each verified shard. Raises
        VersionUnavailable (no source has it, after waiting `options.manifest_wait_s` for one
        to learn of it), FetchFailed or CorruptData (all ShardcastError)."""
        if version < 0:
            raise VersionUnavailable(f"there is no version {version}: versions start at 0")
        final = self.cache_dir / str(version)
        if (final / MANIFEST_NAME).exists():
            return _touched(final)
        # The manifest first, the lock (a file that stays) only for a version that exists: a lock
        # taken first left `.partial/<N>.lock` behind for every version a lease named that no
        # source holds (a coordinator naming a new future version per lease: a file each, for ever).
        self._merge_relays()
        ann = (self._announced.get(version) or self._swarm_announced(version)
               or self._find_manifest(version))
        with self._version_lock(version):
            if (final / MANIFEST_NAME).exists():
                return _touched(final)
            if final.exists():
                raise ShardcastError(f"{final} exists but is not a shardcast version; move it away")
            self._download(ann, progress)
        self._prune(keep=version)
        if self.peers is not None:
            self.peers.node.refresh_have()
        return _touched(final)

    def _find_manifest(self, version: int) -> Announced:
        """The verified manifest of `version`. A relay may not know of a version yet when a
        worker learns of it from the coordinator, so wait (long-poll) up to
        `options.manifest_wait_s` for one to announce it before giving up."""
        deadline = time.monotonic() + self.options.manifest_wait_s
        saw_newer = False
        while True:
            try:
                return fetch_manifest(self.sources, self.operator_key, version, self.run_id,
                                      timeout_s=min(self.options.control_timeout_s,
                                                    max(1.0, deadline - time.monotonic())))
            except VersionUnavailable:
                from_peers = self._peer_manifest(version)
                if from_peers is not None:
                    return from_peers
                left = deadline - time.monotonic()
                hopeless = saw_newer or self.sources.next_usable_in() is None
                if left <= 0 or self._abort.is_set() or hopeless:
                    raise
                found = wait_for_newer(self.sources, self.operator_key, version - 1, min(left, 5.0),
                                       self.run_id)
                if found is not None and found.version == version:
                    return found
                if found is not None:
                    # Sources already hold something newer: `version` was pruned or skipped.
                    # Ask once more shortly (a relay may still be catching up), then give up.
                    saw_newer = True
                    time.sleep(0.5)

    def _download(self, ann: Announced, progress: Callable[[int, int], None] | None) -> None:
        version, manifest = ann.version, ann.manifest
        partial = self.cache_dir / PARTIAL_DIR / str(version)
        if partial.exists():
            try:
                same = read_manifest(partial).body == ann.envelope.body
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(partial)
        if not partial.exists():
            partial.mkdir(parents=True)
            write_manifest(partial, ann.envelope, durable=False)
        sink = PartialCheckpoint(partial, manifest, check_files=self.check_files, progress=progress,
                                 direct=self.direct_io)
        try:
            todo = sink.resume()
            if len(todo) < len(manifest.shards):
                log.info("version %d: resuming, %d of %d shards already verified", version,
                         len(manifest.shards) - len(todo), len(manifest.shards))
            try:
                Downloader(self.sources, self.options, self.events, abort=self._abort,
                           conns=self.conns).fetch_all(
                    version, todo, sink)
            except (FetchFailed, VersionUnavailable) as exc:
                if self.fallback is None:
                    raise
                rest = sink.missing()
                if self.sources.urls:
                    log.warning("version %d: relays failed (%s); asking the fallback source for %d "
                                "shards", version, exc, len(rest))
                else:
                    log.info("version %d: no relay known; asking the fallback source (peers) for %d "
                             "shards", version, len(rest))
                self.fallback.fetch_into(version, rest, sink)
            sink.finish(durable=self.durable)
        finally:
            sink.close()
        os.rename(partial, self.cache_dir / str(version))
        if self.durable:
            fsync_dir(self.cache_dir)
        log.info("version %d: %d files, %.1f MB verified and in place", version,
                 len(manifest.files), manifest.total_bytes / 1e6)

    # -- the libp2p swarm layer (with `peers`) ----------------------------------------------------
    def _merge_relays(self) -> None:
        """Use the relays advertised on the topic now, beside the configured ones."""
        if self.peers is None:
            return
        advertised = {r.url.rstrip("/"): r for r in self.peers.node.relays()}
        for url, r in advertised.items():
            if url not in self._configured and self.sources.add(url, vouched=r.endorsed):
                self._learned.add(url)
                log.info("relay %s learned from the swarm (advertised by %s, %s, region %r)", url,
                         r.signer_id, "endorsed by the operator" if r.endorsed else "not endorsed",
                         short(r.region, 64))
        for url in sorted(self._learned - set(advertised)):
            if self.sources.remove(url):
                self._learned.discard(url)
                log.info("relay %s is no longer advertised; not using it", url)

    def _verified(self, envelope: Envelope, source: str) -> Announced | None:
        try:
            return self._accept(envelope, source)
        except (MessageError, SignatureError) as exc:
            log.warning("a manifest from %s does not verify: %s; ignored", source, exc)
            return None

    def _swarm_announced(self, version: int) -> Announced | None:
        """`version`'s manifest as announced on the topic (embedded in the announcement)."""
        if self.peers is None:
            return None
        info = self.peers.node.view.version(version)
        if info is None or info.manifest is None:
            return None
        return self._verified(info.manifest, "p2p")

    def _peer_manifest(self, version: int) -> Announced | None:
        """`version`'s manifest asked of peers that hold it (when no relay has it)."""
        if self.peers is None or not self.peers.peers_with(version):
            return None
        try:
            env = self.peers.manifest_envelope(version)
        except ShardcastError as exc:
            log.info("version %d: no manifest from peers: %s", version, exc)
            return None
        return self._verified(env, "p2p-peer")

    async def _swarm_version(self, after: int, deadline: float) -> Announced | None:
        """Racer of `wait_for_newer`: the newest version > `after` announced on the topic."""
        import asyncio

        from shardcast.p2p.announcements import KIND_VERSION

        assert self.peers is not None
        node = self.peers.node
        sub = node.subscribe({KIND_VERSION}, loop=asyncio.get_running_loop(), maxsize=16)
        try:
            while True:
                newest = node.latest_version()
                if newest is not None and newest > after:
                    found = self._swarm_announced(newest)
                    if found is None:  # announced by hash only: ask the peers that hold it
                        found = await in_daemon_thread(self._peer_manifest, newest)
                    if found is not None:
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(sub.aget(), timeout=left)
                except TimeoutError:
                    return None
        finally:
            sub.close()

    @contextmanager
    def _version_lock(self, version: int):
        path = self.cache_dir / PARTIAL_DIR / f"{version}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _prune(self, keep: int) -> None:
        if self.keep_versions is None:
            return
        cached = self.cached_versions()
        now = time.time()
        written: dict[int, float] = {}
        for v in versions_to_prune(cached, self.keep_versions):
            try:
                written[v] = (self.cache_dir / str(v)).stat().st_mtime
            except FileNotFoundError:
                continue
        spared = 0
        # Most recently written first, not newest version first: a loader waiting for an
        # older version its leases allow (fetched after newer ones) must find it still there.
        for v in sorted(written, key=lambda v: written[v], reverse=True):
            if v == keep:
                continue
            # Another client sharing this cache (or this one) may have just handed it out
            # to be loaded: leave it for a later prune. At most keep_versions of them, though:
            # when versions come every second the grace would keep two minutes' worth, every
            # one of them on disk and re-listed in each p2p have-advert.
            if now - written[v] < PRUNE_GRACE_S and spared < self.keep_versions:
                spared += 1
                continue
            remove_tree(self.cache_dir / str(v))
        self._prune_partials(keep)

    def _prune_partials(self, keep: int) -> None:
        """Remove the unfinished downloads of versions older than every version the cache
        still holds, unless someone is fetching one now (its version lock is taken). A failed
        fetch leaves its folder so that a retry resumes it; once newer versions are in, nothing
        asks for it again, and a client that failed version after version (a relay serving bad
        shards, a link that drops) kept one whole checkpoint's worth of disk per failure. The
        lock files (empty) stay: removing one could let two fetches of a version lock
        different files."""
        kept = self.cached_versions()
        root = self.cache_dir / PARTIAL_DIR
        if not kept or not root.is_dir():
            return
        for entry in list(root.iterdir()):
            if not entry.name.isdigit() or not entry.is_dir():
                continue
            v = int(entry.name)
            if v >= min(kept) or v == keep:
                continue
            fd = os.open(root / f"{v}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being fetched: its fetcher finishes or fails it
                remove_tree(entry)
                log.info("removed the unfinished download of version %d (older than every cached version)", v)
            finally:
                os.close(fd)

    def close(self) -> None:
        self._abort.set()
        self.conns.close_idle()

    def __enter__(self) -> "ShardcastClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
