"""bench/staleness.py — what stale rollouts cost the trainer's step, without the swarm.

bench/learning.py measures the whole swarm, where an async run's batches are 1-2 versions old
but also differ in timing, placement and noise. This bench isolates the algorithm: one process
runs the trainer's own step (`trainer.step.run_step`, the decoupled GRPO loss, the
`WeightHistory` that recomputes behaviour log-probabilities) on rollouts it generates itself
with the worker's engine and seeded sampler from policy version n - lag, scores them with the
task's scorer, drops zero-advantage groups as the trainer does, and evaluates held-out greedy
accuracy every few versions. Modes:

    sync        lag 0 (what async window 0 trains on)
    lag1, lag2  every group 1 (2) versions old
    mix         each group 1 version old with p = 0.6, else 2 (what an async window-2 run
                consumed in bench/learning: about 58% / 40%)
    mix-uncorrected  as mix, but the behaviour policy is taken to be the current one
                (no importance weight): what the staleness correction is worth

The table gives, per mode, the mean over seeds of the held-out accuracy averaged over the
evaluations at versions 6-60 (the climb) and 66-90, with the spread over seeds.

    python bench/staleness.py --model bench/out/learning/model          # 5 modes x 3 seeds, ~6 min
    python bench/staleness.py --modes sync mix --seeds 5 --versions 120
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # bench/coordinator.py would shadow the coordinator package

MODES = ("sync", "lag1", "lag2", "mix", "mix-uncorrected")
EVAL_EVERY = 6


def lag_for(mode: str, rng: random.Random) -> int:
    if mode == "sync":
        return 0
    if mode in ("lag1", "lag2"):
        return int(mode[-1])
    return 1 if rng.random() < 0.6 else 2  # mix, mix-uncorrected


def run(model_dir: str, mode: str, seed: int, versions: int, eval_tasks: int) -> dict:
    """One offline run; returns [(version, held-out greedy accuracy)]."""
    import copy

    import torch

    from coordinator.taskbook import TaskBook
    from coordinator.rules.advantages import group_advantages
    from trainer.filtering import filter_groups
    from trainer.config import LossConfig, TrainerConfig
    from trainer.evaluate import accuracy
    from trainer.history import WeightHistory
    from trainer.step import StepOptions, run_step
    from protocol.lm import load_model, load_tokenizer
    from protocol.messages import TrainingGroup
    from protocol.tasks import get_source
    from swarmrl.modelkit import DEMO_RECIPE as R
    from worker.engines.base import GenerationRequest
    from worker.engines.transformers_engine import TransformersEngine

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    sample_rng, lag_rng = random.Random(seed), random.Random(seed + 999)  # lags never shift the seeds
    options = dict(R.task_options)
    book = TaskBook.load(model_dir, "arithmetic", 0, options)
    tokenizer = load_tokenizer(model_dir)
    source = get_source("arithmetic", seed=0, options=options)
    model = load_model(model_dir, device="cpu", dtype="float32").train()
    default = {name: f.default for name, f in TrainerConfig.model_fields.items()}  # the trainer's defaults
    optimizer = torch.optim.AdamW(model.parameters(), lr=R.lr, betas=tuple(default["betas"]),
                                  weight_decay=default["weight_decay"])
    engine = TransformersEngine(device="cpu", dtype="float32", threads=1)
    engine.load(Path(model_dir), 0)
    states = {0: {k: v.clone() for k, v in model.state_dict().items()}}
    history = WeightHistory(copy.deepcopy(model), keep=3)
    history.remember(0, model)
    opts = StepOptions(loss=LossConfig(), grad_clip=R.grad_clip, updates=R.updates_per_batch,
                       pad_id=tokenizer.pad_token_id or 0)
    task_index = seed * 1_000_000

    def group(version: int) -> TrainingGroup:
        nonlocal task_index
        engine.model.load_state_dict(states[version])
        prepared = book.prepare(task_index)
        task_index += 1
        reqs = [GenerationRequest(prompt_ids=list(prepared.prompt_ids), seed=sample_rng.getrandbits(48),
                                  temperature=R.temperature, max_tokens=R.max_tokens, eos_token_id=book.eos_token_id)
                for _ in range(R.group_size)]
        outs = engine.generate(reqs)
        completions = [o.token_ids for o in outs]
        rewards = book.rewards(prepared.task, completions)
        return TrainingGroup(submission_id=f"s-{task_index}", task_id=prepared.task.id, worker_id="bench",
                             policy_version=version, prompt_token_ids=list(prepared.prompt_ids),
                             completions=completions, finish_reasons=[o.finish_reason for o in outs],
                             rewards=rewards, advantages=group_advantages(rewards), temperature=R.temperature)

    def held_out() -> float:
        return accuracy(model, tokenizer, source, num_tasks=eval_tasks, max_new_tokens=default["max_eval_tokens"])

    curve = [(0, held_out())]
    t0 = time.monotonic()
    for n in range(versions):
        batch: list = []
        while len(batch) < R.groups_per_step:
            batch += filter_groups([group(max(0, n - lag_for(mode, lag_rng)))])[0]
        run_step(model, optimizer, batch, version=n, opts=opts,
                 history=None if mode == "mix-uncorrected" else history)  # None: behaviour = proximal
        states[n + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        states.pop(n - 2, None)
        history.remember(n + 1, model)
        if (n + 1) % EVAL_EVERY == 0:
            curve.append((n + 1, held_out()))
    return {"mode": mode, "seed": seed, "curve": curve, "seconds": time.monotonic() - t0}


def window_mean(curve: list, lo: int, hi: int) -> float | None:
    vals = [a for v, a in curve if lo <= v <= hi]
    return statistics.mean(vals) if vals else None


def table(results: list[dict], modes: list[str], versions: int) -> list[str]:
    spans = [(6, 60), (66, versions)]
    lines = ["| mode | seeds | " + " | ".join(f"acc v{lo}-{hi} (mean ± sd over seeds)" for lo, hi in spans) + " | final |",
             "|---|---|" + "---|" * (len(spans) + 1)]
    for mode in modes:
        runs = [r for r in results if r["mode"] == mode]
        cells = []
        for lo, hi in spans:
            vals = [m for m in (window_mean(r["curve"], lo, hi) for r in runs) if m is not None]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"
                         if vals else "-")
        final = statistics.mean(r["curve"][-1][1] for r in runs)
        lines.append(f"| {mode} | {len(runs)} | " + " | ".join(cells) + f" | {final:.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an already warm-started demo model (default: build one, ~2 min)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--versions", type=int, default=90)
    ap.add_argument("--eval-tasks", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    ap.add_argument("--out", default="bench/out/staleness")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from swarmrl.modelkit import build_demo_model

        model = str(out / "model")
        print("building the demo model (seeded warm start) ...", flush=True)
        build_demo_model(model, seed=0)
    jobs = [(model, m, s, args.versions, args.eval_tasks) for m in args.modes for s in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run, *zip(*jobs)))
    for r in results:
        print(f"  {r['mode']:>16} seed {r['seed']}: " + " ".join(f"{v}:{a:.3f}" for v, a in r["curve"]), flush=True)
    lines = table(results, args.modes, args.versions)
    text = "\n".join(lines) + f"\n\n{args.versions} versions per run, held-out greedy accuracy on {args.eval_tasks} tasks every {EVAL_EVERY} versions\n"
    print(text)
    (out / "staleness.md").write_text(text)
    (out / "staleness.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"wrote {out / 'staleness.md'}, staleness.json")


if __name__ == "__main__":
    main()
