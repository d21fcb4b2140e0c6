"""bench/staleness.py — what stale rollouts cost the trainer's step, without the swarm.

bench/learning.py measures the whole swarm, where an async run's batches are 1-2 versions old
but also differ in timing, placement and noise. This bench isolates the algorithm: one process
runs the trainer's own step (`trainer.step.run_step`, the decoupled GRPO loss, the
`WeightHistory` that recomputes behaviour log-probabilities) on rollouts it generates itself
with the worker's engine and seeded sampler from policy version n - lag, scores them with the
task's scorer, drops zero-advantage groups as the trainer does, and evaluates held-out greedy
accuracy every few versions. Modes:

    lag0 (= sync)   every group made with the current version (what async window 0 trains on)
    lag1 .. lag8    every group k versions old (issue 23: what each extra version of staleness
                    costs, up to the trainer's `max_staleness` and beyond)
    mix             each group 1 version old with p = 0.6, else 2 (what an async window-2 run
                    consumed in bench/learning: about 58% / 40%)
    <mode>-uncorrected  the same, but the behaviour policy is taken to be the current one (no
                    importance weight): what the staleness correction is worth

The table gives, per mode, the mean over seeds of the held-out accuracy averaged over the
evaluations of the climb (versions 6 .. 2/3 of the run) and of the rest, with the spread over
seeds, the final accuracy, and the late-span difference to lag0.

    python bench/staleness.py --model bench/out/learning/model          # lags 0-8 both ways x 3 seeds
    python bench/staleness.py --modes lag0 lag4 lag4-uncorrected --seeds 5 --versions 120
    python bench/staleness.py --seeds 1 --versions 48 --eval-tasks 200  # a small run for a busy machine
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

MAX_LAG = 8
BASES = ("sync", *(f"lag{k}" for k in range(MAX_LAG + 1)), "mix")
MODES = (*BASES, *(f"{b}-uncorrected" for b in BASES if b not in ("sync", "lag0")))
DEFAULT_MODES = (*(f"lag{k}" for k in range(MAX_LAG + 1)), *(f"lag{k}-uncorrected" for k in range(1, MAX_LAG + 1)))
EVAL_EVERY = 6


def lag_for(mode: str, rng: random.Random) -> int:
    base = mode.removesuffix("-uncorrected")
    if base == "sync":
        return 0
    if base.startswith("lag"):
        return int(base[3:])
    return 1 if rng.random() < 0.6 else 2  # mix


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
    history = WeightHistory(copy.deepcopy(model), keep=MAX_LAG + 1)
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
                 history=None if mode.endswith("-uncorrected") else history)  # None: behaviour = proximal
        states[n + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        states.pop(n - MAX_LAG, None)
        history.remember(n + 1, model)
        if (n + 1) % EVAL_EVERY == 0:
            curve.append((n + 1, held_out()))
    return {"mode": mode, "seed": seed, "curve": curve, "seconds": time.monotonic() - t0}


def window_mean(curve: list, lo: int, hi: int) -> float | None:
    vals = [a for v, a in curve if lo <= v <= hi]
    return statistics.mean(vals) if vals else None


def spans_for(versions: int) -> list[tuple[int, int]]:
    """The climb (versions 6 .. about 2/3 of the run) and the rest (6-60 and 66-90 for 90 versions)."""
    mid = max(EVAL_EVERY, (versions * 2 // 3) // EVAL_EVERY * EVAL_EVERY)
    return [(EVAL_EVERY, mid), (mid + EVAL_EVERY, versions)]


def table(results: list[dict], modes: list[str], versions: int) -> list[str]:
    spans = spans_for(versions)
    lines = ["| mode | seeds | " + " | ".join(f"acc v{lo}-{hi} (mean ± sd over seeds)" for lo, hi in spans)
             + " | final | late span vs lag0 |", "|---|---|" + "---|" * (len(spans) + 2)]

    def late(mode: str) -> float | None:
        vals = [m for m in (window_mean(r["curve"], *spans[-1]) for r in results if r["mode"] == mode) if m is not None]
        return statistics.mean(vals) if vals else None

    base = late("lag0") if late("lag0") is not None else late("sync")
    for mode in modes:
        runs = [r for r in results if r["mode"] == mode]
        cells = []
        for lo, hi in spans:
            vals = [m for m in (window_mean(r["curve"], lo, hi) for r in runs) if m is not None]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"
                         if vals else "-")
        final = statistics.mean(r["curve"][-1][1] for r in runs)
        diff = late(mode)
        delta = "-" if diff is None or base is None else f"{diff - base:+.3f}"
        lines.append(f"| {mode} | {len(runs)} | " + " | ".join(cells) + f" | {final:.3f} | {delta} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an already warm-started demo model (default: build one, ~2 min)")
    ap.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
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
