"""bench/learning.py — does the swarm learn, and what does asynchrony buy?

Runs the whole local swarm (coordinator, trainer with its origin, relay, verifier, honest
workers; the demo's launcher `swarmrl.swarm`) on the demo task from the same warm-started
model and seed, once per async window (default: 0 = synchronous, and 2), and reports

  * held-out greedy accuracy against wall time and against policy version (the trainer's
    eval.csv), as a PNG plot and a table;
  * the trainer's idle fraction (its own phase accounting: waiting for data / total) and the
    workers' idle fraction (1 - CPU seconds / wall seconds of each worker process; the
    workers share CPU 1 with the coordinator, verifier and relay, so this also counts time
    that core spent on those: it is an upper bound of their true idleness);
  * the share of accepted (verified) groups that never reached a training step, split by cause
    (stale at the coordinator, stale while held, dropped by a ban, filtered by the trainer for
    zero advantage or pass rate, stale at the trainer, left in the buffer at the end) and the
    worker-seconds they cost (GET /v1/stats `waste`, `coordinator.rules.waste`; issue 23, goal:
    at most 5% stale);
  * how long the async run took to reach the synchronous run's final accuracy, as a share
    of the synchronous run's wall time (goal: <= 0.6), and the same for a ladder of accuracy
    levels on the way (once both curves have levelled off, their final values differ by
    evaluation noise, so the single ratio swings between runs; the ladder shows where
    asynchrony gains time and where it does not).

The trainer is pinned to CPU 0 and every other process to CPU 1 (os.sched_setaffinity on
each thread), as if they were separate machines, so the overlap of training and generation
is real. With `--services operator` the coordinator, verifier and relay join the trainer on
CPU 0 instead (the operator's machines), leaving CPU 1 to the workers (the contributors'):
in a deployment neither side shares its machine with the other's services, and two cores
can only approximate that one way or the other, so the table says which. Timings on a shared machine are noisy: the table says what else was running.

    python bench/learning.py                       # windows 0 and 2, 4 minutes each
    python bench/learning.py --windows 2 --minutes 5 --out bench/out/learning
    python bench/learning.py --revs e14af20:2 . --seeds 0 1 2 --minutes 2.5   # before/after, pooled

`--revs` runs other git revisions from their own files (unpacked with `git archive`) back to
back with this tree, per seed, on the same warm-started model; a revision from before issue
23 reports the waste its coordinator and trainer counted (no worker-seconds, no held split).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, replace
from pathlib import Path

# `python bench/learning.py` puts bench/ first on sys.path, where bench/coordinator.py would
# shadow the coordinator package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import httpx

from protocol.config import load_config
from swarmrl.modelkit import DEMO_RECIPE, build_demo_model
from swarmrl.procs import ProcessGroup, write_config
from swarmrl.swarm import SwarmSettings, plan_swarm, start_swarm
from trainer.config import TrainerConfig

CLK = os.sysconf("SC_CLK_TCK")
try:
    from coordinator.rules.waste import CAUSES as WASTE_CAUSES
except ImportError:  # a revision from before issue 23 (`--revs`): only what its coordinator and trainer counted
    WASTE_CAUSES = ("stale", "ban", "zero_advantage", "pass_rate", "trainer_stale", "in_buffer")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (threads created later inherit from their creator)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass


def settings_for(window: int, seed: int, workers: int, cheaters: int = 0, p2p: bool | None = None,
                 groups_per_step: int | None = None, max_staleness: int | None = None) -> SwarmSettings:
    r = DEMO_RECIPE
    # a synchronous run (window 0) stays synchronous: the trainer's limit is the window too
    staleness = 0 if window == 0 else max_staleness
    return SwarmSettings(seed=seed, honest_workers=workers, cheaters=cheaters, group_size=r.group_size,
                         temperature=r.temperature, max_tokens=r.max_tokens, task_options=dict(r.task_options),
                         async_window=window, lr=r.lr, groups_per_step=groups_per_step or r.groups_per_step, eval_every=3,
                         eval_tasks=500, p2p=p2p,  # the whole held-out split of the demo task
                         overrides={} if staleness is None else {"trainer": {"max_staleness": staleness}})


def run_one(root: Path, model_src: Path, window: int, args) -> dict:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    model_dir = root / "model"
    shutil.copytree(model_src, model_dir)
    plan = plan_swarm(root, model_dir, settings_for(window, args.seed, args.workers, args.cheaters, args.p2p,
                                                      args.groups_per_step, args.max_staleness))
    tcfg = load_config(TrainerConfig, plan.configs["trainer"])
    write_config(plan.configs["trainer"], tcfg.model_copy(update={
        "updates_per_batch": DEMO_RECIPE.updates_per_batch, "grad_clip": DEMO_RECIPE.grad_clip}))
    ncpu = os.cpu_count() or 1
    trainer_cpus, other_cpus = ({0}, {1}) if ncpu >= 2 and args.pin else (set(range(ncpu)), set(range(ncpu)))
    on_trainer_cpu = {"trainer"} | ({"coordinator", "verifier", "relay"} if args.services == "operator" else set())
    with ProcessGroup(plan.logs) as group:
        start_swarm(plan, group)
        t_start = time.time()
        deadline = time.monotonic() + args.minutes * 60
        cpu0: dict[str, float] = {}
        pinned_at = 0.0
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < deadline:
                if time.monotonic() - pinned_at > 5:  # re-pin: catches threads started since
                    for c in group.children:
                        pin(c.popen.pid, trainer_cpus if c.name in on_trainer_cpu else other_cpus)
                    pinned_at = time.monotonic()
                for c in group.children:
                    if not c.alive and c.name not in plan.cheater_names:  # a banned cheater exits
                        raise SystemExit(f"{c.name} died:\n{c.tail(30)}")
                    cpu0.setdefault(c.name, cpu_seconds(c.popen.pid))
                time.sleep(1.0)
            wall = time.time() - t_start
            cpu = {c.name: cpu_seconds(c.popen.pid) - cpu0.get(c.name, 0.0) for c in group.children}
            status = _trainer_status(http, root)
            waste = _waste(http, plan.coordinator_url) or _waste_before_issue23(http, plan.coordinator_url, root)
    eval_csv = root / "trainer" / "eval.csv"
    evals = list(csv.DictReader(eval_csv.read_text().splitlines())) if eval_csv.exists() else []
    curve, eval_s = [], 0.0
    for r in evals:  # unix_time is taken when an evaluation ends: its own seconds are in it
        eval_s += float(r.get("seconds") or 0.0)
        t = float(r["unix_time"]) - t_start
        curve.append({"version": int(r["version"]), "t": t, "t_train": t - eval_s, "acc": float(r["greedy_accuracy"])})
    workers = list(plan.worker_names)
    worker_busy = [min(1.0, cpu.get(n, 0.0) / wall) for n in workers]
    phases = status.get("phase_seconds", {})
    total = sum(phases.values()) or 1.0
    return {"window": window, "wall_s": wall, "curve": curve, "final_version": status.get("version"),
            "trainer_idle": phases.get("waiting", 0.0) / total, "trainer_phases": phases,
            "trainer_cpu_busy": cpu.get("trainer", 0.0) / wall,
            "worker_idle": 1.0 - sum(worker_busy) / max(1, len(worker_busy)), "cpu_s": cpu, "waste": waste}


def _waste(http: httpx.Client, coordinator_url: str) -> dict:
    """The coordinator's waste report (GET /v1/stats `waste`) at the end of the run."""
    try:
        return http.get(coordinator_url + "/v1/stats").json().get("waste") or {}
    except (httpx.HTTPError, ValueError):
        return {}


