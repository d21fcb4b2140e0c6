"""The trainer section of bench/memory.py: peak memory per parameter and step time of one GRPO
step on the ~30M model, fp32 vs bf16-mixed, 1 vs 2 ranks (torchrun, FSDP2 over gloo on the
CPU), before (the code at `--before-rev`, unpacked with `git archive` into a temporary folder:
full logits for the micro-batch, a full template copy per rank, fp32 only) and after.

Each configuration runs in fresh processes; a row is rank 0's figures. "peak / parameter" is
the process's peak resident memory above its resident memory before the model was built,
divided by the parameter count (weights, gradients, AdamW state, activations, logits); with 2
ranks it is per rank, so sharding shows as a smaller figure. The step time is that of the
second step (the first warms up), wall and CPU seconds of rank 0. The batch is small (this 2-core machine is shared):
`--groups` groups of 4 completions of `--completion` tokens after a 16-token prompt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _batch(groups: int, completion: int):
    from types import SimpleNamespace as NS

    import torch

    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(groups):
        comps = [torch.randint(3, 150_000, (completion,), generator=g).tolist() for _ in range(4)]
        adv = [1.0, -1.0, 0.5, -0.5]
        out.append((NS(submission_id=f"g{i}", prompt_token_ids=list(range(100, 116)), completions=comps,
                       rewards=[1.0, 0.0, 1.0, 0.0], advantages=adv, policy_version=0, temperature=1.0), adv))
    return out


def trainer_child(precision: str, groups: str, completion: str, out: str) -> dict:
    """One configuration, in this process (under torchrun for 2 ranks). Works with the
    trainer of this tree and with older ones (no `autocast`/`logit_rows` options there)."""
    import dataclasses

    import torch

    from bench.memory import build_model, cpu_s, peak_mb, rss_mb
    from trainer.config import LossConfig
    from trainer.distributed import Team
    from trainer.history import WeightHistory
    from trainer.step import StepOptions

    torch.manual_seed(0)
    team = Team.from_env("cpu")
    base = rss_mb()
    model = build_model("float32").train()
    params = sum(p.numel() for p in model.parameters())
    model, _template = team.prepare(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    fields = {f.name for f in dataclasses.fields(StepOptions)}
    extra = {"autocast": torch.bfloat16} if precision == "bf16-mixed" else {}
    if extra and "autocast" not in fields:
        return {"error": "no bf16-mixed in this version"}
    opts = StepOptions(loss=LossConfig(), grad_clip=1.0, micro_batch_tokens=4096, **extra)
    batch = _batch(int(groups), int(completion))
    times, cpus = [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), cpu_s()
        team.step(model, opt, batch if team.rank == 0 else team.broadcast(None)[1], version=0, opts=opts,
                  history=WeightHistory(None, keep=0))  # one version: no behaviour log-probs to recompute
        times.append(time.perf_counter() - t0)
        cpus.append(cpu_s() - c0)
    res = {"params": params, "peak_per_param": (peak_mb() - base) * 2**20 / params, "step_s": times[-1],
           "cpu_s": cpus[-1], "world": team.world}
    if team.rank == 0:
        Path(out).write_text(json.dumps(res))
    team.close()
    return res


def _unpack(rev: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="swarmrl-before-"))
    tar = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(d)], input=tar, check=True)
    (d / "bench").mkdir(exist_ok=True)
    for name in ("memory.py", "memory_trainer.py"):  # this bench, run against the old trainer
        (d / "bench" / name).write_bytes((ROOT / "bench" / name).read_bytes())
    return d


def _run(tree: Path, precision: str, world: int, a) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    out = Path(tempfile.mkdtemp()) / "r.json"
    args = ["--child", "trainer", precision, str(a.groups), str(a.completion), str(out)]
    script = str(tree / "bench" / "memory.py")
    cmd = [sys.executable, script, *args] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--master_port=0",
        "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", script, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
        if p.returncode != 0 or not out.exists():
            lines = (p.stderr or p.stdout).strip().splitlines()
            return {"error": lines[-1] if lines else f"exit {p.returncode}"}
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def trainer_section(a, _run_child) -> None:
    print(f"\ntrainer: one GRPO step, {a.groups} groups x 4 x {a.completion} tokens, 1 thread per rank")
    print(f"{'code':<8}{'precision':<12}{'ranks':>6}{'peak / parameter':>18}{'step s':>9}{'CPU s':>8}")
    before = _unpack(a.before_rev)
    try:
        _rows(a, before)
    finally:
        shutil.rmtree(before, ignore_errors=True)


def _rows(a, before: Path) -> None:
    for label, tree in (("before", before), ("after", ROOT)):
        for precision in ("fp32", "bf16-mixed"):
            for world in (1, 2):
                if label == "before" and precision != "fp32":
                    continue  # no mixed precision before
                r = _run(tree, precision, world, a)
                if "error" in r:
                    print(f"{label:<8}{precision:<12}{world:>6}  failed: {r['error']}")
                    continue
                print(f"{label:<8}{precision:<12}{world:>6}{r['peak_per_param']:>16.1f} B{r['step_s']:>9.1f}"
                      f"{r.get('cpu_s', float('nan')):>8.1f}")
