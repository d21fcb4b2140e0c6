"""torchrun with 2 processes (FSDP2, gloo, CPU) gives the same step as one process: same
loss statistics, same gradient norm, same weights afterwards, within float tolerance, with
each rank holding about half the parameter bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("trainer_dist_worker.py")


def _run(n: int, model_dir: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port=0",
           "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(WORKER), str(model_dir), str(out), "12"]
    if n == 1:
        cmd = [sys.executable, str(WORKER), str(model_dir), str(out), "12"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads((out / f"result-{n}.json").read_text())


def test_two_gloo_ranks_take_the_same_step_as_one_process(tmp_path):
    from swarmrl.modelkit import init_tiny_model

    model_dir = tmp_path / "m"
    init_tiny_model(model_dir, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)
    one = _run(1, model_dir, tmp_path)
    two = _run(2, model_dir, tmp_path)
    assert one["tokens"] == two["tokens"]
    for k in ("loss", "clip_fraction", "ratio", "importance_weight"):
        assert two["stats"][k] == pytest.approx(one["stats"][k], rel=1e-4, abs=1e-6), k
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    # FSDP2 really shards: rank 0 holds about half the parameter bytes (no full template copy)
    assert two["param_bytes"] <= 0.6 * one["param_bytes"], (two["param_bytes"], one["param_bytes"])
    w1 = torch.load(tmp_path / "weights-1.pt")
    w2 = torch.load(tmp_path / "weights-2.pt")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


def test_swarmrl_trainer_under_torchrun_publishes_full_checkpoints(tmp_path):
    """`torchrun --nproc_per_node=2 -m swarmrl trainer`: rank 0 talks to a real coordinator,
    both ranks train (FSDP2, gloo), and every published version is a whole, loadable model."""
    import signal

    from protocol.lm import load_model
    from swarmrl.modelkit import init_tiny_model
    from tests.integration.trainer_harness import TrainerRig
    from tests.waiting import wait_until

    init_tiny_model(tmp_path / "m", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1)
    rig = TrainerRig(tmp_path / "rig", tmp_path / "m")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = open(tmp_path / "torchrun.log", "wb")
    proc = None
    try:
        rig.start_coordinator()
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                 "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0",
                                 "-m", "swarmrl", "trainer", "--config", str(rig.trainer_cfg)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def advanced() -> bool:
            assert proc.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
            if (rig.policy().version or 0) >= 3:
                return True
            if rig.policy().version is not None:
                rig.feed(2)
            return False

        wait_until(advanced, 180, "version 3 from the torchrun trainer", every=0.5)
        model = load_model(str(rig.trainer_data / "versions" / "3" / "model"))
        base = load_model(str(tmp_path / "m"))
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
        assert changed, "the published version equals the initial model"
        rows = (rig.trainer_data / "eval.csv").read_text().splitlines()
        assert rows[0].startswith("version,") and len(rows) >= 4
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        rig.close()
