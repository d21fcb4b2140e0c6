"""A whole swarm on one machine: the plan (keys, ports, one config file per role) and its start.

`plan_swarm` writes everything a local run needs under one folder — the model, the keys,
and `config/<role>.toml` for each process, exactly the files an operator would write —
and `start_swarm` launches each role as its own process in the order the data flow needs
(coordinator, trainer with its shardcast origin, relay, verifier, workers). The demo and
the integration tests both use this, so the demo is the script of the whole system.

Everything runs on 127.0.0.1, so the coordinator's config exempts loopback from the
per-address limits (several identities and processes share the address); a real deployment
exempts nobody. The dashboard's operator token is written to `keys/operator.token`
(`SwarmPlan.operator_token`); without it the dashboard shows the public view.

`SwarmSettings.env`, `.extra_relays` and `.overrides` let a test or bench change what an
operator (or a worker's owner) could change in these files: extra environment (e.g.
`SWARMRL_SCORER_MODULES`), other relays in a role's `relays` list (e.g. hostile ones before
the honest relay: tests/hostile), and any config value of a role ("coordinator", "trainer",
"relay", "verifier", or a worker's name), merged into its file as `--set` would.

The libp2p swarm layer (shardcast.p2p) is on when libp2p imports (`SwarmSettings.p2p`):
the coordinator's node listens on a port chosen like the others and is the bootstrap peer;
the relay is configured with its multiaddr (and advertises itself on the topic); workers and
the verifier learn it from GET /v1/run. Every role allows loopback addresses in adverts
(`P2PConfig.allow_private_addresses`: off by default). Off, every role runs over HTTP only.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from coordinator.config import (
    LOOPBACK,
    CoordinatorConfig,
    DashboardConfig,
    LimitsConfig,
    SamplingConfig,
    TaskConfig,
)
from protocol.config import load_config
from protocol.identity import KeyPair
from shardcast.config import OriginConfig, RelayConfig
from shardcast.p2p import P2PConfig, bootstrap_multiaddr, libp2p_available
from swarmrl.procs import ProcessGroup, child_env, free_port, write_config
from trainer.config import EvalConfig, TrainerConfig
from verifier.config import VerifierConfig
from worker.config import WorkerConfig

HOST = "127.0.0.1"


@dataclass
class SwarmSettings:
    """The knobs of a local swarm (the demo's defaults are tuned to learn within minutes)."""

    seed: int = 0
    honest_workers: int = 3
    cheaters: int = 1
    cheat: str = "noise"                  # how the dishonest workers cheat (swarmrl.adversary)
    group_size: int = 8
    temperature: float = 1.0
    max_tokens: int = 6
    task_options: dict = field(default_factory=dict)
    async_window: int = 2
    lr: float = 1e-4
    groups_per_step: int = 16
    updates_per_batch: int = 1
    grad_clip: float = 1.0
    max_versions: int = 0                 # 0 = until stopped
    eval_every: int = 5
    eval_tasks: int = 200
    keep_versions: int = 4
    worker_max_tasks: int = 4
    p2p: bool | None = None               # the libp2p swarm layer; None = on when libp2p imports
    worker_device: str = "cpu"            # 'cuda' puts the workers on the GPU (they then compute in bf16)
    # Workers run at this lower CPU priority (nice) than the services. In a deployment the
    # coordinator, verifier and relays have machines of their own; here they share cores with
    # busy workers, which only need the cycles left over. (bench/learning: with it alone the
    # verification queue's wait fell from 2.2 s to 1.2 s median; batching verdicts did the rest.)
    worker_nice: int = 10
    # Hooks for tests and benches that put hostile parties next to the honest ones:
    env: dict[str, str] = field(default_factory=dict)            # extra environment of every role's process
    extra_relays: dict[str, list[str]] = field(default_factory=dict)  # role -> URLs listed before the honest relay
    overrides: dict[str, dict] = field(default_factory=dict)     # role -> nested config values over the plan's


@dataclass
class SwarmPlan:
    root: Path
    model_dir: Path
    settings: SwarmSettings
    configs: dict[str, Path]
    coordinator_url: str
    origin_url: str
    relay_url: str
    operator: KeyPair
    worker_names: list[str]
    cheater_names: list[str]
    p2p_bootstrap: str = ""               # the coordinator's libp2p multiaddr ("" = swarm layer off)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def operator_token(self) -> str:
        """The token that unlocks the dashboard's full views (Authorization: Bearer ...)."""
        return (self.root / "keys" / TOKEN_FILE).read_text().strip()


TOKEN_FILE = "operator.token"


def _operator_token_file(keys: Path) -> Path:
    path = keys / TOKEN_FILE
    if not path.exists():
        keys.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(24) + "\n")
    return path


