"""Configuration of the trainer (`swarmrl trainer --config trainer.toml`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.config import KeyPins
from shardcast.config import OriginConfig


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
    run_id: str = Field("swarmrl-run", description="must match the coordinator's run_id")
    coordinator_url: str = Field("http://127.0.0.1:8700", description="coordinator to take batches from")
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
    async_window: int = Field(2, ge=0, description="train on groups from versions current-k..current")
    max_versions: int = Field(0, ge=0, description="stop after publishing this many versions (0 = run forever)")
    loss: LossConfig = Field(default_factory=LossConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tasks_kind: str = Field("arithmetic", description="task source for held-out evaluation")
    tasks_seed: int = Field(0)
    tasks_options: dict = Field(default_factory=dict)
    max_eval_tokens: int = Field(8, ge=1, description="completion cap of held-out evaluation")
    # -- additions (trainer helper) --
    host: str = Field("127.0.0.1", description="address of the trainer's own /health and /metrics")
    port: int = Field(8760, description="port of /health and /metrics (0 = free port, written to data_dir/trainer.port)")
    seed: int = Field(0, description="torch seed of the trainer")
    updates_per_batch: int = Field(1, ge=1, description="optimizer updates per batch of groups (PPO epochs); 1 = one update per version")
    advantage_scale: bool = Field(True, description="divide group advantages by the group's reward std (GRPO); False = only centre (Dr. GRPO)")
    min_pass_rate: float = Field(0.0, ge=0, le=1, description="drop groups whose share of rewarded samples is below this")
    max_pass_rate: float = Field(1.0, ge=0, le=1, description="drop groups whose share of rewarded samples is above this")
    row_tokens: int = Field(0, ge=0, description="packing: tokens per packed row (0 = auto: the step's longest sequence, at least 128; attention over a row costs its length squared)")
    micro_batch_tokens: int = Field(16384, ge=16, description="packing: padded tokens per micro-batch (bounds memory)")
    batch_wait_s: float = Field(5.0, ge=0, le=60, description="long-poll time of each batch request (also bounds how long a stop request waits)")
    keep_checkpoints: int = Field(4, ge=1, description="newest complete versions kept on disk (at least async_window + 1 are kept)")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas")
    pins: KeyPins = Field(default_factory=KeyPins, description="keys trusted ahead of the network: `operator` must "
                          "be this trainer's own key, and the coordinator's GET /v1/run must serve the pinned keys, "
                          "or the trainer stops at start (empty = not checked)")
