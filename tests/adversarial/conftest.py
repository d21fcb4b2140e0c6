import pytest

from protocol.identity import KeyPair
from tests.adversarial.harness import build_model, engine_for, make_world, perturbed_copy


@pytest.fixture(scope="module")
def redteam(tmp_path_factory):
    """A world over small random models (v0, v1 one AdamW step later), the honest engine on
    v1, and the engines of the weight cheats."""
    root = tmp_path_factory.mktemp("redteam")
    world = make_world(root, hidden=64, layers=2, group_size=4, max_tokens=10)
    other = build_model(root / "other", hidden=64, layers=2, seed=999)
    noisy = perturbed_copy(world.versions[1], root / "noisy", rel_noise=0.1)
    return {"world": world, "root": root, "honest": engine_for(world.versions[1], 1),
            "other": engine_for(other, 1), "noisy": engine_for(noisy, 1), "v0": engine_for(world.versions[0], 0)}


@pytest.fixture
def key():
    return KeyPair.generate()
