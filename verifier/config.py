"""Configuration of the verifier service (`swarmrl verifier --config verifier.toml`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from protocol.config import KeyPins
from shardcast.p2p.config import P2PConfig

from verifier.thresholds import LOW_PRECISION, Thresholds


class VerifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    coordinator_url: str = Field("http://127.0.0.1:8700", description="coordinator to claim jobs from")
    key_file: Path = Field(Path("./swarmrl-data/keys/verifier.key"), description="verifier key (signs verdicts)")
    data_dir: Path = Field(Path("./swarmrl-data/verifier"), description="checkpoint cache")
    relays: list[str] = Field(default_factory=list, description="shardcast URLs; empty = those the coordinator advertises")
    device: str = Field("cpu", description="torch device for the prefill pass")
    dtype: str = Field("float32", description="compute dtype of the prefill pass (for workers that declare none of match_dtypes)")
    batch_jobs: int = Field(8, ge=1, le=64, description="jobs claimed per request")
    poll_interval_s: float = Field(0.5, description="wait between claims when the queue is empty")
    threads: int = Field(0, ge=0, description="torch threads (0 = torch default)")
    host: str = Field("127.0.0.1", description="address of the /health and /metrics endpoints")
    port: int = Field(0, description="port of the /health and /metrics endpoints (0 = free port)")
    max_models: int = Field(3, ge=1, le=64, description="policy versions kept loaded in memory (LRU)")
    keep_versions: int = Field(8, ge=1, description="policy versions kept in the checkpoint cache on disk")
    thresholds: Thresholds = Field(
        default_factory=Thresholds,
        description="decision thresholds of the checks for fp32 prefills (calibrate per model: bench/verification.py)")
    low_precision_thresholds: Thresholds = Field(
        default_factory=lambda: LOW_PRECISION,
        description="decision thresholds for bf16/fp16 prefills (workers declaring a low-precision dtype)")
    match_dtypes: list[str] = Field(
        default_factory=lambda: ["float32", "bfloat16", "float16"],
        description="a worker declaring one of these compute dtypes is checked by a prefill in the same dtype "
                    "(honest workers then agree almost bit for bit, so thresholds can be tight)")
    log_level: str = Field("info", description="python logging level")
    p2p: P2PConfig = Field(default_factory=P2PConfig, description="libp2p swarm layer: hear versions and relays on the run's topic, fetch verified shards from peers when relays fail (bootstrap: the coordinator's, from GET /v1/run, unless set)")
    pins: KeyPins = Field(default_factory=KeyPins, description="operator, coordinator and verifier keys trusted "
                          "ahead of GET /v1/run: a served key that differs stops the verifier at start (empty = "
                          "believe the coordinator)")
