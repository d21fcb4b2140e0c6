"""Assembling a trainer from its config: model, optimizer, checkpoints, origin, link, HTTP status.

`build_trainer` runs on rank 0: it joins the run first (`join_run`: the operator key, the
coordinator's GET /v1/run, whose run id, async window and task source complete the config),
then adds what only the leader has: the checkpoint store's version 0, the shardcast origin, the
coordinator link, the held-out task source, the metrics server and the `TrainerLoop`.
`build_model_and_optimizer` runs on every rank (same weights, same optimizer state: from the
newest complete version, or the initial model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from protocol.errors import ProtocolError
from trainer.checkpoint import CheckpointStore, Inbox
from trainer.config import TrainerConfig, from_run
from trainer.errors import TrainerError
from trainer.history import WeightHistory

log = logging.getLogger("swarmrl.trainer")


def checkpoint_store(cfg: TrainerConfig) -> CheckpointStore:
    return CheckpointStore(Path(cfg.data_dir), keep=max(cfg.keep_checkpoints, cfg.staleness_limit + 2))


def reference_model(cfg: TrainerConfig, team: Any) -> Any:
    """The frozen initial policy for the KL term (None when kl_coef is 0): always `cfg.model`,
    also after a resume, so the penalty keeps pulling towards where the run started."""
    if cfg.loss.kl_coef <= 0:
        return None
    from protocol.lm import load_model

    ref = load_model(cfg.model, device=team.device, dtype="float32").eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute every decoder layer in the backward (transformers' own switch; its name
    changed in transformers 5.x)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def publish_dtype(cfg: TrainerConfig) -> torch.dtype:
    """The dtype checkpoints are published in: the config's, or (auto) the initial model's
    own (its config.json's dtype; float32 when it names none)."""
    from protocol.lm import resolve_dtype

    if cfg.checkpoint_dtype != "auto":
        return resolve_dtype(cfg.checkpoint_dtype)
    from transformers import AutoConfig

    try:
        mc = AutoConfig.from_pretrained(cfg.model)
    except (OSError, ValueError) as exc:
        raise TrainerError(f"cannot read the model config of {cfg.model!r}: {exc}") from exc
    dt = getattr(mc, "dtype", None) or getattr(mc, "torch_dtype", None) or torch.float32
    return resolve_dtype(dt) if isinstance(dt, str) else dt


def make_optimizer(cfg: TrainerConfig, model: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_model_and_optimizer(cfg: TrainerConfig, team: Any) -> tuple[Any, Any, torch.optim.Optimizer, dict]:
    """(model to train, unsharded template, optimizer, resume state) — identical on every rank."""
    from protocol.lm import load_model

    torch.manual_seed(cfg.seed)
    store = checkpoint_store(cfg)
    if team.rank == 0:
        store.clean_incomplete()
    latest = team.broadcast(store.latest())
    if latest is None:
        source, state = cfg.model, {"version": 0, "step": 0, "resumed": False}
    else:
        source, state = str(latest.model_dir), {**latest.state(), "resumed": True}
    try:
        model = load_model(source, device=team.device, dtype="float32")
    except (OSError, ValueError) as exc:
        raise TrainerError(f"cannot load the model {source!r}: {exc}") from exc
    model.train()
    if cfg.activation_checkpointing:  # before sharding: FSDP wraps the checkpointed layers
        enable_activation_checkpointing(model)
    model, template = team.prepare(model)
    optimizer = make_optimizer(cfg, model)
    if latest is not None and latest.optimizer_path.exists():
        team.load_optimizer_state(model, optimizer, latest.optimizer_state())
    return model, template, optimizer, state


@dataclass
class Parts:
    loop: Any
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.closers):
            fn()


def join_run(cfg: TrainerConfig, stop: Any) -> tuple[TrainerConfig, Any, Any]:
    """(the config with the run's terms, the operator key, the coordinator link), before anything
    heavy starts: the key file (and its pin), GET /v1/run (waited for while the coordinator is
    unreachable; its keys checked against the pins), then `from_run` — a config that disagrees
    with the coordinator, like a wrong key, is a set-up error. `stop`: the `main.StopFlag`."""
    from protocol.identity import KeyPair
    from trainer.client import CoordinatorLink

    try:
        key = KeyPair.load(cfg.key_file)
    except ProtocolError as exc:
        raise TrainerError(f"operator key {cfg.key_file}: {exc}") from exc
    cfg.pins.check(source=f"the trainer's key file {cfg.key_file}", operator=key.public.hex)
    link = CoordinatorLink(cfg.coordinator_url, key, stop=stop.event, run_id=cfg.run_id,
                           max_submission_bytes=cfg.coordinator_max_body_bytes)
    where = f"the coordinator at {cfg.coordinator_url} (GET /v1/run)"
    try:
        info = link.run_info()
        cfg.pins.check_run(info, where)
        cfg = from_run(cfg, info, where)
        check_tasks(info)
    except BaseException:
        link.close()
        raise
    link.client.run_id = cfg.run_id  # every batch request and acknowledgement is signed for this run
    return cfg, key, link


def check_tasks(info: Any) -> None:
    """TrainerError when this trainer would build or score the run's tasks otherwise than the
    coordinator (other data files, plugin code or library versions: `protocol.tasks.digest`)."""
    from protocol.errors import ProtocolError
    from protocol.tasks.digest import check_run

    try:
        check_run("trainer", info)
    except ProtocolError as exc:
        raise TrainerError(str(exc)) from exc


def build_trainer(cfg: TrainerConfig, team: Any, stop: Any) -> Parts:
    """Rank 0's trainer. `cfg` is what the operator wrote: the run's terms are taken from the
    coordinator here (`join_run`) and sent to the other ranks before the model is built."""
    from protocol.http import ServerThread, write_port_file
    from protocol.lm import load_tokenizer
    from protocol.tasks import get_source
    from shardcast.origin import Origin
    from trainer.loop import TrainerLoop, step_options
    from trainer.status import PhaseClock, StatusBoard, TrainerMetrics, make_app

    cfg, key, link = join_run(cfg, stop)
    team.broadcast(cfg)  # the followers' `follower_loop` receives it
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    model, template, optimizer, state = build_model_and_optimizer(cfg, team)
    store = checkpoint_store(cfg)
    version, step = int(state["version"]), int(state.get("step", state["version"]))
    tokenizer = load_tokenizer(str(store.get(version).model_dir) if state["resumed"] else cfg.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    opts = step_options(cfg, pad_id)
    dtype = publish_dtype(cfg)

    def save(v: int, s: int, extra: dict) -> Any:
        sd, opt_sd = team.gather_for_save(model, optimizer, v)
        if team.rank != 0:
            return None
        return store.save(v, model=template if team.sharded else model, tokenizer=tokenizer,
                          optimizer_state=opt_sd, state={**extra, "step": s}, state_dict=sd, dtype=dtype)

    if not state["resumed"]:
        save(0, 0, {"step": 0})
        log.info("initial model %s saved as version 0", cfg.model)
    else:
        log.info("resuming from version %d (step %d)", version, step)

    # Rollouts may come from versions current-k .. current (k: the staleness limit), and `remember`
    # runs right after each new version: k + 1 versions must be held or the oldest would be missing.
    history = WeightHistory(template, keep=cfg.staleness_limit + 1, device=team.device)
    for v in store.complete_versions():
        if version - cfg.staleness_limit <= v <= version:
            history.remember(v, store.get(v).model_dir)
    tasks = cfg.tasks
    source = get_source(tasks.kind, seed=tasks.seed, options=tasks.options) if cfg.eval.every_versions or cfg.eval.at_start else None

    clock, metrics, board = PhaseClock(), TrainerMetrics(), StatusBoard()
    clock.on_add = lambda phase, s: metrics.phase_seconds.labels(phase).inc(s)
    server = ServerThread(make_app(board, metrics, clock), cfg.host, cfg.port).start()
    write_port_file(data_dir / "trainer.port", server.port)
    origin = Origin(cfg.origin, key, cfg.run_id)
    origin.start()
    parts = Parts(loop=None, closers=[server.stop, origin.stop, link.close])

    ref_model = reference_model(cfg, team)

    def step_fn(groups: list) -> Any:
        return team.step(model, optimizer, groups, version=loop.version, opts=opts, history=history,
                         ref_model=ref_model)

    eval_model = None if team.sharded else model
    loop = TrainerLoop(cfg, model=eval_model, tokenizer=tokenizer, store=store, inbox=Inbox(data_dir), link=link,
                       origin=origin, history=history, version=version, step=step, step_fn=step_fn, save_fn=save,
                       source=source, clock=clock, metrics=metrics, board=board, should_stop=stop)
    if team.sharded:
        loop.eval_model_fn = lambda: history.model_at_path(store.get(loop.version).model_dir)
    from protocol.tracking import open_tracker

    loop.tracker = open_tracker(cfg.tracking, default_dir=data_dir / "tracking", run_id=cfg.run_id, role="trainer",
                                config={"model": cfg.model, "lr": cfg.lr, "precision": cfg.precision,
                                        "groups_per_step": cfg.groups_per_step, "loss": cfg.loss.kind})
    parts.closers.append(loop.tracker.close)
    parts.loop = loop
    log.info("trainer of run %s: version %d, origin %s, status http://%s:%d, coordinator %s", cfg.run_id, version,
             origin.url, cfg.host, server.port, cfg.coordinator_url)
    return parts
