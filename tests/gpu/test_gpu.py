"""On a CUDA GPU (marker `gpu`, out of the default run; `python -m pytest -m gpu tests/gpu`):

- a worker generating on the GPU (fp32 and bf16, the GPU default) is accepted by a verifier
  that prefills on the CPU, as the default deployment runs it: the thresholds calibrated on
  CPUs must hold across hardware; and its cheats are still caught;
- the trainer's GRPO step on the GPU, plain and FSDP2-sharded under torchrun (NCCL for the
  model, gloo for the small CPU tensors), equals the CPU's step within float tolerance.
bench/cross_hardware.py measures the first point on thousands of completions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protocol.identity import KeyPair
from tests.adversarial import harness as H
from worker.engines.transformers_engine import TransformersEngine

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
DIST_WORKER = ROOT / "tests" / "integration" / "trainer_dist_worker.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-world")
    return H.make_world(root, hidden=64, layers=2, group_size=4, max_tokens=24)


def cuda_engine(path: Path, version: int, dtype: str) -> TransformersEngine:
    e = TransformersEngine(device="cuda", dtype=dtype)
    e.load(path, version)
    assert e.info().device.startswith("cuda")
    return e


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_worker_passes_the_cpu_verifier_and_its_cheats_do_not(world, dtype):
    key = KeyPair.generate()
    honest = cuda_engine(world.versions[1], 1, dtype)
    leases = [world.lease(key) for _ in range(6)]
    subs = H.honest_submissions(honest, [ls for ls, _ in leases], 1)
    for (lease, env), sub in zip(leases, subs):
        v = world.verify(world.job(env, sub, key))
        assert v.accepted, v.reason
    other = cuda_engine(H.build_model(world.versions[1].parent / "other", hidden=64, layers=2, seed=999), 1, dtype)
    for make, must_fail in [(lambda ls: H.generate_with(other, ls, 1), "proof"),
                            (lambda ls: H.generate_with(honest, ls, 1, temperature=3.0), "sampling")]:
        lease, env = world.lease(key)
        v = world.verify(world.job(env, make(lease), key))
        failed = {c.name for c in v.checks if not c.passed}
        assert not v.accepted and must_fail in failed, (failed, v.reason)


def _step(tmp_path: Path, model_dir: Path, device: str, torchrun: bool) -> tuple[dict, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    cmd = [sys.executable, str(DIST_WORKER), str(model_dir), str(tmp_path), "12", device]
    if torchrun:
        cmd[1:2] = ["-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=0",
                    "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(DIST_WORKER)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    name = "1" if device == "cpu" else f"1-{device}{'-fsdp' if torchrun else ''}"
    return (json.loads((tmp_path / f"result-{name}.json").read_text()),
            torch.load(tmp_path / f"weights-{name}.pt"))


def test_trainer_step_on_the_gpu_plain_and_fsdp2_equals_the_cpu_step(tmp_path):
    from swarmrl.modelkit import init_tiny_model

    model_dir = tmp_path / "m"
    init_tiny_model(model_dir, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)
    cpu, w_cpu = _step(tmp_path, model_dir, "cpu", torchrun=False)
    for torchrun in (False, True):
        gpu, w_gpu = _step(tmp_path, model_dir, "cuda", torchrun=torchrun)
        assert gpu["tokens"] == cpu["tokens"]
        for k in ("loss", "clip_fraction", "ratio", "importance_weight"):
            assert gpu["stats"][k] == pytest.approx(cpu["stats"][k], rel=1e-3, abs=1e-5), (torchrun, k)
        assert gpu["grad_norm"] == pytest.approx(cpu["grad_norm"], rel=1e-3)
        assert w_gpu.keys() == w_cpu.keys()
        for k in w_cpu:
            assert torch.allclose(w_gpu[k].float().cpu(), w_cpu[k], atol=1e-4), (torchrun, k)