def plan_swarm(root: Path, model_dir: Path, s: SwarmSettings) -> SwarmPlan:
    """Write keys and one config file per role under `root` (the model must already exist)."""
    root = Path(root)
    keys = root / "keys"
    operator = KeyPair.load_or_create(keys / "operator.key")
    verifier = KeyPair.load_or_create(keys / "verifier.key")
    ports = {name: free_port(HOST) for name in ("coordinator", "origin", "relay", "p2p")}
    p2p_on = libp2p_available() if s.p2p is None else s.p2p
    coord_peer = KeyPair.load_or_create(keys / "coordinator.key").peer_id
    p2p_boot = bootstrap_multiaddr(HOST, ports["p2p"], coord_peer) if p2p_on else ""
    # Every address here is 127.0.0.1, which adverts may carry only where the operator allows it.
    local = {"enabled": p2p_on, "allow_private_addresses": True}
    peer_cfg = P2PConfig(**local)  # workers and the verifier: bootstrap from GET /v1/run
    coord_url = f"http://{HOST}:{ports['coordinator']}"
    origin_url = f"http://{HOST}:{ports['origin']}"
    relay_url = f"http://{HOST}:{ports['relay']}"
    run_id = f"demo-{s.seed}"
    task = TaskConfig(kind="arithmetic", seed=s.seed, options=s.task_options)
    cfgdir = root / "config"
    configs: dict[str, Path] = {}

    configs["coordinator"] = _write(s, "coordinator", cfgdir, CoordinatorConfig(
        run_id=run_id, host=HOST, port=ports["coordinator"], data_dir=root / "coordinator",
        key_file=keys / "coordinator.key", operator_key=operator.public.hex,
        verifier_keys=[verifier.public.hex], model=str(model_dir), relays=[relay_url], tasks=task,
        sampling=SamplingConfig(temperature=s.temperature, max_tokens=s.max_tokens),
        group_size=s.group_size, async_window=s.async_window, limits=LimitsConfig(exempt_addresses=LOOPBACK),
        dashboard=DashboardConfig(operator_token_file=str(_operator_token_file(keys))),
        p2p=P2PConfig(**local, listen_host=HOST, listen_port=ports["p2p"])))
    # The run's id, async window and task source are the coordinator's: the trainer takes them from GET /v1/run.
    # The run's id, async window and task source are the coordinator's: the trainer takes them from GET /v1/run.
    configs["trainer"] = _write(s, "trainer", cfgdir, TrainerConfig(
        coordinator_url=coord_url, key_file=keys / "operator.key", model=str(model_dir),
        data_dir=root / "trainer", port=0, threads=1, lr=s.lr, groups_per_step=s.groups_per_step,
        updates_per_batch=s.updates_per_batch, grad_clip=s.grad_clip, max_versions=s.max_versions,
        origin=OriginConfig(host=HOST, port=ports["origin"], data_dir=root / "origin",
                            shard_size=1024 * 1024, keep_versions=s.keep_versions),
        eval=EvalConfig(every_versions=s.eval_every, num_tasks=s.eval_tasks), max_eval_tokens=s.max_tokens))
    configs["relay"] = _write(s, "relay", cfgdir, RelayConfig(
        upstreams=[origin_url], operator_key=operator.public.hex, host=HOST, port=ports["relay"],
        data_dir=root / "relay", keep_versions=s.keep_versions, run_id=run_id,
        p2p=P2PConfig(**local, bootstrap=[p2p_boot] if p2p_on else [])))
    configs["verifier"] = _write(s, "verifier", cfgdir, VerifierConfig(
        coordinator_url=coord_url, key_file=keys / "verifier.key", data_dir=root / "verifier",
        relays=[*s.extra_relays.get("verifier", []), relay_url], threads=1, p2p=peer_cfg))
    workers, cheaters = [], []
    for i in range(s.honest_workers + s.cheaters):
        honest = i < s.honest_workers
        name = f"worker-{i + 1}" if honest else f"cheater-{i - s.honest_workers + 1}"
        (workers if honest else cheaters).append(name)
        configs[name] = _write(s, name, cfgdir, WorkerConfig(
            coordinator_url=coord_url, key_file=root / name / "worker.key", data_dir=root / name,
            relays=[*s.extra_relays[name], relay_url] if name in s.extra_relays else [],
            engine="transformers", device=s.worker_device, dtype="float32" if s.worker_device == "cpu" else "auto",
            threads=1, max_tasks=s.worker_max_tasks,
            json_logs=True, p2p=peer_cfg))
    return SwarmPlan(root=root, model_dir=model_dir, settings=s, configs=configs, coordinator_url=coord_url,
                     origin_url=origin_url, relay_url=relay_url, operator=operator,
                     worker_names=workers, cheater_names=cheaters, p2p_bootstrap=p2p_boot)


def _write(s: SwarmSettings, name: str, cfgdir: Path, cfg: BaseModel) -> Path:
    """Write role `name`'s config file, with `s.overrides[name]` merged in (checked like a file's)."""
    path = write_config(cfgdir / f"{name}.toml", cfg)
    if s.overrides.get(name):
        write_config(path, load_config(type(cfg), path, overrides=s.overrides[name]))
    return path


def start_swarm(plan: SwarmPlan, group: ProcessGroup, *, workers: bool = True) -> None:
    """Start every role of `plan` in `group` (each with one compute thread)."""
    env = child_env(threads=1, extra=plan.settings.env)
    cfg = plan.configs
    group.start("coordinator", ["coordinator", "--config", str(cfg["coordinator"])], env=env)
    group.start("trainer", ["trainer", "--config", str(cfg["trainer"])], env=env)
    group.start("relay", ["relay", "--config", str(cfg["relay"])], env=env)
    group.start("verifier", ["verifier", "--config", str(cfg["verifier"])], env=env)
    if workers:
        start_workers(plan, group)


def start_workers(plan: SwarmPlan, group: ProcessGroup) -> None:
    env = child_env(threads=1, extra=plan.settings.env)
    nice = plan.settings.worker_nice
    for name in plan.worker_names:
        group.start(name, ["worker", "--config", str(plan.configs[name])], env=env, nice=nice)
    for name in plan.cheater_names:
        group.start(name, ["--config", str(plan.configs[name]), "--cheat", plan.settings.cheat],
                    env=env, module="swarmrl.adversary", nice=nice)
