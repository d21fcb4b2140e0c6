"""Configuration of the trainer (`swarmrl trainer --config trainer.toml`), and what it takes
from the run.

The run's terms are the coordinator's config, served at GET /v1/run (`RunInfo`): its id, the
async window and the task source. `from_run` fills them into the trainer's config at start;
a trainer config may still name them (`run_id`, `async_window`, `tasks_*`), but only as a check:
a value that differs from the coordinator's stops the trainer before anything starts, with a
line naming each field. Everything else here (learning rate, loss, packing, evaluation,
checkpoints) is the trainer's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.config import KeyPins
from protocol.messages import DEFAULT_MAX_BODY_BYTES, RunInfo, TaskSpec
from protocol.tracking import TrackingConfig
from protocol.window import staleness_limit
from shardcast.config import OriginConfig
from trainer.errors import TrainerError

# bench/staleness.py (issue 23; the table is in docs/design.md, "Staleness and waste"): with the
# correction, groups up to 8 versions old stay within about 4 points of fresh ones on the demo
# task, lags 5-8 no lower than 3-4 (without it, 4 collapses); most groups train at lag 0-2. 6, not
# 4: in a demo run, the groups that still went stale at 4 were ready at lag 4-5 (held for their
# worker's next full check, or verified in the start's backlog) and were dropped by the version
# that the step in progress published; 6 keeps them (cost: 2 more versions of weights in the
# trainer's history and on disk).
MAX_STALENESS = 6


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["grpo", "cispo"] = Field("grpo", description="GRPO/PPO-clip or CISPO-style loss")
    epsilon: float = Field(0.2, description="PPO clip range")
    delta: float = Field(4.0, description="two-sided clipping: the ratio is capped at delta")
    kl_coef: float = Field(0.0, description="KL to the reference policy (0 = off)")
    entropy_coef: float = Field(0.0, description="entropy bonus (0 = off)")
    max_importance_weight: float = Field(2.0, description="cap of the behaviour-policy importance weight")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_versions: int = Field(5, ge=0, description="held-out evaluation every N versions (0 = off)")
    num_tasks: int = Field(200, ge=1, description="held-out tasks per evaluation")
    sampled: bool = Field(False, description="also measure sampled (temperature) accuracy")
    temperature: float = Field(1.0, gt=0, description="temperature of the sampled accuracy (seeded Gumbel sampling)")
    at_start: bool = Field(True, description="evaluate version 0 (or the resumed version) before training")


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_id: str = Field("", description="the run to train (empty: the coordinator's run_id, from GET /v1/run; "
                        "set: it must be the coordinator's, or the trainer does not start)")
    coordinator_url: str = Field("http://127.0.0.1:8700", description="coordinator to take batches from")
    coordinator_max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="the coordinator's "
                                            "limits.max_body_bytes (its largest submission): bounds its answers, "
                                            "a batch at groups x (this + ~0.4 MiB); raise both together")
    key_file: Path = Field(Path("./swarmrl-data/keys/operator.key"), description="operator key (signs manifests and batch requests)")
    model: str = Field(..., description="initial model folder or hub id (version 0)")
    data_dir: Path = Field(Path("./swarmrl-data/trainer"), description="checkpoints and optimizer state")
    origin: OriginConfig = Field(default_factory=OriginConfig)
    device: str = Field("cpu", description="torch device")
    threads: int = Field(0, ge=0, description="torch threads (0 = torch default)")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="max gradient norm")
    groups_per_step: int = Field(16, ge=1, description="accepted groups per optimizer step")
    async_window: int | None = Field(None, ge=0, description="train on groups from versions current-k..current "
                                     "(empty: the coordinator's async_window, the run's one setting of the "
                                     "window; set: it must be the coordinator's, or the trainer does not start)")
    max_staleness: int = Field(MAX_STALENESS, ge=0, le=64, description=(
        "train on groups up to this many versions old (at least async_window: what a lease allowed is always "
        "trainable), with the decoupled importance-weight correction; work that arrives a little after the async "
        "window has moved on is still trained instead of dropped. The coordinator keeps groups down to the "
        "floor the trainer asks for. Default from bench/staleness.py (issue 23)"))
    max_versions: int = Field(0, ge=0, description="stop after publishing this many versions (0 = run forever)")
    loss: LossConfig = Field(default_factory=LossConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tasks_kind: str = Field("", description="task source of the held-out evaluation (empty: the coordinator's "
                            "tasks.kind; set: it must be the coordinator's, or the trainer does not start)")
    tasks_seed: int | None = Field(None, description="seed of that task source (empty: the coordinator's tasks.seed; "
                                   "set: it must be the coordinator's)")
    tasks_options: dict | None = Field(None, description="options of that task source (empty: the coordinator's "
                                       "tasks.options; set: they must be the coordinator's)")
    tasks_chat_template: bool | None = Field(None, description="held-out prompts use the chat template (empty: the "
                                             "coordinator's chat_template; set: it must be the coordinator's)")
    max_eval_tokens: int = Field(8, ge=1, description="completion cap of held-out evaluation")
    # -- additions (trainer helper) --
    host: str = Field("127.0.0.1", description="address of the trainer's own /health and /metrics")
    port: int = Field(8760, description="port of /health and /metrics (0 = free port, written to data_dir/trainer.port)")
    seed: int = Field(0, description="torch seed of the trainer")
    updates_per_batch: int = Field(1, ge=1, description="optimizer updates per batch of groups (PPO epochs); 1 = one update per version")
    min_pass_rate: float = Field(0.0, ge=0, le=1, description="drop groups whose share of rewarded samples is below this")
    max_pass_rate: float = Field(1.0, ge=0, le=1, description="drop groups whose share of rewarded samples is above this")
    row_tokens: int = Field(0, ge=0, description="packing: tokens per packed row (0 = auto: the step's longest sequence, at least 128; attention over a row costs its length squared)")
    micro_batch_tokens: int = Field(16384, ge=16, description="packing: padded tokens per micro-batch (bounds memory)")
    batch_wait_s: float = Field(5.0, ge=0, le=60, description="long-poll time of each batch request (also bounds how long a stop request waits)")
    keep_checkpoints: int = Field(4, ge=1, description="newest complete versions kept on disk (at least async_window + 1 are kept)")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas")
    lr_warmup_versions: int = Field(0, ge=0, description="learning-rate warm-up: the rate rises linearly over the "
                                    "first N versions (0 = none); `trainer.schedule`")
    lr_decay: Literal["constant", "linear", "cosine"] = Field("constant", description="learning-rate decay after "
                                                              "the warm-up, down to lr * lr_min_ratio")
    lr_decay_versions: int = Field(0, ge=0, description="versions the decay takes (0 = until max_versions; "
                                   "constant when max_versions is 0 too)")
    lr_min_ratio: float = Field(0.1, ge=0, le=1, description="the decayed learning rate, as a share of lr")
    precision: Literal["fp32", "bf16-mixed"] = Field("fp32", description="fp32: everything in float32. "
                                                     "bf16-mixed: float32 master weights and AdamW state, forward "
                                                     "and backward under bfloat16 autocast (about half the "
                                                     "activation memory, faster matmuls on GPUs)")
    activation_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in the "
                                           "backward instead of keeping them (less memory, ~30% more compute)")
    logit_rows: int = Field(512, ge=1, description="completion tokens whose full-vocabulary logits are computed "
                            "at once (the log-probabilities are chunked; bounds memory at rows x vocabulary)")
    checkpoint_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of published checkpoints (auto: the initial model's own dtype, e.g. bfloat16 "
        "for a bf16 model; the trainer keeps float32 master weights)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="experiment tracking of the "
                                     "trainer's metrics (`protocol.tracking`; TensorBoard event files in "
                                     "data_dir/tracking by default)")
    pins: KeyPins = Field(default_factory=KeyPins, description="keys trusted ahead of the network: `operator` must "
                          "be this trainer's own key, and the coordinator's GET /v1/run must serve the pinned keys, "
                          "or the trainer stops at start (empty = not checked)")

    @property
    def staleness_limit(self) -> int:
        """How many versions old a group may be when a step takes it (`protocol.window.staleness_limit`)."""
        return staleness_limit(self.async_window or 0, self.max_staleness)

    @property
    def tasks(self) -> TaskSpec:
        """The task source (after `from_run`: the run's)."""
        return TaskSpec(kind=self.tasks_kind, seed=self.tasks_seed or 0, options=dict(self.tasks_options or {}),
                        chat_template=bool(self.tasks_chat_template))


def from_run(cfg: TrainerConfig, info: RunInfo, where: str) -> TrainerConfig:
    """`cfg` with the run's terms taken from the coordinator's `info` (a pure function).

    Raises TrainerError naming every field the trainer's config sets to another value than the
    coordinator's (`where` says which coordinator), or when neither names a task source."""
    ours: dict[str, Any] = {"run_id": cfg.run_id or None, "async_window": cfg.async_window}
    theirs: dict[str, Any] = {"run_id": info.run_id, "async_window": info.async_window}
    if info.tasks is not None:
        ours |= {"tasks_kind": cfg.tasks_kind or None, "tasks_seed": cfg.tasks_seed, "tasks_options": cfg.tasks_options,
                 "tasks_chat_template": cfg.tasks_chat_template}
        theirs |= {"tasks_kind": info.tasks.kind, "tasks_seed": info.tasks.seed, "tasks_options": info.tasks.options,
                   "tasks_chat_template": info.tasks.chat_template}
    elif not cfg.tasks_kind:
        raise TrainerError(f"{where} does not say which task source the run uses; set tasks_kind (and tasks_seed, "
                           "tasks_options) in the trainer's config to the coordinator's tasks")
    wrong = [f"{k} = {ours[k]!r} (the coordinator's: {theirs[k]!r})" for k in theirs
             if ours[k] is not None and ours[k] != theirs[k]]
    if wrong:
        raise TrainerError(f"the trainer's config disagrees with the run at {where}: {'; '.join(wrong)}. These are "
                           "the coordinator's settings: leave them out of the trainer's config, or make them equal")
    return cfg.model_copy(update={k: v for k, v in theirs.items() if ours[k] is None})
