import pytest
from coord_harness import start_swarm

from swarmrl.modelkit import init_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


@pytest.fixture
def swarm(tmp_path, tiny_model):
    s = start_swarm(tmp_path, tiny_model)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def make_swarm(tmp_path, tiny_model):
    """Start a coordinator with config overrides: make_swarm(join={...}, ...)."""
    made = []

    def make(**overrides):
        s = start_swarm(tmp_path / f"s{len(made)}", tiny_model, **overrides)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()
