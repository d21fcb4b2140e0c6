"""The `swarmrl` command: one thin entry point per role.

Each command parses its config (TOML file < environment < flags), then imports the role's
heavy code, so `swarmrl --help` is instant. Errors a user can fix are one line on stderr
and exit status 2; details go to the log.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reinforcement learning on a permissionless, verified compute swarm.")
keys_app = typer.Typer(no_args_is_help=True, help="Create and inspect Ed25519 identities.")
model_app = typer.Typer(no_args_is_help=True, help="Build the tiny local model for tests and the demo.")
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file", exists=False)
SetOpt = typer.Option([], "--set", help="override a config field: --set key.sub=value (repeatable)")


def _fail(msg: str) -> None:
    typer.echo(f"swarmrl: {msg}", err=True)
    raise typer.Exit(2)


def _load(model, path: Optional[Path], prefix: str, sets: list[str], extra: dict):
    from protocol.config import _merge, load_config, parse_overrides
    from protocol.errors import ProtocolError

    try:
        overrides = _merge({k: v for k, v in extra.items() if v is not None}, parse_overrides(sets))
        return load_config(model, path, env_prefix=prefix, overrides=overrides)
    except ProtocolError as exc:
        _fail(str(exc))


def _run(fn, cfg) -> None:
    from protocol.errors import ProtocolError

    try:
        fn(cfg)
    except ProtocolError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


@app.command()
def coordinator(config: Optional[Path] = ConfigOpt, set_: list[str] = SetOpt,
                port: Optional[int] = typer.Option(None, help="listen port")) -> None:
    """Run the coordinator: registry, leases, intake, rewards, verification queue, buffer."""
    from coordinator.config import CoordinatorConfig

    cfg = _load(CoordinatorConfig, config, "SWARMRL_COORDINATOR_", set_, {"port": port})
    from coordinator.main import run

    _run(run, cfg)


@app.command()
def trainer(config: Optional[Path] = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Run the trainer: GRPO steps on verified groups, publishing each policy version."""
    from coordinator.trainer.config import TrainerConfig

    cfg = _load(TrainerConfig, config, "SWARMRL_TRAINER_", set_, {})
    from coordinator.trainer.main import run

    _run(run, cfg)


@app.command()
def verifier(config: Optional[Path] = ConfigOpt, set_: list[str] = SetOpt,
             coordinator: Optional[str] = typer.Option(None, "--coordinator", help="coordinator URL")) -> None:
    """Run a verifier: claim submissions, re-run the model, post signed verdicts."""
    from verifier.config import VerifierConfig

    cfg = _load(VerifierConfig, config, "SWARMRL_VERIFIER_", set_, {"coordinator_url": coordinator})
    from verifier.main import run

    _run(run, cfg)


@app.command()
def relay(config: Optional[Path] = ConfigOpt, set_: list[str] = SetOpt,
          upstream: list[str] = typer.Option([], "--upstream", help="origin or relay URL (repeatable)"),
          operator_key: Optional[str] = typer.Option(None, "--operator-key", help="hex key that signs manifests"),
          port: Optional[int] = typer.Option(None, help="listen port")) -> None:
    """Run a shardcast relay that mirrors, verifies and serves policy versions."""
    from shardcast.config import RelayConfig

    cfg = _load(RelayConfig, config, "SWARMRL_RELAY_", set_,
                {"upstreams": upstream or None, "operator_key": operator_key, "port": port})
    from shardcast.relay import run

    _run(run, cfg)


worker_app = typer.Typer(invoke_without_command=True, help="Run the worker daemon (or `worker status`).")
app.add_typer(worker_app, name="worker")


