"""What a peer serves over libp2p streams: verified shards already on its disk.

`ShardStore` is the small interface the node's stream handler reads from; `FolderStore`
implements it over the folder layouts of `shardcast.layout`, read-only:

    client cache   cache_dir/N/<checkpoint files> + N/.manifest.json   FolderStore(cache_dir)
    origin         data_dir/versions/N/<files>   + N/.manifest.json   FolderStore(data_dir/"versions")
    relay          data_dir/versions/N/shards/<index> + N/.manifest.json

Only folders named by a version number are looked at (work folders are hidden, so nothing
half-written is ever served), and a version is offered only when its manifest opens with
the operator key and every shard's bytes are present with the right size. Bytes are not
re-hashed here: the receiver checks every shard against the signed manifest anyway, and
the owners of these folders only ever rename verified data into place.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.identity import PublicKey
from protocol.manifest import open_manifest
from protocol.messages import PolicyManifest
from shardcast.layout import MANIFEST_NAME, read_manifest, version_dirs


class ShardStore(Protocol):
    """Read-only access to verified versions; every method is thread-safe."""

    def versions(self) -> list[int]:
        """Versions held whole (every shard present), ascending."""

    def manifest_envelope(self, version: int) -> Envelope | None:
        """The operator-signed manifest of a held version."""

    def read_shard(self, version: int, index: int) -> bytes | None:
        """The bytes of shard `index` of `version`, or None when not held."""


class FolderStore:
    def __init__(self, root: Path, operator_key: PublicKey):
        self.root = Path(root)
        self.operator_key = operator_key
        self._lock = threading.Lock()
        self._manifests: dict[int, tuple[float, Envelope, PolicyManifest]] = {}

    def _manifest(self, version: int) -> tuple[Envelope, PolicyManifest] | None:
        folder = self.root / str(version)
        try:
            mtime = (folder / MANIFEST_NAME).stat().st_mtime
        except OSError:
            return None
        with self._lock:
            hit = self._manifests.get(version)
        if hit is not None and hit[0] == mtime:
            return hit[1], hit[2]
        try:
            env = read_manifest(folder)
            manifest = open_manifest(env, self.operator_key)
        except (OSError, ValueError, ProtocolError):
            return None
        if manifest.version != version:
            return None
        with self._lock:
            self._manifests[version] = (mtime, env, manifest)
        return env, manifest

    def _locate(self, version: int, manifest: PolicyManifest, index: int) -> tuple[Path, int] | None:
        shard = manifest.shards[index]
        folder = self.root / str(version)
        single = folder / "shards" / str(index)
        if _size(single) == shard.size:
            return single, 0
        whole = folder / shard.path
        if _size(whole) == next(f.size for f in manifest.files if f.path == shard.path):
            return whole, shard.offset
        return None

    def versions(self) -> list[int]:
        out = []
        for v in sorted(version_dirs(self.root)):
            hit = self._manifest(v)
            if hit is not None and all(self._locate(v, hit[1], s.index) for s in hit[1].shards):
                out.append(v)
        return out

    def manifest_envelope(self, version: int) -> Envelope | None:
        hit = self._manifest(version)
        return None if hit is None else hit[0]

    def read_shard(self, version: int, index: int) -> bytes | None:
        hit = self._manifest(version)
        if hit is None or not 0 <= index < len(hit[1].shards):
            return None
        where = self._locate(version, hit[1], index)
        if where is None:
            return None
        path, offset = where
        size = hit[1].shards[index].size
        try:
            with open(path, "rb") as fh:
                data = os.pread(fh.fileno(), size, offset)
        except OSError:
            return None
        return data if len(data) == size else None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
