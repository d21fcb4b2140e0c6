"""Configuration of the verifier service (`swarmrl verifier --config verifier.toml`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.config import KeyPins
from protocol.envelope import IDENT_CHARS
from protocol.messages import DEFAULT_MAX_BODY_BYTES, MAX_ID_CHARS
from shardcast.p2p.config import P2PConfig

from verifier.thresholds import BFLOAT16, FLOAT32, Thresholds, overridden


class VerifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("thresholds", "bf16_thresholds", mode="before")
    @classmethod
    def _partial(cls, v, info):
        """A table that sets some limits keeps its dtype's calibrated values for the others."""
        return overridden("float32" if info.field_name == "thresholds" else "bfloat16", v) if isinstance(v, dict) else v
    coordinator_url: str = Field("http://127.0.0.1:8700", description="coordinator to claim jobs from")
    coordinator_max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="the coordinator's "
                                            "limits.max_body_bytes (its largest submission): bounds its answers, a "
                                            "claim at batch_jobs x (this + ~2 MiB); raise both together")
    key_file: Path = Field(Path("./swarmrl-data/keys/verifier.key"), description="verifier key (signs verdicts)")
    data_dir: Path = Field(Path("./swarmrl-data/verifier"), description="checkpoint cache")
    instance_id: str = Field("", max_length=MAX_ID_CHARS, pattern=rf"^[{IDENT_CHARS}]*$",
                             description="this process among the verifier replicas sharing its key, stable across "
                             "its restarts (a restarted one takes back only its own claims); empty = "
                             "<hostname>.<a token kept in data_dir/instance_id> (verifier/instance.py)")
    relays: list[str] = Field(default_factory=list, description="shardcast URLs; empty = those the coordinator advertises")
    tokenizer: str = Field("", description="the run's tokenizer (a folder or hub id), used only when a policy "
                           "checkpoint carries none (the trainer's always do); the coordinator's tokenizer_ref is "
                           "never loaded on its word")
    device: str = Field("cpu", description="torch device for the prefill pass")
    batch_jobs: int = Field(8, ge=1, le=64, description="jobs claimed per request")
    poll_interval_s: float = Field(0.5, description="wait between claims when the queue is empty")
    threads: int = Field(0, ge=0, description="torch threads (0 = torch default)")
    host: str = Field("127.0.0.1", description="address of the /health and /metrics endpoints")
    port: int = Field(0, description="port of the /health and /metrics endpoints (0 = free port)")
    max_models: int = Field(3, ge=1, le=64, description="policy versions kept loaded in memory (LRU)")
    keep_versions: int = Field(8, ge=1, description="policy versions kept in the checkpoint cache on disk")
    thresholds: Thresholds = Field(
        default_factory=lambda: FLOAT32,
        description="limits for submissions computed in float32, judged by a float32 prefill (calibrate per model: "
                    "bench/verification.py; verifier/thresholds.py says what they catch)")
    bf16_thresholds: Thresholds = Field(
        default_factory=lambda: BFLOAT16,
        description="limits for submissions computed in bfloat16, judged by a bfloat16 prefill (the prefill always "
                    "computes in the dtype the worker declares; the run's allowed_dtypes say which are accepted)")
    log_level: str = Field("info", description="python logging level")
    p2p: P2PConfig = Field(default_factory=P2PConfig, description="libp2p swarm layer: hear versions and relays on the run's topic, fetch verified shards from peers when relays fail (bootstrap: the coordinator's, from GET /v1/run, unless set)")
    pins: KeyPins = Field(default_factory=KeyPins, description="operator, coordinator and verifier keys trusted "
                          "ahead of GET /v1/run: a served key that differs stops the verifier at start (empty = "
                          "believe the coordinator)")
