"""Checkpoints for re-verification over real shardcast: origin -> coordinator's keeper -> archive.

A shardcast origin on 127.0.0.1 publishes two versions; a coordinator (real SQLite, the relays
it advertises = the origin) is told about them with the signed manifests; its checkpoint keeper
fetches each through the real `ShardcastClient` into archive/checkpoints/vN. The audit's
checkpoint check then accepts exactly what was published and refuses an edited file.
"""

import shutil

import pytest

from coordinator.checkpoints import CheckpointKeeper
from protocol.archive import checkpoint_dir, checkpoint_versions
from protocol.identity import KeyPair
from shardcast.config import OriginConfig
from shardcast.origin import Origin
from tests.unit.coordinator.coord_harness import start_swarm
from verifier.audit.errors import AuditError
from verifier.audit.reverify import verify_checkpoint


@pytest.fixture
def model(tmp_path):
    from swarmrl.modelkit import init_tiny_model

    d = tmp_path / "model"
    init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


def test_keeper_archives_published_versions_that_verify(tmp_path, model):
    operator = KeyPair.from_seed(b"o" * 32)  # the harness's operator key
    origin = Origin(OriginConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "origin", shard_size=16 * 1024),
                    operator, run_id="swarmrl-run")
    url = origin.start()
    s = start_swarm(tmp_path, model, relays=[url])
    try:
        for v in (0, 1):
            d = tmp_path / "ckpt" / str(v)
            shutil.copytree(model, d)
            (d / "note.txt").write_text(f"version {v}")  # versions differ
            env = origin.publish(d, v, step=v)
            r = s.send("/v1/policy", env)
            assert r.status_code == 200, r.text
        root = s.cfg.data_dir / "archive"
        keeper = CheckpointKeeper(s.ctx, root)
        try:
            assert keeper.step() == {"fetched": [1, 0], "pruned": []}  # newest first
        finally:
            keeper.stop()
        assert checkpoint_versions(root) == [0, 1]
        for v in (0, 1):
            folder = checkpoint_dir(root, v)
            assert (folder / "note.txt").read_text() == f"version {v}"
            assert verify_checkpoint(folder, operator.public.hex, "swarmrl-run").startswith(f"version {v}:")
        with pytest.raises(AuditError, match="belongs to run"):
            verify_checkpoint(checkpoint_dir(root, 0), operator.public.hex, "another-run")
        with pytest.raises(AuditError, match="no valid operator-signed manifest"):
            verify_checkpoint(checkpoint_dir(root, 0), KeyPair.generate().public.hex, "swarmrl-run")
        weights = checkpoint_dir(root, 1) / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
        with pytest.raises(AuditError, match="does not match its signed manifest"):
            verify_checkpoint(checkpoint_dir(root, 1), operator.public.hex, "swarmrl-run")
    finally:
        s.close()
        origin.stop()
