"""`swarmrl demo`: a decentralized RL run on one machine, from nothing, in minutes.

The script of the whole system, top to bottom:
  1. build a tiny model and tokenizer locally and warm-start it on the task (no download);
     with `--recipe NAME` (`swarmrl.recipes`, `recipes/NAME/`), the recipe's model, generated
     dataset, task source, prompt format and role configs instead of the built-in arithmetic;
  2. measure its held-out accuracy;
  3. write keys and one config per role, start coordinator, trainer (+ shardcast origin),
     relay, verifier, honest workers and a dishonest worker as separate processes (with the
     libp2p swarm layer when libp2p is installed: the coordinator is the bootstrap peer);
  4. watch the swarm through the coordinator's public stats until the time budget ends;
  5. fetch the newest policy version through the relay exactly as a worker does (signed
     manifest, every shard checked) and measure its held-out accuracy;
  6. stop everything and print the summary (with the share of accepted groups that never
     reached a training step, by cause: `coordinator.rules.waste`); exit 0 only if the run
     learned, the cheater was banned and none of its rollouts reached the training buffer.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from coordinator.rules.waste import summary_line
from swarmrl.procs import ProcessGroup
from swarmrl.swarm import SwarmPlan, SwarmSettings, plan_swarm, start_swarm

CORE_ROLES = ("coordinator", "trainer", "relay", "verifier")


@dataclass
class DemoOptions:
    workdir: Path | None = None
    minutes: float = 5.0
    seed: int = 0
    honest_workers: int = 3
    cheaters: int = 1
    eval_tasks: int = 500
    min_gain: float = 0.15
    worker_device: str = "cpu"
    recipe: str = "arithmetic"


def demo_settings(opts: DemoOptions) -> SwarmSettings:
    """The swarm half of the tuned learning recipe (swarmrl.modelkit.DEMO_RECIPE)."""
    from swarmrl.modelkit import DEMO_RECIPE as r

    return SwarmSettings(seed=opts.seed, honest_workers=opts.honest_workers, cheaters=opts.cheaters,
                         group_size=r.group_size, temperature=r.temperature, max_tokens=r.max_tokens,
                         task_options=dict(r.task_options), async_window=r.async_window, lr=r.lr,
                         groups_per_step=r.groups_per_step, updates_per_batch=r.updates_per_batch,
                         grad_clip=r.grad_clip, worker_device=opts.worker_device)


def recipe_settings(opts: DemoOptions, recipe, kind: str, options: dict) -> SwarmSettings:
    """A recipe's swarm (`swarmrl.recipes`): its [swarm] settings, task source and role files."""
    return SwarmSettings(seed=opts.seed, honest_workers=opts.honest_workers, cheaters=opts.cheaters,
                         worker_device=opts.worker_device, task_kind=kind, task_options=options,
                         chat_template=recipe.chat, overrides=dict(recipe.roles), **recipe.swarm)