@worker_app.callback()
def worker(ctx: typer.Context, config: Optional[Path] = ConfigOpt, set_: list[str] = SetOpt,
           coordinator: Optional[str] = typer.Option(None, "--coordinator", help="coordinator URL"),
           key: Optional[Path] = typer.Option(None, "--key", help="key file (created if missing)"),
           engine: Optional[str] = typer.Option(None, "--engine", help="auto | transformers | vllm"),
           json_logs: Optional[bool] = typer.Option(None, "--json", help="JSON log lines for daemons")) -> None:
    """Contribute this machine's GPU (or CPU) to a swarm."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config": config, "set": set_, "json_logs": json_logs}
        return
    from worker.config import WorkerConfig

    cfg = _load(WorkerConfig, config, "SWARMRL_WORKER_", set_,
                {"coordinator_url": coordinator, "key_file": str(key) if key else None,
                 "engine": engine, "json_logs": json_logs})
    from worker.main import run

    _run(run, cfg)


@worker_app.command("status")
def worker_status(ctx: typer.Context) -> None:
    """Print the running worker's status (from its local /status endpoint)."""
    from worker.config import WorkerConfig

    obj = ctx.obj or {}
    cfg = _load(WorkerConfig, obj.get("config"), "SWARMRL_WORKER_", obj.get("set", []),
                {"json_logs": obj.get("json_logs")})
    from worker.main import print_status

    _run(print_status, cfg)


@keys_app.command("new")
def keys_new(path: Path = typer.Argument(..., help="where to write the key file (mode 0600)"),
             force: bool = typer.Option(False, help="overwrite an existing file")) -> None:
    """Create a new Ed25519 identity."""
    from protocol.identity import KeyPair

    if path.exists() and not force:
        _fail(f"{path} already exists (use --force to replace it)")
    key = KeyPair.generate()
    key.save(path)
    typer.echo(f"peer_id    {key.peer_id}\npublic_key {key.public.hex}")


@keys_app.command("show")
def keys_show(path: Path = typer.Argument(..., help="key file")) -> None:
    """Print the peer id and public key of a key file."""
    from protocol.errors import ProtocolError
    from protocol.identity import KeyPair

    try:
        key = KeyPair.load(path)
    except ProtocolError as exc:
        _fail(str(exc))
    typer.echo(f"peer_id    {key.peer_id}\npublic_key {key.public.hex}")


@model_app.command("init")
def model_init(
    directory: Path = typer.Argument(..., help="output folder (a transformers model directory)"),
    hidden: int = typer.Option(128, help="hidden size"),
    layers: int = typer.Option(4, help="decoder layers"),
    seed: int = typer.Option(0, help="seed of the weights"),
    warm_start_s: float = typer.Option(0.0, "--warm-start", help="seconds of supervised warm start on the demo task (0 = none)"),
    task_seed: int = typer.Option(0, help="seed of the demo task stream used for the warm start"),
) -> None:
    """Write a small Qwen2-architecture model and a locally built tokenizer (no download)."""
    from swarmrl.modelkit import init_tiny_model, warm_start

    info = init_tiny_model(directory, hidden_size=hidden, num_layers=layers, seed=seed)
    typer.echo(f"wrote {directory}: {info['parameters']:,} parameters, vocab {info['vocab_size']}")
    if warm_start_s > 0:
        stats = warm_start(directory, seconds=warm_start_s, seed=seed, task_seed=task_seed)
        typer.echo(f"warm start: {stats['steps']} steps, held-out greedy accuracy {stats['accuracy']:.1%}")


@app.command()
def demo(
    workdir: Optional[Path] = typer.Option(None, help="folder for the run (default: a new temporary folder)"),
    minutes: float = typer.Option(6.0, help="wall-clock budget of the RL phase"),
    seed: int = typer.Option(0, help="seed of the model, tasks and keys"),
    honest_workers: int = typer.Option(3, help="honest worker processes"),
    cheaters: int = typer.Option(1, help="dishonest worker processes (generate with other weights)"),
) -> None:
    """Start a whole swarm on this machine and train the tiny model until the budget ends."""
    from swarmrl.demo import DemoOptions, run_demo

    code = run_demo(DemoOptions(workdir=workdir, minutes=minutes, seed=seed,
                                honest_workers=honest_workers, cheaters=cheaters))
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
