"""Fixtures of the worker's unit tests: a tiny model, a fake coordinator on loopback, a daemon
running in a background thread of the test process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from protocol.http import ServerThread
from worker_fakes import FakeCoordinator, LocalWeights, Running, worker_config


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from swarmrl.modelkit import init_tiny_model

    d = tmp_path_factory.mktemp("tiny") / "v0"
    init_tiny_model(d, hidden_size=64, num_layers=2, seed=0)
    return d


@pytest.fixture
def versions(tiny_model, tmp_path) -> "Versions":
    return Versions(tiny_model, tmp_path / "published")


class Versions:
    """Policy versions as folders (v0 is the tiny model; later ones perturb its weights)."""

    def __init__(self, base: Path, root: Path):
        self.base, self.root = base, root
        self.weights = LocalWeights()

    def publish(self, version: int) -> Path:
        d = self.root / str(version)
        shutil.copytree(self.base, d)
        if version:
            import torch
            from safetensors.torch import load_file, save_file

            f = d / "model.safetensors"
            state = load_file(str(f))
            g = torch.Generator().manual_seed(version)
            state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
            save_file(state, str(f), metadata={"format": "pt"})
        self.weights.publish(version, d)
        return d


@pytest.fixture
def fake():
    coord = FakeCoordinator(prompt=[5, 6, 7], group_size=2, max_tokens=6, eos=1)
    server = ServerThread(coord.app).start()
    coord.url = server.url
    try:
        yield coord
    finally:
        server.stop()


@pytest.fixture
def start_daemon(fake, versions, tmp_path):
    from worker.daemon import Daemon
    from worker.engines.transformers_engine import TransformersEngine

    running: list[Running] = []

    def start(engine=None, **cfg_kw) -> Running:
        cfg = worker_config(fake.url, tmp_path, **cfg_kw)
        eng = engine or TransformersEngine(device="cpu", dtype="float32", threads=1)
        r = Running(Daemon(cfg, eng, weights_client=versions.weights)).start()
        running.append(r)
        return r

    try:
        yield start
    finally:
        for r in running:
            if r.thread.is_alive():
                r.stop()
