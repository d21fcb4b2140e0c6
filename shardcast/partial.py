"""A checkpoint being downloaded: `cache_dir/.partial/N/`, filled shard by shard.

The folder holds the checkpoint's files at their final sizes (sparse until filled), the
signed manifest (`.manifest.json`) and `.verified`, an append-only log of the indices of
shards whose bytes matched the manifest. After a crash the log says which shards to keep;
each of them is hashed again from disk before it counts (a torn write after a power loss
is caught), and only the others are downloaded again.

While shards are committed, `FileHashes` hashes each file front to back as soon as its next
shard is in place, so the whole-file check overlaps the download instead of adding a pass
at the end. `finish()` checks every file's hash, fsyncs the files and drops the log;
the caller then renames the folder into place.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from protocol.durable import fsync_dir
from protocol.manifest import sha256_file
from protocol.messages import PolicyManifest, ShardEntry
from shardcast.bounded import decimal
from shardcast.errors import CorruptData

VERIFIED_LOG = ".verified"
_READ = 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class FileHashes:
    """Whole-file sha256 computed in file order as shards become verified."""

    def __init__(self, folder: Path, manifest: PolicyManifest):
        self.folder = folder
        self.sizes = {f.path: f.size for f in manifest.files}
        self.expected = {f.path: f.sha256 for f in manifest.files}
        self._hashers = {p: hashlib.sha256() for p in self.sizes}
        self._next = {p: 0 for p in self.sizes}
        self._ready: dict[str, dict[int, int]] = {p: {} for p in self.sizes}
        self._lock = threading.Lock()
        self._drain = {p: threading.Lock() for p in self.sizes}

    def add(self, shard: ShardEntry) -> None:
        with self._lock:
            self._ready[shard.path][shard.offset] = shard.size
        self._advance(shard.path)

    def _advance(self, path: str) -> None:
        # One thread drains a file at a time; a shard added while another thread drains is
        # picked up by that thread or by the re-check after the lock is released.
        while True:
            if not self._drain[path].acquire(blocking=False):
                return
            try:
                self._drain_locked(path)
            finally:
                self._drain[path].release()
            with self._lock:
                if self._next[path] not in self._ready[path]:
                    return

    def _drain_locked(self, path: str) -> None:
        while True:
            with self._lock:
                size = self._ready[path].pop(self._next[path], None)
            if size is None:
                return
            start = self._next[path]
            _hash_range(self.folder / path, start, size, self._hashers[path])
            with self._lock:
                self._next[path] = start + size

    def check(self) -> None:
        """Raise CorruptData unless every file is complete and matches its hash."""
        for path, size in self.sizes.items():
            if (self.folder / path).stat().st_size != size:
                on_disk = (self.folder / path).stat().st_size
                raise CorruptData(f"{path} has {on_disk} bytes on disk, the signed manifest "
                                  f"says {size}")
            if self._next[path] != size:
                # Not all in order (cannot happen when every shard was added): hash from scratch.
                digest = sha256_file(self.folder / path)
            else:
                digest = self._hashers[path].hexdigest()
            if digest != self.expected[path]:
                raise CorruptData(f"{path} does not match its hash in the signed manifest")


def _hash_range(path: Path, offset: int, size: int, hasher) -> None:
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        pos, end = offset, offset + size
        while pos < end:
            block = os.pread(fd, min(_READ, end - pos), pos)
            if not block:
                raise CorruptData(f"{path} is shorter than the manifest says")
            hasher.update(block)
            pos += len(block)


def shard_digest_on_disk(path: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    _hash_range(path, offset, size, h)
    return h.hexdigest()


class PartialCheckpoint:
    """The `ShardSink` of a client download (see shardcast.fetch)."""

    def __init__(self, folder: Path, manifest: PolicyManifest, *, check_files: bool = True,
                 progress: Callable[[int, int], None] | None = None, direct: bool = False):
        """`direct`: also open each file with O_DIRECT (`direct_fd`), so downloads write
        around the page cache (shardcast.fetch.Downloader._write); ignored where the file
        system refuses it."""
        self.folder = Path(folder)
        self.manifest = manifest
        self.check_files = check_files
        self.progress = progress
        self.hashes = FileHashes(self.folder, manifest) if check_files else None
        self._lock = threading.Lock()
        self._done_bytes = 0
        self._committed: set[int] = set()
        self._fds: dict[str, int] = {}
        for f in manifest.files:
            p = self.folder / f.path
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size != f.size:
                os.ftruncate(fd, f.size)
            self._fds[f.path] = fd
        self._direct: dict[str, int] = {}
        if direct and hasattr(os, "O_DIRECT"):
            for f in manifest.files:
                try:
                    self._direct[f.path] = os.open(self.folder / f.path, os.O_WRONLY | os.O_DIRECT)
                except OSError:  # e.g. tmpfs: no direct I/O, everything goes buffered
                    break
        self._log = open(self.folder / VERIFIED_LOG, "a", encoding="ascii")

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._direct.values()]:
            os.close(fd)
        self._fds, self._direct = {}, {}
        if not self._log.closed:
            self._log.close()

    # -- resume ------------------------------------------------------------------------------
    def resume(self) -> list[ShardEntry]:
        """Commit the shards the log lists whose bytes on disk still match; return the rest."""
        try:
            text = (self.folder / VERIFIED_LOG).read_text()
            logged = {int(x) for x in text.split() if decimal(x)}
        except FileNotFoundError:
            logged = set()
        todo = []
        for s in self.manifest.shards:
            if s.size == 0:
                if s.sha256 != EMPTY_SHA256:
                    raise CorruptData(f"manifest gives empty shard {s.index} a non-empty hash")
                self.commit(s, log=False)
            elif s.index in logged and shard_digest_on_disk(
                    self.folder / s.path, s.offset, s.size) == s.sha256:
                self.commit(s, log=False)
            else:
                todo.append(s)
        return todo

    # -- ShardSink -----------------------------------------------------------------------------
    def begin(self, shard: ShardEntry) -> tuple[int, int]:
        return self._fds[shard.path], shard.offset

    def direct_fd(self, shard: ShardEntry) -> int | None:
        return self._direct.get(shard.path)

    def end(self, shard: ShardEntry, fd: int) -> None:
        pass

    def commit(self, shard: ShardEntry, log: bool = True) -> None:
        if log:
            with self._lock:
                self._log.write(f"{shard.index}\n")
                self._log.flush()
        if self.hashes is not None:
            self.hashes.add(shard)
        with self._lock:
            self._committed.add(shard.index)
            self._done_bytes += shard.size
            done = self._done_bytes
        if self.progress is not None:
            self.progress(done, self.manifest.total_bytes)

    def missing(self) -> list[ShardEntry]:
        """Shards not committed yet, in index order."""
        with self._lock:
            return [s for s in self.manifest.shards if s.index not in self._committed]

    # -- completion --------------------------------------------------------------------------
    def finish(self, durable: bool = True) -> None:
        """Check whole-file hashes, make the files durable and drop the log."""
        if self.hashes is not None:
            self.hashes.check()
        if durable:
            for fd in self._fds.values():
                os.fsync(fd)
        self.close()
        (self.folder / VERIFIED_LOG).unlink(missing_ok=True)
        if durable:
            fsync_dir(self.folder)
