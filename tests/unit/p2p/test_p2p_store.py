"""FolderStore serves only whole, operator-signed versions from the shardcast folder layouts."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from shardcast.layout import write_manifest
from shardcast.p2p.store import FolderStore

OP = KeyPair.from_seed(b"o" * 32)


def checkpoint(root: Path, version: int, key: KeyPair = OP, shard_size: int = 1024) -> tuple[Path, bytes]:
    folder = root / str(version)
    folder.mkdir(parents=True)
    data = os.urandom(3000)
    (folder / "config.json").write_text("{}")
    (folder / "w.bin").write_bytes(data)
    write_manifest(folder, sign_manifest(build_manifest(folder, run_id="r", version=version, step=0,
                                                        shard_size=shard_size), key))
    return folder, data


def test_client_layout_versions_and_shards(tmp_path):
    _, data = checkpoint(tmp_path, 2)
    store = FolderStore(tmp_path, OP.public)
    assert store.versions() == [2]
    m = store.manifest_envelope(2)
    assert m is not None and m.signer == OP.public.hex
    # shards: config.json is shard 0; w.bin is cut into 1024-byte shards 1..3
    assert store.read_shard(2, 1) == data[:1024]
    assert store.read_shard(2, 3) == data[2048:]
    assert store.read_shard(2, 4) is None and store.read_shard(2, -1) is None and store.read_shard(7, 0) is None


def test_relay_layout_serves_single_shard_files(tmp_path):
    folder, data = checkpoint(tmp_path, 1)
    (folder / "w.bin").unlink()
    (folder / "config.json").unlink()
    store = FolderStore(tmp_path, OP.public)
    assert store.versions() == []  # nothing held whole
    (folder / "shards").mkdir()
    (folder / "shards" / "0").write_text("{}")
    for i, start in ((1, 0), (2, 1024), (3, 2048)):
        (folder / "shards" / str(i)).write_bytes(data[start:start + 1024])
    assert store.versions() == [1]
    assert store.read_shard(1, 2) == data[1024:2048]


def test_incomplete_or_foreign_versions_are_not_offered(tmp_path):
    folder, _ = checkpoint(tmp_path, 1)
    with open(folder / "w.bin", "r+b") as fh:
        fh.truncate(100)
    checkpoint(tmp_path, 2, key=KeyPair.generate())  # not signed by the operator
    checkpoint(tmp_path, 3)
    (tmp_path / ".tmp-4-1").mkdir()  # a download in progress is never looked at
    store = FolderStore(tmp_path, OP.public)
    assert store.versions() == [3]
    assert store.manifest_envelope(2) is None
    assert store.read_shard(1, 1) is None


def test_missing_root_is_empty(tmp_path):
    assert FolderStore(tmp_path / "nope", OP.public).versions() == []
