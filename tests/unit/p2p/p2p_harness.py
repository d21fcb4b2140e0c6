"""Shared by the p2p unit tests: a patient wait, a small signed checkpoint folder and the
started nodes of one test (`Nodes`)."""

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


class Nodes:
    """The P2PNodes one test starts, all with `cfg` (overridable per node); call it to start one,
    `stop_all()` (in a `finally`) stops them in reverse order."""

    def __init__(self, cfg: dict, run_id: str, operator: KeyPair, coordinator: KeyPair):
        self.cfg, self.run_id, self.operator, self.coordinator = cfg, run_id, operator, coordinator
        self.started: list = []

    def __call__(self, key: KeyPair, store=None, **more):
        from shardcast.p2p import P2PConfig, P2PNode

        n = P2PNode(P2PConfig(**{**self.cfg, **more}), key, self.run_id, self.operator.public,
                    self.coordinator.public, store=store)
        n.start()
        self.started.append(n)
        return n

    def stop_all(self) -> None:
        for n in reversed(self.started):
            n.stop()