def run_demo(opts: DemoOptions) -> int:
    from protocol.lm import quiet_transformers
    from swarmrl.modelkit import build_demo_model, greedy_accuracy
    from swarmrl.recipes import BUILTIN, build_model, load_recipe, task_options, write_dataset

    quiet_transformers()

    console = Console()
    recipe = None if opts.recipe == BUILTIN else load_recipe(opts.recipe)
    root = Path(opts.workdir or tempfile.mkdtemp(prefix="swarmrl-demo-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(opts)
    console.rule(f"[bold]swarmrl demo · recipe {opts.recipe}")
    console.print(f"run folder: {root}  (configs in {root / 'config'}, logs in {root / 'logs'})")

    model_dir = root / "model"
    t0 = time.monotonic()
    with console.status("building the tiny model and warming it up on the task (supervised) ..."):
        if recipe is None:
            info = build_demo_model(model_dir, seed=opts.seed)
        else:
            options = task_options(recipe, write_dataset(recipe, root / "data", opts.seed))
            settings = recipe_settings(opts, recipe, recipe.task.get("kind", "jsonl"), options)
            opts.min_gain = float(recipe.goal.get("min_gain", opts.min_gain))
            info = build_model(recipe, model_dir, settings.task_kind, options, opts.seed)
            console.print(f"task: {settings.task_kind} {options} (chat template: {settings.chat_template})")
    ws = info["warm_start"]
    console.print(f"model: {info['parameters']:,} parameters, warm start {ws['steps']} steps in {ws['seconds']:.0f} s")
    acc_before = _accuracy(model_dir, opts, settings, greedy_accuracy)
    console.print(f"held-out greedy accuracy before RL: [bold]{acc_before:.1%}[/] ({opts.eval_tasks} tasks)")

    plan = plan_swarm(root, model_dir, settings)
    group = ProcessGroup(plan.logs)
    stats: dict = {}
    try:  # every process of the swarm stops however this ends (an error here left them running)
        try:
            start_swarm(plan, group)
            names = _peer_names(plan)
            deadline = time.monotonic() + opts.minutes * 60
            console.print(f"swarm started: coordinator {plan.coordinator_url}, relay {plan.relay_url}; "
                          f"RL for {opts.minutes:g} min (Ctrl-C stops early)")
            console.print(f"live dashboard while it runs: {plan.coordinator_url}/dashboard/ (operator view: "
                          f"{plan.coordinator_url}/dashboard/#token={plan.operator_token})")
            console.print(f"p2p swarm layer: on, bootstrap peer {plan.p2p_bootstrap}" if plan.p2p_bootstrap else
                          "p2p swarm layer: off (libp2p is not installed: pip install -e '.[p2p]'); HTTP only")
            with httpx.Client(timeout=5) as http, Live(console=console, refresh_per_second=2,
                                                       transient=False) as live:
                while time.monotonic() < deadline:
                    _check_alive(group)
                    stats = _stats(http, plan) or stats
                    names.update(_peer_names(plan))
                    live.update(_progress_table(stats, names, plan, deadline))
                    time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping the swarm[/]")
        except DemoFailure as exc:
            console.print(f"[red]{exc}[/]")
            return 1
        relay_bytes = _relay_bytes_served(plan)
        p2p_line = _p2p_summary(plan)
        final_version, final_dir, broadcast = _fetch_latest(plan, root)
    finally:
        group.stop_all()
    if p2p_line:
        console.print()
        console.print(p2p_line)
    acc_after = _accuracy(final_dir, opts, settings, greedy_accuracy) if final_dir else acc_before
    return _summary(console, plan, stats, _peer_names(plan), acc_before, acc_after, final_version,
                    broadcast, relay_bytes, opts, time.monotonic() - t0)


class DemoFailure(RuntimeError):
    pass


def _accuracy(model_dir: Path, opts: DemoOptions, s: SwarmSettings, greedy_accuracy) -> float:
    from protocol.lm import load_model, load_tokenizer
    from protocol.tasks import get_source

    model = load_model(str(model_dir))
    tok = load_tokenizer(str(model_dir))
    source = get_source(s.task_kind, seed=s.seed, options=s.task_options)
    return greedy_accuracy(model, tok, source, n=opts.eval_tasks, max_new_tokens=s.max_tokens, chat=s.chat_template)


def _peer_names(plan: SwarmPlan) -> dict[str, str]:
    from protocol.identity import KeyPair

    out = {}
    for name in plan.worker_names + plan.cheater_names:
        key = plan.root / name / "worker.key"
        if key.exists():
            try:
                out[KeyPair.load(key).peer_id] = name
            except Exception:  # noqa: BLE001 - a key file being written right now; next poll reads it
                pass
    return out


def _check_alive(group: ProcessGroup) -> None:
    for c in group.children:
        if c.name in CORE_ROLES and not c.alive:
            raise DemoFailure(f"{c.name} exited with status {c.popen.returncode}; last lines of {c.log}:\n{c.tail()}")


def _stats(http: httpx.Client, plan: SwarmPlan) -> dict | None:
    try:
        r = http.get(plan.coordinator_url + "/v1/stats")
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _worker_rows(stats: dict, names: dict[str, str]) -> list[tuple[str, dict]]:
    rows = []
    for w in stats.get("workers", []):
        rows.append((names.get(w.get("worker_id", ""), w.get("worker_id", "?")[:16]), w))
    return sorted(rows)


def _progress_table(stats: dict, names: dict[str, str], plan: SwarmPlan, deadline: float) -> Table:
    left = max(0, deadline - time.monotonic())
    version = (stats.get("policy") or {}).get("current_version")
    t = Table(title=f"policy version {version if version is not None else '-'} · "
                    f"buffer {(stats.get('buffer') or {}).get('depth', 0)} · {left:.0f} s left")
    for col in ("worker", "status", "version", "accepted", "rejected", "tokens credited", "note"):
        t.add_column(col)
    for name, w in _worker_rows(stats, names):
        pv = w.get("policy_version")
        t.add_row(name, w.get("status", ""), "-" if pv is None else str(pv), str(w.get("accepted", 0)),
                  str(w.get("rejected", 0)), str(w.get("accepted_tokens", 0)), (w.get("ban_reason") or "")[:50])
    rewards = sorted(stats.get("rewards_by_version") or [], key=lambda r: r["policy_version"])
    if rewards:
        t.caption = "mean reward of submissions by policy version: " + "  ".join(
            f"v{r['policy_version']}: {r['mean_reward']:.2f}" for r in rewards[-6:])
    return t


def _relay_bytes_served(plan: SwarmPlan) -> float | None:
    """Shard bytes the relay has served so far (its Prometheus counter)."""
    try:
        text = httpx.get(plan.relay_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("shardcast_bytes_served_total"):
            return float(line.split()[-1])
    return None


def _p2p_summary(plan: SwarmPlan) -> str:
    """What the honest workers' nodes saw of the swarm layer (their /status `p2p` sections)."""
    if not plan.p2p_bootstrap:
        return ""
    nodes, relays, heard, served = 0, set(), 0, 0
    for name in plan.worker_names:
        try:
            port = int((plan.root / name / "status.port").read_text().strip())
            p2p = httpx.get(f"http://127.0.0.1:{port}/status", timeout=3).json().get("p2p") or {}
        except (OSError, ValueError, httpx.HTTPError):
            continue
        if p2p.get("running"):
            nodes += 1
            relays |= set(p2p.get("relays", []))
            heard += len(p2p.get("versions_heard", {}))
            served += int((p2p.get("counters") or {}).get("served", 0))
    return (f"p2p swarm layer: {nodes} of {len(plan.worker_names)} honest workers on the run's topic; relays "
            f"they learned there: {', '.join(sorted(relays)) or 'none'}; policy versions heard there: {heard} "
            f"(the newest 8 per worker); shard requests they served to peers: {served}")


def _fetch_latest(plan: SwarmPlan, root: Path) -> tuple[int | None, Path | None, int]:
    """Download the newest version through the relay, as a worker would (signed, checked)."""
    from shardcast.client import ShardcastClient

    client = ShardcastClient([plan.relay_url], plan.operator.public, root / "final")
    try:
        version = client.wait_for_version(None, timeout_s=5)
        if version is None:
            return None, None, 0
        path = client.fetch(version)
        size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
        return version, Path(path), size
    finally:
        client.close()


def _summary(console: Console, plan: SwarmPlan, stats: dict, names: dict[str, str], before: float,
             after: float, version: int | None, final_bytes: int, relay_bytes: float | None, opts: DemoOptions,
             elapsed: float) -> int:
    console.rule("[bold]summary")
    t = Table()
    for col in ("worker", "honest", "status", "accepted", "rejected", "tokens credited"):
        t.add_column(col)
    cheaters_banned, cheater_accepted, cheaters_seen = True, 0, 0
    for name, w in _worker_rows(stats, names):
        honest = name in plan.worker_names
        if not honest:
            cheaters_seen += 1
            cheaters_banned = cheaters_banned and w.get("status") == "banned"
            cheater_accepted += int(w.get("accepted", 0))
        t.add_row(name, "yes" if honest else "[red]no[/]", w.get("status", ""), str(w.get("accepted", 0)),
                  str(w.get("rejected", 0)), str(w.get("accepted_tokens", 0)))
    console.print(t)
    for name, w in _worker_rows(stats, names):
        if w.get("ban_reason"):
            console.print(f"{name} banned: {w['ban_reason']}")
    gain = after - before
    versions_published = (version or 0)
    console.print(f"held-out greedy accuracy: {before:.1%} -> [bold]{after:.1%}[/] ({gain * 100:+.1f} points) "
                  f"after {versions_published} policy versions")
    served = "n/a" if relay_bytes is None else f"{relay_bytes / 1e6:.1f} MB"
    console.print(f"weights broadcast by the relay to workers and verifier: {served}; final checkpoint "
                  f"({final_bytes / 1e6:.1f} MB) fetched through the relay with every shard verified")
    console.print(f"dishonest workers banned: {'yes' if cheaters_banned else 'NO'}; "
                  f"their rollouts in the training buffer: {cheater_accepted}")
    if stats.get("waste"):  # issue 23: verified work that never reached a training step, by cause
        console.print(summary_line(stats["waste"]))
    cheaters_banned = cheaters_banned and cheaters_seen == len(plan.cheater_names)
    ok = gain >= opts.min_gain and cheaters_banned and cheater_accepted == 0
    console.print(f"audit every rollout, proof and verdict: swarmrl audit summary --archive {plan.root / 'coordinator' / 'archive'}")
    console.print(f"total time {elapsed / 60:.1f} min · " + ("[green]demo passed[/]" if ok else "[red]demo did not meet its goals[/]"))
    return 0 if ok else 1
