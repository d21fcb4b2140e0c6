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
    from trainer.config import TrainerConfig

    cfg = _load(TrainerConfig, config, "SWARMRL_TRAINER_", set_, {})
    from trainer.main import run

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
    heads: int = typer.Option(4, help="attention heads"),
    kv_heads: int = typer.Option(2, help="key/value heads"),
    arch: str = typer.Option("qwen2", help="architecture: qwen2 or llama"),
    tokenizer: str = typer.Option("char", help="char (one token per character) or bpe (byte-level BPE trained "
                                  "here on text the project generates and ships, with a ChatML chat template)"),
    vocab_size: int = typer.Option(1024, help="BPE vocabulary size (tokenizer bpe)"),
    tied: bool = typer.Option(False, help="tie the LM head to the embeddings"),
    seed: int = typer.Option(0, help="seed of the weights"),
    warm_start_s: float = typer.Option(0.0, "--warm-start", help="seconds of supervised warm start on the demo task (0 = none)"),
    task_seed: int = typer.Option(0, help="seed of the demo task stream used for the warm start"),
) -> None:
    """Write a small Qwen2- or Llama-architecture model and a locally built tokenizer (no download)."""
    from swarmrl.modelkit import init_model, warm_start

    try:
        info = init_model(directory, arch=arch, tokenizer=tokenizer, vocab_size=vocab_size, hidden_size=hidden,
                          num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, seed=seed,
                          tie_word_embeddings=tied)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {directory}: {arch}, {tokenizer} tokenizer, {info['parameters']:,} parameters, "
               f"vocab {info['vocab_size']}, EOS ids {info['eos_token_ids']}")
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
    worker_device: str = typer.Option("cpu", help="torch device of the workers: 'cpu' or 'cuda' (bf16 on a GPU)"),
    recipe: str = typer.Option("arithmetic", help="what to train: 'arithmetic' (built in), 'tasks' (a BPE Qwen2 "
                               "model on a generated JSONL dataset with the chat template), or a recipe folder"),
) -> None:
    """Start a whole swarm on this machine and train the tiny model until the budget ends."""
    from swarmrl.demo import DemoOptions, run_demo

    code = run_demo(DemoOptions(workdir=workdir, minutes=minutes, seed=seed, honest_workers=honest_workers,
                                cheaters=cheaters, worker_device=worker_device, recipe=recipe))
    raise typer.Exit(code)


# -- audit ------------------------------------------------------------------------------------
audit_app = typer.Typer(no_args_is_help=True,
                        help="Audit archived rollouts: list, show, re-verify, export, per-worker summary.")
app.add_typer(audit_app, name="audit")

ArchiveOpt = typer.Option(Path("./swarmrl-data/coordinator/archive"), "--archive", "-a", envvar="SWARMRL_ARCHIVE",
                          help="the coordinator's archive folder (<data_dir>/archive)")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of tables")
WorkerOpt = typer.Option([], "--worker", "-w", help="worker id or a prefix of 6+ characters (repeatable)")
VersionOpt = typer.Option(None, "--version", "-v", help="policy version: N, A:B, :B or A:")
VerdictOpt = typer.Option([], "--verdict", help="accepted, rejected or undecided (repeatable)")
MinRewardOpt = typer.Option(None, "--min-reward", help="mean reward of the group at least this")
MaxRewardOpt = typer.Option(None, "--max-reward", help="mean reward of the group at most this")
SinceOpt = typer.Option(None, "--since", help="received at/after: unix s, ISO 8601 (UTC) or an age (15m, 2h)")
UntilOpt = typer.Option(None, "--until", help="received at/before (same forms as --since)")
LimitOpt = typer.Option(None, "--limit", "-n", help="only the newest N matching submissions")


