import pytest

from protocol.identity import KeyPair
from tests.adversarial.harness import make_world


@pytest.fixture(scope="session")
def world_root(tmp_path_factory):
    return tmp_path_factory.mktemp("verifier-models")


@pytest.fixture
def world(world_root):
    """A fresh ledger and keys over session-wide tiny models (v0 and the one-step-later v1)."""
    return make_world(world_root, hidden=64, layers=2, group_size=4, max_tokens=12)


@pytest.fixture
def worker_key():
    return KeyPair.generate()
