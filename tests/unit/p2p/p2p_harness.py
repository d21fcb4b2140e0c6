"""Shared by the p2p unit tests: a patient wait and a small signed checkpoint folder."""

from __future__ import annotations

import os
from pathlib import Path

from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from shardcast.layout import write_manifest
from tests.waiting import wait_until

T = 30.0  # generous waits; nothing here asserts on speed


def wait_for(check, what: str, timeout: float = T):
    return wait_until(check, timeout, what, every=0.05)


def signed_checkpoint(root: Path, version: int, *, run_id: str, operator: KeyPair, size: int) -> Path:
    """root/<version>: a config and `size` random bytes, with the operator-signed manifest."""
    folder = root / str(version)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "w.bin").write_bytes(os.urandom(size))
    write_manifest(folder, sign_manifest(build_manifest(folder, run_id=run_id, version=version, step=version,
                                                        shard_size=32 * 1024), operator))
    return folder
