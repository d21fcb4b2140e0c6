"""Shared fixtures of the trainer's unit tests: one tiny model per session (built locally, no download)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from swarmrl.modelkit import init_tiny_model

    d = tmp_path_factory.mktemp("tiny") / "m"
    init_tiny_model(d, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)
    return d


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from protocol.lm import load_model

    return load_model(str(tiny_model_dir))
