import pytest

OPERATOR_TOKEN = "operator-token-for-tests-0123456789"

from swarmrl.modelkit import init_tiny_model
from tests.unit.coordinator.coord_harness import start_swarm


@pytest.fixture(scope="session")
def dash_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("dash-model") / "tiny"
    init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


@pytest.fixture
def make_coordinator(tmp_path, dash_model):
    """A coordinator on 127.0.0.1 (real SQLite, real HTTP, the test's clock) whose operator token
    is OPERATOR_TOKEN, with overrides."""
    made = []

    def make(**overrides):
        s = start_swarm(tmp_path / f"c{len(made)}", dash_model, **{
            "dashboard_cache_s": 0.0, "dashboard": {"operator_token": OPERATOR_TOKEN}, **overrides})
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()