def _waste_before_issue23(http: httpx.Client, coordinator_url: str, root: Path) -> dict:
    """The same split, as far as a revision from before issue 23 counted it: the coordinator's
    buffer states (GET /v1/stats `buffer.by_state`: stale, unconsumed) and the trainer's groups
    counter by outcome (its /metrics). No worker-seconds; a ban's drops are not split out."""
    try:
        stats = http.get(coordinator_url + "/v1/stats").json()
        port = int((root / "trainer" / "trainer.port").read_text())
        metrics = http.get(f"http://127.0.0.1:{port}/metrics").text
    except (OSError, ValueError, httpx.HTTPError):
        return {}
    outcome = {}
    for line in metrics.splitlines():
        if line.startswith('swarmrl_trainer_groups_total{outcome="'):
            name = line.split('outcome="', 1)[1].split('"', 1)[0]
            outcome[name] = int(float(line.rsplit(" ", 1)[1]))
    by_state = (stats.get("buffer") or {}).get("by_state") or {}
    accepted = sum(v for k, v in by_state.items() if k) or 0
    groups = {"stale": by_state.get("stale", 0), "ban": by_state.get("dropped", 0), "zero_advantage": outcome.get("zero_advantage", 0),
              "pass_rate": outcome.get("pass_rate_window", 0), "trainer_stale": outcome.get("stale", 0),
              "in_buffer": sum(by_state.get(k, 0) for k in ("held", "ready", "handed"))}
    causes = {k: {"groups": n, "tokens": 0, "worker_s": 0.0} for k, n in groups.items()}
    stale = groups["stale"] + groups["trainer_stale"]
    return {"accepted": accepted, "taken": accepted - sum(groups.values()), "causes": causes,
            "unused_share": sum(groups.values()) / accepted if accepted else 0.0,
            "stale_share": stale / accepted if accepted else 0.0, "worker_s": 0.0}


