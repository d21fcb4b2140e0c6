"""The verifier's model cache: a new policy version of the same model reuses an evicted
model's modules (weights loaded in place) and computes exactly what a fresh load computes."""

import torch

from protocol.lm import load_model
from swarmrl.modelkit import init_tiny_model
from verifier.models import PolicyModels


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_new_versions_reuse_the_evicted_model_and_equal_a_fresh_load(tmp_path):
    small = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    ckpt = {v: tmp_path / f"v{v}" for v in range(3)}
    for v, d in ckpt.items():
        init_tiny_model(d, seed=v, **small)
    other = tmp_path / "wider"
    init_tiny_model(other, seed=5, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    ckpt[3] = other
    loads = []
    models = PolicyModels(lambda v: ckpt[v], capacity=1, on_load=lambda v, s: loads.append(v))
    ids = [3, 1, 4, 1, 5]
    m0 = models.model(0)
    m1 = models.model(1)
    assert m1 is m0 and models.loaded() == [(1, "float32")]       # same modules, new weights
    assert torch.equal(_logits(m1, ids), _logits(load_model(str(ckpt[1])), ids))
    assert not torch.equal(_logits(m1, ids), _logits(load_model(str(ckpt[0])), ids))
    assert models.model(1) is m1 and loads == [0, 1]                # a hit loads nothing
    m3 = models.model(3)                                            # another architecture: built afresh
    assert m3 is not m1 and torch.equal(_logits(m3, ids), _logits(load_model(str(other)), ids))
    m2 = models.model(2, "bfloat16")                                # another dtype: built afresh
    assert m2 is not m3 and next(m2.parameters()).dtype == torch.bfloat16
    assert torch.equal(_logits(m2, ids), _logits(load_model(str(ckpt[2]), dtype="bfloat16"), ids))