def _audit(fn, *args, **kwargs) -> None:
    from protocol.errors import ProtocolError
    from verifier.audit.errors import AuditError

    try:
        code = fn(*args, **kwargs)
    except (AuditError, ProtocolError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


def _selection(worker, version, verdict, min_reward, max_reward, since, until, limit):
    from verifier.audit.commands import Selection

    return Selection(workers=worker, version=version, verdicts=verdict, min_reward=min_reward,
                     max_reward=max_reward, since=since, until=until, limit=limit)


@audit_app.command("list")
def audit_list(archive: Path = ArchiveOpt, worker: list[str] = WorkerOpt, version: Optional[str] = VersionOpt,
               verdict: list[str] = VerdictOpt, min_reward: Optional[float] = MinRewardOpt,
               max_reward: Optional[float] = MaxRewardOpt, since: Optional[str] = SinceOpt,
               until: Optional[str] = UntilOpt, limit: Optional[int] = LimitOpt, json_out: bool = JsonOpt) -> None:
    """List archived submissions with their verdicts, filtered."""
    from verifier.audit.commands import list_cmd

    _audit(list_cmd, archive, _selection(worker, version, verdict, min_reward, max_reward, since, until, limit),
           json_out)


@audit_app.command("show")
def audit_show(submission_id: str = typer.Argument(..., help="submission id (or a unique prefix)"),
               archive: Path = ArchiveOpt, json_out: bool = JsonOpt,
               model: Optional[str] = typer.Option(None, "--model", help="tokenizer to decode with (default: the "
                                                   "archived checkpoint, else the run's model)")) -> None:
    """Show one rollout: decoded prompt and completions, rewards, the verdict and every check."""
    from verifier.audit.commands import show_cmd

    _audit(show_cmd, archive, submission_id, model, json_out)


@audit_app.command("reverify")
def audit_reverify(
    submission_ids: list[str] = typer.Argument(None, help="submission ids (none: every one the filters select)"),
    archive: Path = ArchiveOpt, worker: list[str] = WorkerOpt, version: Optional[str] = VersionOpt,
    verdict: list[str] = VerdictOpt, min_reward: Optional[float] = MinRewardOpt,
    max_reward: Optional[float] = MaxRewardOpt, since: Optional[str] = SinceOpt, until: Optional[str] = UntilOpt,
    limit: Optional[int] = LimitOpt, json_out: bool = JsonOpt,
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="TOML with the verifier's limits "
                                              "(a verifier config: \\[thresholds] for float32, \\[bf16_thresholds]; or a "
                                              "bare float32 table); the prefill computes in each rollout's declared dtype"),
    device: str = typer.Option("cpu", help="torch device of the prefill"),
    model: Optional[str] = typer.Option(None, "--model", help="tokenizer to decode with"),
    replay_history: bool = typer.Option(True, "--replay-history/--no-replay-history",
                                        help="rebuild the replay ledger from earlier archived submissions"),
) -> None:
    """Re-run the verifier's checks on archived rollouts against their archived checkpoints and say whether
    each recorded verdict holds (exit 1 if one does not)."""
    from verifier.audit.commands import reverify_cmd

    _audit(reverify_cmd, archive, submission_ids or [],
           _selection(worker, version, verdict, min_reward, max_reward, since, until, limit),
           thresholds=thresholds, device=device, model=model, replay_history=replay_history,
           as_json=json_out)


@audit_app.command("export")
def audit_export(out: Path = typer.Argument(..., help="output file: *.parquet or *.jsonl"),
                 archive: Path = ArchiveOpt, worker: list[str] = WorkerOpt, version: Optional[str] = VersionOpt,
                 verdict: list[str] = VerdictOpt, min_reward: Optional[float] = MinRewardOpt,
                 max_reward: Optional[float] = MaxRewardOpt, since: Optional[str] = SinceOpt,
                 until: Optional[str] = UntilOpt, limit: Optional[int] = LimitOpt,
                 fmt: Optional[str] = typer.Option(None, "--format", help="parquet or jsonl (default: from the name)"),
                 ) -> None:
    """Write the selected submissions (with verdicts and decoded token columns) to Parquet or JSONL."""
    from verifier.audit.commands import export_cmd

    _audit(export_cmd, archive, _selection(worker, version, verdict, min_reward, max_reward, since, until, limit),
           out, fmt)


@audit_app.command("summary")
def audit_summary(archive: Path = ArchiveOpt, worker: list[str] = WorkerOpt, version: Optional[str] = VersionOpt,
                  verdict: list[str] = VerdictOpt, min_reward: Optional[float] = MinRewardOpt,
                  max_reward: Optional[float] = MaxRewardOpt, since: Optional[str] = SinceOpt,
                  until: Optional[str] = UntilOpt, limit: Optional[int] = LimitOpt,
                  json_out: bool = JsonOpt) -> None:
    """Per worker: submissions, accepted, rejected, undecided, tokens, mean reward, rejection reasons."""
    from verifier.audit.commands import summary_cmd

    _audit(summary_cmd, archive, _selection(worker, version, verdict, min_reward, max_reward, since, until, limit),
           json_out)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