def waste_table(results: list[dict]) -> str:
    """Per run: accepted groups, the share never trained and the stale share, and per cause the
    share of accepted groups and the worker-seconds they cost."""
    causes = [c for c in WASTE_CAUSES if any((r.get("waste") or {}).get("causes", {}).get(c, {}).get("groups")
                                              for r in results)]
    lines = ["| window | accepted | never trained | stale (goal <= 5%) | " + " | ".join(causes)
             + " | worker-s never trained |",
             "|---|---|---|---|" + "---|" * len(causes) + "---|"]
    for r in results:
        w = r.get("waste") or {}
        acc = w.get("accepted") or 0
        if not acc:
            lines.append(f"| {r['window']} | 0 | - | - |" + " - |" * len(causes) + " - |")
            continue
        cells = [f"{w['causes'][c]['groups'] / acc:.1%} ({w['causes'][c]['worker_s']:.0f} s)" for c in causes]
        lines.append(f"| {r['window']} | {acc} | {w['unused_share']:.1%} | {w['stale_share']:.1%} | "
                     + " | ".join(cells) + f" | {w['worker_s']:.0f} |")
    return "\n".join(lines)


def _trainer_status(http: httpx.Client, root: Path) -> dict:
    try:
        port = int((root / "trainer" / "trainer.port").read_text())
        return http.get(f"http://127.0.0.1:{port}/v1/trainer/status").json()
    except (OSError, ValueError, httpx.HTTPError):
        return {}


def smoothed(curve: list[dict], k: int = 3, clock: str = "t") -> list[tuple[float, int, float]]:
    """(time, version, mean of the last k evaluations) along the curve. `clock` "t": wall time
    since the start; "t_train": the same less the time spent in the held-out evaluations so far
    (the bench's instrument: it evaluates every 3 versions, so a run with 3x the versions spends
    ~3x the time on it while the trainer stands still; without it both runs are timed on training
    alone). A revision's run from before the split has only "t"."""
    out = []
    for i in range(len(curve)):
        w = curve[max(0, i - k + 1): i + 1]
        out.append((curve[i].get(clock, curve[i]["t"]), curve[i]["version"], sum(p["acc"] for p in w) / len(w)))
    return out


def compare(sync: dict, asyn: dict, clock: str = "t") -> dict:
    s, a = smoothed(sync["curve"], clock=clock), smoothed(asyn["curve"], clock=clock)
    if not s or not a:
        return {}
    target = s[-1][2]
    t_sync = s[-1][0]
    reach = next((t for t, _, acc in a if acc >= target), None)
    return {"sync_final_acc": target, "sync_time_s": t_sync, "async_time_to_reach_s": reach,
            "ratio": None if reach is None else reach / t_sync}


