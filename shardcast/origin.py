"""The shardcast origin: publishes finished checkpoints as signed, sharded policy versions.

Runs inside the trainer process (`Origin.start()` serves the API of `shardcast.serving` in a
background thread). `publish(folder, version, step)`:
  1. hard-links (or copies, across file systems) the checkpoint's files into a hidden work
     folder `data_dir/versions/.tmp-N-*`, so the trainer may delete or replace its folder
     afterwards without touching what is served (it must not rewrite a published file in
     place: a hard link shares its bytes, and clients would then reject them);
  2. builds the manifest over that copy (shardcast.hashing: the same manifest as
     `protocol.manifest.build_manifest`, hashed on a thread pool; shard size from
     OriginConfig), signs it with the operator key and stores it as `.manifest.json`;
  3. fsyncs and renames the work folder to `versions/N` (a version is visible only whole),
     announces it to long-polls, and deletes all but the newest `keep_versions`.

Invariants: version numbers only grow (publishing N <= latest is refused, except the same
version with the same bytes again, which returns the stored manifest: a trainer that crashed
between publishing and telling the coordinator can simply publish again). On start-up the
origin reloads every complete version from disk, so a restarted origin serves what it served
before and its numbering continues.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.durable import fsync_dir
from protocol.envelope import Envelope
from protocol.errors import MessageError, SignatureError
from protocol.http import write_port_file
from protocol.identity import KeyPair
from protocol.manifest import open_manifest, sign_manifest
from protocol.messages import PolicyManifest
from shardcast.config import OriginConfig
from shardcast.errors import PublishError
from shardcast.hashing import build_manifest_parallel, checkpoint_files
from shardcast.layout import (
    clean_work_dirs, read_manifest, remove_tree, version_dirs, versions_to_prune,
    write_manifest,
)
from shardcast.metrics import NodeMetrics
from shardcast.node_server import NodeServer
from shardcast.serving import ShardLocation
from shardcast.signal import Signal

log = logging.getLogger("shardcast.origin")


@dataclass(frozen=True)
class _Published:
    folder: Path
    manifest: PolicyManifest
    envelope: Envelope
    envelope_bytes: bytes


class Origin:
    role = "origin"

    def __init__(self, cfg: OriginConfig, operator: KeyPair, run_id: str):
        self.cfg = cfg
        self.operator = operator
        self.run_id = run_id
        self.root = Path(cfg.data_dir) / "versions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.signal = Signal()
        self.metrics = NodeMetrics(self.role)
        self._lock = threading.RLock()
        self._publishing = threading.Lock()
        self._versions: dict[int, _Published] = {}
        self._server: NodeServer | None = None
        clean_work_dirs(self.root)
        self._load_existing()

    # -- start-up ------------------------------------------------------------------------------
    def _load_existing(self) -> None:
        for version, folder in sorted(version_dirs(self.root).items()):
            try:
                env = read_manifest(folder)
                manifest = open_manifest(env, self.operator.public)
            except (OSError, ValueError, MessageError, SignatureError) as exc:
                log.warning("ignoring %s: its manifest does not verify (%s)", folder, exc)
                continue
            if manifest.run_id != self.run_id:
                raise PublishError(
                    f"{self.root} holds versions of run {manifest.run_id!r}, not {self.run_id!r}; "
                    f"use another origin data_dir for a new run")
            if manifest.version != version:
                log.warning("ignoring %s: its manifest is for version %d", folder, manifest.version)
                continue
            self._versions[version] = _Published(folder, manifest, env,
                                                 env.model_dump_json().encode())
        self._update_gauges()
        if self._versions:
            log.info("origin reloaded versions %s from %s", sorted(self._versions), self.root)

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, checkpoint_dir: Path, version: int, step: int) -> Envelope:
        """Publish `checkpoint_dir` as `version`; returns the signed manifest."""
        t0 = time.monotonic()
        src = Path(checkpoint_dir)
        if not src.is_dir():
            raise PublishError(f"checkpoint folder {src} does not exist")
        if version < 0 or step < 0:
            raise PublishError("version and step must be >= 0")
        # `_publishing` serialises publishers for the seconds that hashing takes; `_lock`
        # guards the catalog only briefly, so the server thread never waits on a publish.
        with self._publishing:
            with self._lock:
                existing = self._versions.get(version)
                latest = self.latest_version()
            if existing is not None:
                return self._republish(existing, src, version, step)
            if latest is not None and version < latest:
                raise PublishError(f"version {version} is older than the latest published "
                                   f"version {latest}; versions must increase")
            work = self.root / f".tmp-{version}-{os.getpid()}"
            if work.exists():
                shutil.rmtree(work)
            try:
                _link_or_copy_tree(src, work)
                try:
                    manifest = build_manifest_parallel(work, run_id=self.run_id, version=version,
                                                       step=step, shard_size=self.cfg.shard_size)
                except MessageError as exc:
                    raise PublishError(str(exc)) from exc
                env = sign_manifest(manifest, self.operator)
                write_manifest(work, env)
                final = self.root / str(version)
                os.rename(work, final)
                fsync_dir(self.root)
            finally:
                if work.exists():
                    shutil.rmtree(work, ignore_errors=True)
            with self._lock:
                self._versions[version] = _Published(final, manifest, env,
                                                     env.model_dump_json().encode())
                doomed = self._prune()
                self._update_gauges()
            for folder in doomed:
                remove_tree(folder)
        self.metrics.publishes.inc()
        self.metrics.publish_seconds.observe(time.monotonic() - t0)
        self.signal.notify()
        log.info("published version %d (step %d): %d files, %d shards, %.1f MB in %.2f s",
                 version, step, len(manifest.files), len(manifest.shards),
                 manifest.total_bytes / 1e6, time.monotonic() - t0)
        return env

    def _republish(self, existing: _Published, src: Path, version: int, step: int) -> Envelope:
        again = build_manifest_parallel(src, run_id=self.run_id, version=version, step=step,
                                        shard_size=self.cfg.shard_size)
        if again.files != existing.manifest.files or step != existing.manifest.step:
            raise PublishError(f"version {version} is already published with other content; "
                               f"publish a new version number")
        return existing.envelope

    def _prune(self) -> list[Path]:
        """Drop old versions from the catalog (caller holds `_lock`); returns their folders."""
        doomed = []
        for v in versions_to_prune(list(self._versions), self.cfg.keep_versions):
            doomed.append(self._versions.pop(v).folder)
            log.info("pruned version %d", v)
        return doomed

    def _update_gauges(self) -> None:
        latest = self.latest_version()
        self.metrics.latest_version.set(-1 if latest is None else latest)
        self.metrics.versions_held.set(len(self._versions))

    # -- catalog (what serving.build_app reads) ------------------------------------------------
    def latest_version(self) -> int | None:
        with self._lock:
            return max(self._versions) if self._versions else None

    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._versions)

    complete_versions = versions

    def manifest(self, version: int) -> Envelope | None:
        pub = self._versions.get(version)
        return None if pub is None else pub.envelope

    def manifest_bytes(self, version: int) -> bytes | None:
        pub = self._versions.get(version)
        return None if pub is None else pub.envelope_bytes

    def shard(self, version: int, index: int) -> ShardLocation | None:
        pub = self._versions.get(version)
        if pub is None:
            raise LookupError(f"version {version} is not held here")
        if not 0 <= index < len(pub.manifest.shards):
            raise LookupError(f"version {version} has no shard {index}")
        s = pub.manifest.shards[index]
        return ShardLocation(pub.folder / s.path, s.offset, s.size, s.sha256)

    # -- serving -------------------------------------------------------------------------------
    def start(self) -> str:
        """Serve the origin API in a background thread; returns its URL."""
        if self._server is None:
            self.signal = Signal() if self.signal.closed else self.signal
            self._server = NodeServer(self, title="swarmrl shardcast origin", host=self.cfg.host,
                                      port=self.cfg.port, limits=self.cfg.front).start()
            write_port_file(Path(self.cfg.data_dir) / "origin.port", self._server.port)
            log.info("origin serving %s at %s", self.root, self._server.url)
        return self._server.url

    @property
    def url(self) -> str | None:
        return None if self._server is None else self._server.url

    def stop(self) -> None:
        if self._server is not None:
            self.signal.close()  # long-polls return at once instead of delaying the stop
            self._server.stop()
            self._server = None


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    """Hard-link every file a manifest would list from `src` into `dst` (copy when linking
    fails, e.g. across file systems), and make each durable."""
    dst.mkdir(parents=True)
    for rel, p in checkpoint_files(src):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copyfile(p, target)
        with open(target, "rb") as fh:
            os.fsync(fh.fileno())
