"""Policy manifests: building one from a checkpoint folder, signing it, checking shards.

The origin calls `build_manifest` over a finished checkpoint folder and `seal`s it with
the operator key; relays, workers, verifiers and the coordinator call `open_manifest`
with the operator's public key and then `check_shard` on every shard they receive.
Hashing streams the files, so no checkpoint is ever held in memory.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from protocol.envelope import AUDIENCE_SWARM, Envelope, open_envelope, seal
from protocol.errors import MessageError, SignatureError
from protocol.identity import KeyPair, PublicKey
from protocol.messages import KIND_POLICY_MANIFEST, FileEntry, PolicyManifest, ShardEntry

DEFAULT_SHARD_SIZE = 50 * 1024 * 1024
MANIFEST_NAME = ".manifest.json"  # the file a stored checkpoint folder keeps its signed manifest in (hidden:
                                  # `build_manifest` skips dot files, so it never lists itself)
_READ = 1024 * 1024


def sha256_file(path: Path, offset: int = 0, size: int | None = None) -> str:
    """Hex sha256 of `size` bytes of `path` from `offset` (to the end when size is None)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = size
        while left is None or left > 0:
            block = fh.read(_READ if left is None else min(_READ, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    if left not in (None, 0):
        raise MessageError(f"{path} is shorter than expected")
    return h.hexdigest()


def build_manifest(
    checkpoint_dir: Path, *, run_id: str, version: int, step: int,
    shard_size: int = DEFAULT_SHARD_SIZE, created_at: float | None = None,
) -> PolicyManifest:
    """Describe every regular file under `checkpoint_dir` (sorted paths) as files and shards."""
    root = Path(checkpoint_dir)
    files: list[FileEntry] = []
    shards: list[ShardEntry] = []
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = p.stat().st_size
        files.append(FileEntry(path=rel, size=size, sha256=sha256_file(p)))
        offset = 0
        while True:
            n = min(shard_size, size - offset)
            shards.append(ShardEntry(index=len(shards), path=rel, offset=offset, size=n,
                                     sha256=sha256_file(p, offset, n)))
            offset += n
            if offset >= size:
                break
    if not files:
        raise MessageError(f"checkpoint folder {root} holds no files")
    config = root / "config.json"
    config_sha = sha256_file(config) if config.exists() else hashlib.sha256(b"").hexdigest()
    return PolicyManifest(
        run_id=run_id, version=version, step=step,
        created_at=time.time() if created_at is None else created_at,
        shard_size=shard_size, files=files, shards=shards, config_sha256=config_sha,
        total_bytes=sum(f.size for f in files),
    )


def sign_manifest(manifest: PolicyManifest, operator: KeyPair) -> Envelope:
    return seal(KIND_POLICY_MANIFEST, manifest, operator, run_id=manifest.run_id, audience=AUDIENCE_SWARM)


def open_manifest(env: Envelope, operator_key: PublicKey) -> PolicyManifest:
    """Verify a signed manifest against the operator key (no clock check: manifests are
    long-lived) and its internal consistency. Raises SignatureError or MessageError.

    A manifest is addressed to the whole swarm and its envelope is bound to the run its body
    names; callers compare `run_id` of the result with their own run (as they always did)."""
    manifest = open_envelope(env, KIND_POLICY_MANIFEST, PolicyManifest, signer=operator_key,
                             max_skew_s=None, run_id=None, audience=AUDIENCE_SWARM).body
    if manifest.run_id != env.run_id:
        raise MessageError(f"manifest envelope is signed for run {env.run_id!r} but describes run {manifest.run_id!r}")
    check_manifest_consistency(manifest)
    return manifest


def check_manifest_consistency(m: PolicyManifest) -> None:
    """Shards tile every file exactly, indices are 0..n-1, paths are safe and relative, and
    no two paths meet on disk (each is normal: no empty, "." or ".." part, so two distinct
    strings never name one file; no file is another one's folder)."""
    sizes = {}
    folders: set[str] = set()
    for f in m.files:
        if f.path in sizes:
            raise MessageError(f"manifest lists {f.path} twice")
        parts = f.path.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise MessageError(f"manifest path {f.path!r} is not a safe, normal relative path")
        sizes[f.path] = f.size
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for path in sizes:
        if path in folders:
            raise MessageError(f"manifest path {path!r} is both a file and a folder of other files")
    covered: dict[str, int] = {p: 0 for p in sizes}
    for i, s in enumerate(m.shards):
        if s.index != i:
            raise MessageError("manifest shard indices are not 0..n-1 in order")
        if s.path not in sizes:
            raise MessageError(f"shard {i} refers to unknown file {s.path}")
        if s.offset != covered[s.path]:
            raise MessageError(f"shard {i} does not continue {s.path} where the previous shard ended")
        covered[s.path] += s.size
    for p, size in sizes.items():
        if covered[p] != size:
            raise MessageError(f"shards cover {covered[p]} of {size} bytes of {p}")
    if m.total_bytes != sum(sizes.values()):
        raise MessageError("manifest total_bytes does not match its files")


def check_shard(shard: ShardEntry, data: bytes) -> None:
    """Raise SignatureError unless `data` is exactly the shard the manifest describes."""
    if len(data) != shard.size:
        raise SignatureError(f"shard {shard.index} has {len(data)} bytes, manifest says {shard.size}")
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise SignatureError(f"shard {shard.index} does not match its hash in the signed manifest")