def times_to_reach(sync: dict, asyn: dict, levels: tuple[float, ...] = (0.55, 0.58, 0.60, 0.62, 0.64),
                   clock: str = "t") -> list[dict]:
    """For each accuracy level: when each run's smoothed curve first reached it. One final
    value of a curve that has levelled off is mostly evaluation noise; the levels on the way
    there show what asynchrony buys where the curve still climbs."""
    s, a = smoothed(sync["curve"], clock=clock), smoothed(asyn["curve"], clock=clock)
    out = []
    for level in levels:
        ts = next((t for t, _, acc in s if acc >= level), None)
        ta = next((t for t, _, acc in a if acc >= level), None)
        out.append({"level": level, "sync_s": ts, "async_s": ta,
                    "ratio": ta / ts if ts and ta is not None else None})
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = (f"async window {r['window']}" + (" (synchronous)" if r["window"] == 0 else "")
                 + ("" if r.get("rev", ".") == "." else f", {r['rev']}") + f", seed {r.get('seed', 0)}")
        ax1.plot([p["t"] for p in r["curve"]], [p["acc"] for p in r["curve"]], marker=".", label=label)
        ax2.plot([p["version"] for p in r["curve"]], [p["acc"] for p in r["curve"]], marker=".", label=label)
    ax1.set_xlabel("wall time since the swarm started (s)")
    ax2.set_xlabel("policy version")
    for ax in (ax1, ax2):
        ax.set_ylabel("held-out greedy accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("swarmrl demo task: GRPO on the local swarm (trainer on CPU 0, everything else on CPU 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: list[dict], cmp: dict, reached: list[dict] | None = None, cmp_train: dict | None = None) -> str:
    header = ("| window | wall s | versions | acc start | acc end (mean last 3) | best | trainer idle | "
              "trainer CPU busy | worker idle |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["curve"]
        sm = smoothed(c)
        lines.append(f"| {r['window']} | {r['wall_s']:.0f} | {r['final_version']} | "
                     f"{c[0]['acc']:.3f} | {sm[-1][2] if sm else float('nan'):.3f} | "
                     f"{max((p['acc'] for p in c), default=float('nan')):.3f} | {r['trainer_idle']:.2f} | "
                     f"{r['trainer_cpu_busy']:.2f} | {r['worker_idle']:.2f} |")
    if cmp:
        reach = cmp["async_time_to_reach_s"]
        lines.append("")
        lines.append(f"synchronous final accuracy {cmp['sync_final_acc']:.3f} after {cmp['sync_time_s']:.0f} s; "
                     + (f"async reached it after {reach:.0f} s = {cmp['ratio']:.2f} of the synchronous time (goal <= 0.6)"
                        if reach is not None else "async never reached it"))
    if cmp_train:
        reach = cmp_train["async_time_to_reach_s"]
        lines.append(f"less the evaluations' own time: synchronous {cmp_train['sync_time_s']:.0f} s; "
                     + (f"async {reach:.0f} s = {cmp_train['ratio']:.2f}" if reach is not None else "async never reached it"))
    if reached:
        def fmt(x: float | None, f: str) -> str:
            return "never" if x is None else format(x, f)
        lines += ["", "| smoothed accuracy | sync reaches it (s) | async (s) | async / sync |", "|---|---|---|---|"]
        lines += [f"| {r['level']:.2f} | {fmt(r['sync_s'], '.0f')} | {fmt(r['async_s'], '.0f')} | "
                  f"{fmt(r['ratio'], '.2f')} |" for r in reached]
    return "\n".join(lines)


def revision_tree(rev: str, out: Path) -> tuple[str, Path | None]:
    """(label, folder): '.' is this working tree (None: run in this process); any other git
    revision is unpacked once (`git archive`) into OUT/tree-<sha> and its runs import from there."""
    if rev == ".":
        return ".", None
    repo = Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=repo, check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = out / f"tree-{sha}"
    if not (tree / "pyproject.toml").exists():
        data = subprocess.run(["git", "archive", sha], cwd=repo, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tree, filter="data")
    return sha, tree


def run_at(tree: Path | None, root: Path, model: Path, window: int, seed: int, args) -> dict:
    """One run of the swarm; with a revision's `tree`, this script runs it in a child process whose
    imports (and so every role it starts) come from that tree (PYTHONPATH goes before the venv's
    editable install of this one). Paths in `args` must be absolute (the child runs in the tree)."""
    ns = argparse.Namespace(**{**vars(args), "seed": seed, "out": str(args.out)})
    if tree is None:
        return run_one(root, model, window, ns)
    spec = root.parent / f"{root.name}.spec.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"args": vars(ns), "root": str(root), "model": str(model), "window": window}, default=str))
    env = dict(os.environ, PYTHONPATH=str(tree))
    # cwd: `python -m swarmrl` puts it first on the path, so the roles must start in the tree
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", str(spec.resolve())], env=env, check=True,
                   cwd=tree)
    return json.loads(spec.with_suffix(".result.json").read_text())


def _mean_sd(xs: list[float], f: str = ".3f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return format(statistics.mean(xs), f) + (" ± " + format(statistics.stdev(xs), f) if len(xs) > 1 else "")


def pooled_table(results: list[dict], ratios: dict, ratios_train: dict | None = None) -> str:
    """Per revision and window, over the seeds: mean ± sd of the versions, the final accuracy
    (mean of the last 3 evaluations), the stale and never-trained shares, and the async/sync ratio
    (wall time, and less the evaluations' own time)."""
    ratios_train = ratios_train or {}
    lines = [("| revision | window | seeds | versions | acc end (mean last 3) | stale (goal <= 5%) | zero advantage | "
             "never trained | async/sync time to sync's final acc (goal <= 0.6) | the same less evaluation time |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rev, window in dict.fromkeys((r["rev"], r["window"]) for r in results):
        rs = [r for r in results if (r["rev"], r["window"]) == (rev, window)]
        acc = [smoothed(r["curve"])[-1][2] for r in rs if r["curve"]]
        w = [r.get("waste") or {} for r in rs]
        zero = [x["causes"]["zero_advantage"]["groups"] / x["accepted"] for x in w if x.get("accepted")]
        ratio = [ratios.get((rev, r["seed"])) for r in rs] if window else []
        ratio_train = [ratios_train.get((rev, r["seed"])) for r in rs] if window else []
        lines.append(f"| {rev} | {window} | {', '.join(str(r['seed']) for r in rs)} | "
                     f"{_mean_sd([r['final_version'] for r in rs], '.1f')} | {_mean_sd(acc)} | "
                     f"{_mean_sd([x.get('stale_share') for x in w if x.get('accepted')], '.1%')} | {_mean_sd(zero, '.1%')} | "
                     f"{_mean_sd([x.get('unused_share') for x in w if x.get('accepted')], '.1%')} | {_mean_sd(ratio, '.2f')} | "
                     f"{_mean_sd(ratio_train, '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="several seeds (each its own warm-started model, shared by the revisions): a pooled table")
    ap.add_argument("--revs", nargs="+", default=["."],
                    help="git revisions to compare, run back to back per seed ('.' = this working tree; e.g. "
                         "--revs e14af20 . for before/after; REV:2 runs only window 2 of that revision)")
    ap.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # a child of run_at
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--cheaters", type=int, default=0, help="dishonest workers too (the demo runs 1)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning (as the demo runs)")
    ap.add_argument("--services", choices=["workers", "operator"], default="workers",
                    help="where the coordinator, verifier and relay run: on the workers' CPU 1 (default), or "
                         "'operator': on CPU 0 with the trainer, the operator's side (then the workers, the "
                         "contributors' side, have CPU 1 to themselves)")
    ap.add_argument("--p2p", dest="p2p", action="store_true", default=None,
                    help="the libp2p swarm layer on (default: on when libp2p imports, as in the demo)")
    ap.add_argument("--no-p2p", dest="p2p", action="store_false", help="HTTP only")
    ap.add_argument("--groups-per-step", type=int, default=None,
                    help=f"groups per trainer step, both windows (default: the demo recipe's {DEMO_RECIPE.groups_per_step})")
    ap.add_argument("--max-staleness", type=int, default=None,
                    help="the trainer's staleness limit in async runs (default: the trainer's own default; "
                         "window-0 runs always use 0)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/learning"))
    ap.add_argument("--model", type=Path, default=None, help="an already warm-started model (default: build one)")
    args = ap.parse_args()
    if args.one:  # a revision's run, started by run_at with that revision's code on the path
        spec = json.loads(args.one.read_text())
        ns = argparse.Namespace(**{**spec["args"], "out": Path(spec["args"]["out"])})
        r = run_one(Path(spec["root"]), Path(spec["model"]), spec["window"], ns)
        args.one.with_suffix(".result.json").write_text(json.dumps(r))
        return
    args.out, args.model = args.out.resolve(), args.model and args.model.resolve()  # a revision's child runs elsewhere
    args.out.mkdir(parents=True, exist_ok=True)
    trees = [(*revision_tree(rev.split(":")[0], args.out),
              [int(w) for w in rev.split(":")[1].split(",")] if ":" in rev else args.windows) for rev in args.revs]
    results, ratios, ratios_train, texts = [], {}, {}, []
    for seed in args.seeds or [args.seed]:
        model = args.model
        if model is None:
            model = args.out / f"model-s{seed}"
            if model.exists():
                shutil.rmtree(model)
            info = build_demo_model(model, seed=seed)
            print(f"model (seed {seed}): {info['parameters']:,} parameters; warm start {info['warm_start']}")
        for label, tree, windows in trees:
            runs = []
            for w in windows:
                print(f"revision {label}, seed {seed}: async window {w} for {args.minutes:g} min ...", flush=True)
                name = ("" if tree is None else f"rev-{label}-") + f"s{seed}-window{w}"
                r = run_at(tree, args.out / name, model, w, seed, args) | {"rev": label, "seed": seed}
                runs.append(r)
                print(f"  versions {r['final_version']}, evals {[(p['version'], round(p['acc'], 3)) for p in r['curve']]}",
                      flush=True)
            by = {r["window"]: r for r in runs}
            cmp = compare(by[0], by[max(by)]) if 0 in by and len(by) > 1 else {}
            reached = times_to_reach(by[0], by[max(by)]) if cmp else []
            cmp_train = compare(by[0], by[max(by)], clock="t_train") if cmp else {}
            ratios[(label, seed)] = cmp.get("ratio")
            ratios_train[(label, seed)] = cmp_train.get("ratio")
            texts.append(f"### revision {label}, seed {seed}\n\n" + table(runs, cmp, reached, cmp_train)
                         + "\n\naccepted groups that never reached a training step, by cause "
                         "(share of accepted; worker-seconds they cost):\n\n" + waste_table(runs))
            results += runs
    text = "\n\n".join(texts) + "\n\n### pooled (mean ± sd over the seeds)\n\n" + pooled_table(results, ratios, ratios_train)
    text += ("\n\nCPU 0: trainer" + (", coordinator, verifier, relay" if args.services == "operator" else "")
             + "; CPU 1: workers" + ("" if args.services == "operator" else ", coordinator, verifier, relay")
             + ("" if args.pin else " (not pinned)") + f"; {args.minutes:g} min per run")
    if args.groups_per_step:
        text += f"; {args.groups_per_step} groups per trainer step (the demo recipe: {DEMO_RECIPE.groups_per_step})"
    load = os.getloadavg()
    text += f"\n\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores; other jobs add noise)"
    print(text)
    (args.out / "learning.md").write_text(text + "\n")
    (args.out / "learning.json").write_text(json.dumps({"results": results, "ratios": [[k[0], k[1], v] for k, v in ratios.items()],
                                                        "ratios_less_evaluation": [[k[0], k[1], v] for k, v in ratios_train.items()],
                                                        "recipe": asdict(replace(DEMO_RECIPE, groups_per_step=args.groups_per_step
                                                                                 or DEMO_RECIPE.groups_per_step))},
                                                       indent=1))
    plot(results, args.out / "learning.png")
    print(f"wrote {args.out / 'learning.png'}, learning.md, learning.json")


if __name__ == "__main__":
    main()
