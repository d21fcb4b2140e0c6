"""A short live swarm whose archive the audit and dashboard tests read.

The configs come from `swarmrl.swarm.plan_swarm` (the files an operator would write), and the
coordinator, relay, verifier, honest workers and one cheating worker (`swarmrl.adversary`,
noise on the weights: caught by the proof check) run as separate processes with
`swarmrl.procs.ProcessGroup`. The trainer's part is played by the test process: a shardcast
origin on the plan's origin port publishes versions (v0 = the tiny model, later versions its
weights perturbed, so every version differs), announces each signed manifest to the
coordinator, and posts a signed held-out evaluation of each version (`POST /v1/trainer/eval`,
greedy accuracy measured here) — exactly the calls the trainer makes. Versions do not depend
on the tiny model learning anything within a test's time, which keeps the run short and its
outcome certain.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coordinator.config import CheckpointArchiveConfig, CoordinatorConfig
from protocol import routes
from protocol.config import load_config
from protocol.envelope import AUDIENCE_COORDINATOR, seal
from protocol.messages import KIND_EVAL_REPORT, EvalReport
from shardcast.config import OriginConfig
from shardcast.origin import Origin
from swarmrl.procs import ProcessGroup, child_env, write_config
from swarmrl.swarm import SwarmPlan, SwarmSettings, plan_swarm, start_workers
from tests.waiting import wait_until


@dataclass
class LiveSwarm:
    root: Path
    plan: SwarmPlan
    group: ProcessGroup
    origin: Origin
    http: httpx.Client
    published: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.plan.coordinator_url

    @property
    def archive(self) -> Path:
        return self.root / "coordinator" / "archive"

    def get(self, path: str):
        """A coordinator view as the operator sees it (the audit tests compare full views)."""
        r = self.http.get(self.url + path, headers={"authorization": f"Bearer {self.plan.operator_token}"})
        r.raise_for_status()
        return r.json()

    def stats(self) -> dict:
        try:
            return self.get(routes.STATS)
        except httpx.HTTPError:
            return {}

    def publish(self, version: int) -> None:
        """Publish `version` through the origin, announce it, and report its held-out accuracy."""
        d = self.root / "published" / str(version)
        shutil.copytree(self.plan.model_dir, d)
        if version:
            import torch
            from safetensors.torch import load_file, save_file

            state = load_file(str(d / "model.safetensors"))
            g = torch.Generator().manual_seed(1000 + version)
            state = {k: v + 0.002 * version * torch.randn(v.shape, generator=g) for k, v in state.items()}
            save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        env = self.origin.publish(d, version, step=version)
        r = self.http.post(self.url + routes.POLICY, content=env.model_dump_json(),
                           headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        self.published.append(version)
        self.report_eval(d, version)

    def report_eval(self, checkpoint: Path, version: int, tasks: int = 20) -> None:
        from protocol.lm import load_model, load_tokenizer
        from protocol.tasks import get_source
        from swarmrl.modelkit import greedy_accuracy

        s = self.plan.settings
        t0 = time.monotonic()
        acc = greedy_accuracy(load_model(str(checkpoint)), load_tokenizer(str(checkpoint)),
                              get_source("arithmetic", seed=s.seed, options=s.task_options), n=tasks,
                              max_new_tokens=s.max_tokens)
        report = EvalReport(policy_version=version, step=version, greedy_accuracy=acc, num_tasks=tasks,
                            seconds=time.monotonic() - t0)
        env = seal(KIND_EVAL_REPORT, report, self.plan.operator, run_id=self.origin.run_id,
                   audience=AUDIENCE_COORDINATOR)
        r = self.http.post(self.url + routes.TRAINER_EVAL, content=env.model_dump_json(),
                           headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text

    def counts(self) -> dict:
        return self.stats().get("submissions", {})

    def accepted_at(self, version: int) -> int:
        for row in self.get("/v1/dashboard/curve"):
            if row["version"] == version:
                return row["accepted"]
        return 0

    def stop(self) -> None:
        """Workers first (they finish and report while the coordinator still answers), then the
        verifier, the relay, and the coordinator last (it flushes the archive on SIGTERM)."""
        for c in list(self.group.children):
            if c.name not in ("coordinator", "relay", "verifier"):
                self.group.stop(c.name, timeout_s=20)
        for name in ("verifier", "relay", "coordinator"):
            if any(c.name == name for c in self.group.children):
                self.group.stop(name, timeout_s=20)
        self.group.stop_all(timeout_s=5)
        self.origin.stop()
        self.http.close()


def start_live_swarm(root: Path, *, honest: int = 2, cheaters: int = 1) -> LiveSwarm:
    """Start the swarm and publish v0; the caller drives it (publish, wait) and stops it."""
    from swarmrl.modelkit import init_tiny_model

    root = Path(root)
    model = root / "model"
    init_tiny_model(model, seed=0)
    settings = SwarmSettings(seed=0, honest_workers=honest, cheaters=cheaters, cheat="noise", group_size=4,
                             max_tokens=6, worker_max_tasks=2, keep_versions=8)
    plan = plan_swarm(root, model, settings)
    coord = load_config(CoordinatorConfig, plan.configs["coordinator"])
    write_config(plan.configs["coordinator"], coord.model_copy(update={
        "archive_interval_s": 0.5, "dashboard_relay_poll_s": 0.5, "log_level": "info",
        "checkpoints": CheckpointArchiveConfig(poll_interval_s=0.5)}))
    group = ProcessGroup(plan.logs)
    origin_port = int(plan.origin_url.rsplit(":", 1)[1])
    origin = Origin(OriginConfig(host="127.0.0.1", port=origin_port, data_dir=root / "origin",
                                 shard_size=256 * 1024, keep_versions=8), plan.operator, run_id=f"demo-{settings.seed}")
    swarm = LiveSwarm(root=root, plan=plan, group=group, origin=origin, http=httpx.Client(timeout=10.0))
    try:
        origin.start()
        env = child_env(threads=1)
        group.start("coordinator", ["coordinator", "--config", str(plan.configs["coordinator"])], env=env)
        group.start("relay", ["relay", "--config", str(plan.configs["relay"])], env=env)
        wait_until(lambda: swarm.stats(), 90, "the coordinator to answer", every=0.5, group=group)
        swarm.publish(0)
        group.start("verifier", ["verifier", "--config", str(plan.configs["verifier"])], env=env)
        start_workers(plan, group)
    except BaseException:
        swarm.stop()
        raise
    return swarm


def run_until_archived(swarm: LiveSwarm, versions: int = 3, per_version: int = 3, timeout_s: float = 240) -> None:
    """Drive the swarm: a rejection (the cheater), `per_version` accepted submissions at each of
    `versions` versions, and every checkpoint archived."""
    g = swarm.group
    wait_until(lambda: swarm.counts().get("rejected", 0) >= 1, timeout_s, "the cheater's rejection", every=0.5, group=g)
    for v in range(versions):
        if v not in swarm.published:
            swarm.publish(v)
        wait_until(lambda v=v: swarm.accepted_at(v) >= per_version, timeout_s,
                   f"{per_version} accepted submissions at v{v}", every=0.5, group=g)
    wait_until(lambda: set(range(versions)) <= set(swarm.get("/v1/dashboard/overview")["archive"]["checkpoints"]),
               timeout_s, "the checkpoints to be archived", every=0.5, group=g)
