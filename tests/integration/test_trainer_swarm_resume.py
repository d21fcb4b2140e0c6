"""The whole local swarm learns, and keeps learning across a trainer crash (slow: minutes).

Coordinator, trainer, relay, verifier and two honest workers run as real processes (the
demo's launcher) from the demo recipe's warm-started model. Midway the trainer is killed
with SIGKILL and started again: it resumes from its last complete version, the version
numbers continue without a gap or a repeat, and held-out accuracy after the restart is
above where the run started."""

from __future__ import annotations

import csv
import re
import signal
from pathlib import Path

import httpx
import pytest

from swarmrl.modelkit import DEMO_RECIPE, build_demo_model
from swarmrl.procs import ProcessGroup, child_env
from swarmrl.swarm import SwarmSettings, plan_swarm, start_swarm
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _version(http: httpx.Client, url: str) -> int:
    try:
        return http.get(url + "/v1/policy").json().get("version") or 0
    except (httpx.HTTPError, ValueError):
        return 0


def _wait_version(http, url, group, target: int, timeout: float) -> None:
    wait_until(lambda: _version(http, url) >= target, timeout, f"version {target}", every=1.0, group=group,
               may_exit=lambda name: False)


def _evals(root: Path) -> list[tuple[int, float]]:
    with open(root / "trainer" / "eval.csv") as fh:
        return [(int(r["version"]), float(r["greedy_accuracy"])) for r in csv.DictReader(fh)]


def test_swarm_learns_through_a_trainer_crash(tmp_path):
    r = DEMO_RECIPE
    model = tmp_path / "model"
    build_demo_model(model, seed=0)
    s = SwarmSettings(seed=0, honest_workers=2, cheaters=0, group_size=r.group_size, temperature=r.temperature,
                      max_tokens=r.max_tokens, task_options=dict(r.task_options), async_window=r.async_window,
                      lr=r.lr, groups_per_step=r.groups_per_step, eval_every=5, eval_tasks=300)
    plan = plan_swarm(tmp_path / "run", model, s)
    with ProcessGroup(plan.logs) as group, httpx.Client(timeout=10) as http:
        start_swarm(plan, group)
        _wait_version(http, plan.coordinator_url, group, 20, 600)
        trainer = group.get("trainer")
        trainer.popen.send_signal(signal.SIGKILL)
        trainer.popen.wait(timeout=30)
        group.children.remove(trainer)
        before = _version(http, plan.coordinator_url)
        group.start("trainer", ["trainer", "--config", str(plan.configs["trainer"])], env=child_env(threads=1))
        _wait_version(http, plan.coordinator_url, group, before + 20, 600)

    evals = _evals(plan.root)
    versions = [v for v, _ in evals]
    assert versions == sorted(set(versions)), f"evaluations repeat or go back: {versions}"
    start_acc = evals[0][1]
    after = [a for v, a in evals if v > before]
    assert after, evals
    assert max(after) >= start_acc + 0.10, f"accuracy did not keep rising: {evals}"
    # the trainer resumes from its last complete version: the announced one, or the next if it was
    # killed between writing a version and announcing it (it announces that one first on restart)
    log = (plan.logs / "trainer.log").read_text()
    resumed = [int(m) for m in re.findall(r"resuming from version (\d+)", log)]
    assert resumed and resumed[-1] in (before, before + 1), (before, resumed)
