"""The shardcast relay (`swarmrl relay --upstream URL --operator-key HEX`).

A relay mirrors one or more upstreams (the origin or other relays, so trees of any depth
work) and serves the same API (shardcast.serving) to clients and to relays below it. It
trusts only the operator key:

- a long-poll on every upstream (shardcast.watch) learns of a new version within one round
  trip; the manifest must verify before anything else happens; meanwhile a data connection
  to the best upstreams is kept open (shardcast.fetch.prewarm), so the first shard request
  needs no handshake;
- the version is announced downstream as soon as its manifest verified, and its shards are
  downloaded in index order by `parallel` threads (shardcast.fetch; the first shard of a
  version alone, at the full upstream rate, as every client's first byte waits for it), each streamed to
  `versions/N/shards/.I.part`, hashed on arrival, and renamed to `versions/N/shards/I` only
  when it matched: a request for shard I is served from that file, and one that arrives
  earlier waits until it exists (pipelining: clients download version N while the relay is
  still receiving it). A relay never serves a byte it has not verified;
- on start-up every shard file on disk is hashed again before it is served (a crash or a
  power loss cannot make it serve a torn file), and unfinished versions resume;
- only the newest `keep_versions` versions are kept;
- one run only: the configured `run_id`, else the run of the first manifest it holds or
  mirrors (pinned from then on). A manifest of another run, even one the operator signed, is
  never mirrored nor served (an upstream that offers one is avoided as hostile), and
  versions of another run found on disk at start-up are deleted;
- every request upstream is bounded (shardcast.bounded, shardcast.fetch): an upstream that
  stalls, drips, bloats or compresses its answers is dropped and ranked down;
- each watch round first catches up (`_catch_up`): every upstream is asked at once for its
  listing and for the manifests of the newest versions it listed, with a short deadline per
  answer and one for the round; an upstream that lists what it cannot serve is not consulted
  again for a while (its long-polls go on).

Threads: the public port is served by shardcast.front (shard bodies with sendfile) in the
main thread, the rest of the API by uvicorn in a background thread behind it; the watcher
and the downloader are daemon threads that talk to the servers only through the `Catalog`
methods and `Signal`.

Swarm layer (`cfg.p2p`, shardcast.p2p.roles.RelaySwarm): with libp2p installed and a bootstrap
peer configured, the relay advertises itself on the run's topic under its own key
(`data_dir/relay.key`, created if missing), so workers find it without an operator editing a
list, serves its verified shards to peers over libp2p streams, and withdraws the advert
when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol.envelope import Envelope
from protocol.errors import MessageError, SignatureError
from protocol.identity import PublicKey
from protocol.manifest import open_manifest
from protocol.messages import PolicyManifest, ShardEntry
from shardcast.bounded import SOURCE_ERRORS, decimal, run_bounded, short
from shardcast.config import RelayConfig
from shardcast.errors import RefusedAnswer, ShardcastError
from shardcast.fetch import Downloader, FetchEvents, FetchOptions, prewarm
from shardcast.layout import (
    clean_work_dirs, read_manifest, remove_tree, version_dirs, versions_to_prune,
    write_manifest,
)
from shardcast.metrics import NodeMetrics
from shardcast.node_server import NodeServer
from shardcast.partial import shard_digest_on_disk
from shardcast.selection import Sources
from shardcast.serving import ShardLocation
from shardcast.signal import Signal
from shardcast.transfer import Connections
from shardcast.watch import Announced, ask_manifest, ask_versions, wait_for_newer

log = logging.getLogger("shardcast.relay")
WATCH_CHUNK_S = 30.0
MIRROR_RETRY_MAX_S = 30.0
CATCH_UP_S = 10.0              # one catch-up round, all upstreams together
CATCH_UP_ASK_S = 5.0           # one listing or manifest answer of one upstream, in a catch-up
CATCH_UP_DEMOTE_S = 30.0       # an upstream that failed a catch-up is skipped this long (doubling)
CATCH_UP_DEMOTE_MAX_S = 600.0


@dataclass
class _Mirrored:
    folder: Path
    manifest: PolicyManifest
    envelope: Envelope
    envelope_bytes: bytes
    verified: set[int] = field(default_factory=set)
    abort: threading.Event = field(default_factory=threading.Event)
    retry_at: float = 0.0       # monotonic time before which a failed mirror is not retried
    failures: int = 0

    @property
    def complete(self) -> bool:
        return len(self.verified) == len(self.manifest.shards)


class _ShardFiles:
    """ShardSink of a relay: one file per shard, renamed into place once verified."""

    def __init__(self, relay: "Relay", version: int, m: _Mirrored):
        self.relay, self.version, self.m = relay, version, m
        self.dir = m.folder / "shards"
        self._direct: dict[int, int] = {}

    def begin(self, shard: ShardEntry) -> tuple[int, int]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        return os.open(self.dir / f".{shard.index}.part", flags, 0o644), 0

    def direct_fd(self, shard: ShardEntry) -> int | None:
        """The same file with O_DIRECT (see shardcast.fetch.Downloader._write), or None."""
        if not self.relay.cfg.direct_io or not hasattr(os, "O_DIRECT"):
            return None
        try:
            fd = os.open(self.dir / f".{shard.index}.part", os.O_WRONLY | os.O_DIRECT)
        except OSError:
            return None
        self._direct[shard.index] = fd
        return fd

    def end(self, shard: ShardEntry, fd: int) -> None:
        os.close(fd)
        direct = self._direct.pop(shard.index, None)
        if direct is not None:
            os.close(direct)

    def commit(self, shard: ShardEntry) -> None:
        os.rename(self.dir / f".{shard.index}.part", self.dir / str(shard.index))
        self.relay._shard_verified(self.version, shard.index)


class Relay:
    role = "relay"

    def __init__(self, cfg: RelayConfig):
        self.cfg = cfg
        self.operator_key = PublicKey.from_hex(cfg.operator_key)
        self.root = Path(cfg.data_dir) / "versions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.signal = Signal()
        self.metrics = NodeMetrics(self.role)
        self.sources = Sources(list(cfg.upstreams), on_hostile=self._on_hostile)
        self.run_id: str | None = cfg.run_id or None
        self._lock = threading.RLock()
        self._versions: dict[int, _Mirrored] = {}
        self._pending = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.conns = Connections(FetchOptions().connect_timeout_s)  # upstream data connections, kept
        self._demoted: dict[str, tuple[float, int]] = {}  # url -> (skipped in catch-up until, times)
        clean_work_dirs(self.root)
        self._load_existing()

    # -- start-up ------------------------------------------------------------------------------
    def _load_existing(self) -> None:
        opened: list[tuple[int, Path, Envelope, PolicyManifest]] = []
        for version, folder in sorted(version_dirs(self.root).items()):
            try:
                env = read_manifest(folder)
                manifest = open_manifest(env, self.operator_key)
                if manifest.version != version:
                    raise MessageError(f"manifest is for version {manifest.version}")
            except (OSError, ValueError, MessageError, SignatureError) as exc:
                log.warning("deleting %s: %s", folder, exc)
                remove_tree(folder)
                continue
            opened.append((version, folder, env, manifest))
        if self.run_id is None and opened:
            self.run_id = opened[-1][3].run_id  # the newest version's run
        for version, folder, env, manifest in opened:
            if manifest.run_id != self.run_id:
                log.warning("deleting %s: it is a version of run %r, this relay serves run %r", folder,
                            manifest.run_id, self.run_id)
                remove_tree(folder)
                continue
            m = _Mirrored(folder, manifest, env, env.model_dump_json().encode())
            shards_dir = folder / "shards"
            shards_dir.mkdir(exist_ok=True)
            for p in shards_dir.iterdir():
                if not decimal(p.name):
                    p.unlink(missing_ok=True)
                    continue
                i = int(p.name)
                ok = i < len(manifest.shards) and p.stat().st_size == manifest.shards[i].size and \
                    shard_digest_on_disk(p, 0, manifest.shards[i].size) == manifest.shards[i].sha256
                if ok:
                    m.verified.add(i)
                else:
                    log.warning("deleting %s: it does not match the manifest", p)
                    p.unlink()
            self._versions[version] = m
            log.info("relay holds version %d (%d of %d shards verified)", version, len(m.verified),
                     len(manifest.shards))
        self._update_gauges()

    # -- catalog (read by serving.build_app) ---------------------------------------------------
    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._versions)

    def complete_versions(self) -> list[int]:
        with self._lock:
            return sorted(v for v, m in self._versions.items() if m.complete)

    def manifest_bytes(self, version: int) -> bytes | None:
        m = self._versions.get(version)
        return None if m is None else m.envelope_bytes

    def shard(self, version: int, index: int) -> ShardLocation | None:
        m = self._versions.get(version)
        if m is None:
            raise LookupError(f"version {version} is not held here")
        if not 0 <= index < len(m.manifest.shards):
            raise LookupError(f"version {version} has no shard {index}")
        if index not in m.verified:
            return None
        s = m.manifest.shards[index]
        return ShardLocation(m.folder / "shards" / str(index), 0, s.size, s.sha256)

    # -- mirroring -----------------------------------------------------------------------------
    def start(self) -> None:
        loops = ((self._watch_loop, "relay-watch"), (self._download_loop, "relay-download"))
        for target, name in loops:
            t = threading.Thread(target=target, daemon=True, name=name)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for m in self._versions.values():
                m.abort.set()
            self._pending.notify_all()
        for t in self._threads:
            # The watcher may sit in a long-poll on an upstream (up to WATCH_CHUNK_S); it is a
            # daemon that writes nothing once stopping (`_adopt`), so it is not waited for long.
            t.join(timeout=0.5 if t.name == "relay-watch" else 5)
        self.conns.close_idle()

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch_once()
            except Exception:  # an upstream's answer nobody foresaw must not end the watching
                log.exception("watching upstreams failed; going on in 1 s")
                self._stop.wait(1.0)

    def _watch_once(self) -> None:
        self._catch_up()
        with self._lock:
            newest = max(self._versions) if self._versions else None
        prewarm(self.conns, self.sources, -1 if newest is None else newest + 1)
        try:
            ann = wait_for_newer(self.sources, self.operator_key, newest, WATCH_CHUNK_S, self.run_id)
        except (*SOURCE_ERRORS, OSError) as exc:
            log.warning("watching upstreams failed: %s", exc)
            self._stop.wait(1.0)
            return
        if ann is not None:
            self._adopt(ann)

    def _catch_up(self) -> None:
        """Adopt versions that upstreams hold and this relay lacks, among the newest kept.

        Every upstream not demoted is asked at once for its listing, and each for the
        manifests of the newest versions it listed (itself: it claims to hold them), racing
        the others: a version is adopted as soon as one upstream served its manifest. Each
        answer has CATCH_UP_ASK_S, the round CATCH_UP_S in all, and an upstream whose listing
        failed or was refused, or that did not serve a version it listed, is not consulted
        again for a backoff (`_demote`). Asked one after the other, an upstream ranked first
        that listed made-up versions and dripped their manifests held the round (and the
        long-poll watch behind it) for ~45 s."""
        now = time.monotonic()
        urls = [u for u in self.sources.ranked() if self._demoted.get(u, (0.0, 0))[0] <= now]
        if not urls:
            return
        run_bounded(lambda http: self._catch_up_round(http, urls), connections=2 * len(urls))

    async def _catch_up_round(self, http, urls: list[str]) -> None:
        async def one(url: str) -> None:
            try:
                listed = await ask_versions(http, url, CATCH_UP_ASK_S)
            except (RefusedAnswer, ValueError) as exc:  # late, bloated, compressed, not a listing
                self.sources.failure(url, f"versions: {type(exc).__name__}: {short(exc)}")
                self._demote(url, f"its listing was refused: {short(exc)}")
                return
            except SOURCE_ERRORS as exc:  # unreachable: benched, asked again next round
                self.sources.failure(url, f"versions: {type(exc).__name__}: {short(exc)}")
                return
            for v in sorted(listed, reverse=True)[: self.cfg.keep_versions]:
                with self._lock:
                    held = set(self._versions)
                if v in held or self._stop.is_set():
                    continue
                if len(held) >= self.cfg.keep_versions and v < min(held):
                    break  # it (and every older one) would be pruned at once
                ann = await ask_manifest(http, self.sources, url, self.operator_key, v, self.run_id,
                                         CATCH_UP_ASK_S)
                if ann is None:
                    self._demote(url, f"it listed version {v} and did not serve its manifest")
                    return
                self._adopt(ann)
            self._demoted.pop(url, None)

        tasks = [asyncio.create_task(one(u)) for u in urls]
        try:
            await asyncio.wait(tasks, timeout=CATCH_UP_S)
        finally:
            late = [not t.done() for t in tasks]
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for url, was_late, r in zip(urls, late, results, strict=True):
                if was_late:
                    self.sources.failure(url, f"catch-up: not done within {CATCH_UP_S:g} s")
                    self._demote(url, f"its catch-up took over {CATCH_UP_S:g} s")
                elif isinstance(r, Exception):  # nobody foresaw it: logged, the round goes on
                    log.error("catching up from %s failed: %s: %s", url, type(r).__name__, short(r))

    def _demote(self, url: str, why: str) -> None:
        """Skip `url` in catch-up rounds for a backoff that doubles each time (up to
        CATCH_UP_DEMOTE_MAX_S) until a round with it goes through; long-polls go on."""
        _until, n = self._demoted.get(url, (0.0, 0))
        wait = min(CATCH_UP_DEMOTE_MAX_S, CATCH_UP_DEMOTE_S * 2 ** n)
        self._demoted[url] = (time.monotonic() + wait, n + 1)
        log.warning("upstream %s: %s; not consulted to catch up for %.0f s", url, why, wait)

    def _adopt(self, ann: Announced) -> None:
        """Hold version `ann` (its manifest verified): announce it, queue its shards, prune.
        Only the watch thread calls this; the lock is held for the catalog update alone, so
        the server thread never waits on disk work."""
        version = ann.version
        if self.run_id is None:
            self.run_id = ann.manifest.run_id
            log.info("relay serves run %r (the run of the first version mirrored)", self.run_id)
        elif ann.manifest.run_id != self.run_id:  # only with a racer that skipped the run check
            self.sources.hostile(ann.source, f"offered version {version} of run {ann.manifest.run_id!r}")
            return
        with self._lock:
            if version in self._versions or self._stop.is_set():
                return
        work = self.root / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "shards").mkdir(parents=True)
        # No fsync on this path (it is between the upstream's announcement and ours): after a
        # crash, start-up re-verifies every manifest and shard on disk and drops what is torn.
        write_manifest(work, ann.envelope, durable=False)
        final = self.root / str(version)
        os.rename(work, final)
        doomed = []
        with self._lock:
            self._versions[version] = _Mirrored(final, ann.manifest, ann.envelope,
                                                ann.envelope.model_dump_json().encode())
            for v in versions_to_prune(list(self._versions), self.cfg.keep_versions):
                old = self._versions.pop(v)
                old.abort.set()
                doomed.append((v, old.folder))
            self._update_gauges()
            self._pending.notify_all()
        log.info("version %d announced by %s: %d shards, %.1f MB", version, ann.source,
                 len(ann.manifest.shards), ann.manifest.total_bytes / 1e6)
        self.signal.notify()
        for v, folder in doomed:
            remove_tree(folder)
            log.info("pruned version %d", v)

    def _download_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                todo = [(v, m) for v, m in self._versions.items()
                        if not m.complete and not m.abort.is_set()]
                due = [(v, m) for v, m in todo if m.retry_at <= now]
                if not due:
                    wait = min((m.retry_at - now for _, m in todo), default=5.0)
                    self._pending.wait(timeout=max(0.05, min(wait, 5.0)))
                    continue
                version, m = max(due, key=lambda x: x[0])  # the newest first: clients want it
            self._mirror(version, m)

    def _mirror(self, version: int, m: _Mirrored) -> None:
        todo = [s for s in m.manifest.shards if s.index not in m.verified]
        events = FetchEvents(
            on_bytes=lambda url, n: self.metrics.bytes_fetched.inc(n),
            on_error=lambda url, reason: self.metrics.fetch_errors.labels(url).inc(),
        )
        opts = FetchOptions(parallel=self.cfg.parallel)
        dl = Downloader(self.sources, opts, events, abort=m.abort, conns=self.conns)
        try:
            if not m.verified and len(todo) > 1:
                # The first shard alone, at the whole upstream rate: every client's first byte
                # waits for it (a relay serves verified shards only), and shared with
                # `parallel` - 1 others it arrived that many times later (issue 22).
                dl.fetch_all(version, todo[:1], _ShardFiles(self, version, m))
                todo = todo[1:]
            dl.fetch_all(version, todo, _ShardFiles(self, version, m))
            log.info("version %d complete: %d shards verified", version, len(m.manifest.shards))
        except (ShardcastError, OSError, *SOURCE_ERRORS) as exc:
            if m.abort.is_set() or self._stop.is_set():
                return
            # Back off per version (an upstream may have pruned it; newer versions go first).
            m.failures += 1
            delay = min(MIRROR_RETRY_MAX_S, 0.5 * 2 ** (m.failures - 1))
            m.retry_at = time.monotonic() + delay
            log.warning("mirroring version %d stopped: %s; retrying in %.1f s", version, exc, delay)

    def _shard_verified(self, version: int, index: int) -> None:
        with self._lock:
            m = self._versions.get(version)
            if m is not None:
                m.verified.add(index)
        self.metrics.shards_verified.inc()
        self.signal.notify()

    def _on_hostile(self, url: str, reason: str) -> None:
        self.metrics.verify_failures.labels(url).inc()

    def _update_gauges(self) -> None:
        self.metrics.versions_held.set(len(self._versions))
        self.metrics.latest_version.set(max(self._versions) if self._versions else -1)


def run(cfg: RelayConfig) -> None:
    """`swarmrl relay`: mirror the upstreams and serve until SIGINT/SIGTERM."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=cfg.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    from shardcast.p2p.roles import RelaySwarm

    relay = Relay(cfg)
    relay.start()
    port_file = Path(cfg.data_dir) / "relay.port"
    port_file.unlink(missing_ok=True)  # a previous run's port must not be advertised
    swarm = RelaySwarm(cfg, relay, Path(cfg.data_dir) / "relay.key", port_file)
    swarm.start()
    try:
        NodeServer(relay, title="swarmrl shardcast relay", host=cfg.host, port=cfg.port,
                   max_transfers=cfg.max_transfers, limits=cfg.front).run(port_file, on_exit=relay.signal.close)
    finally:
        swarm.stop()
        relay.stop()
