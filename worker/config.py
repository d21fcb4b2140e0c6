"""Configuration of the worker daemon (`swarmrl worker --coordinator URL`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from protocol.config import KeyPins
from shardcast.p2p.config import P2PConfig


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    coordinator_url: str = Field("http://127.0.0.1:8700", description="coordinator of the run")
    key_file: Path = Field(Path("~/.swarmrl/worker.key"), description="this worker's identity; created (mode 0600) if missing")
    data_dir: Path = Field(Path("~/.swarmrl/worker"), description="checkpoint cache and submission spool")
    engine: str = Field("auto", description="'auto', 'transformers' or 'vllm'")
    device: str = Field("auto", description="torch device: 'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field("auto", description="compute dtype: 'auto', 'float32', 'bfloat16', 'float16'")
    relays: list[str] = Field(default_factory=list, description="shardcast URLs; empty = those the coordinator advertises")
    max_tasks: int = Field(0, ge=0, description="tasks leased per batch (0 = sized to the hardware)")
    threads: int = Field(0, ge=0, description="torch threads (0 = torch default)")
    status_host: str = Field("127.0.0.1", description="address of the local /status endpoint")
    status_port: int = Field(0, description="port of the local /status endpoint (0 = free port, written to data_dir/status.port)")
    json_logs: bool = Field(False, description="JSON log lines instead of the live terminal view")
    p2p: P2PConfig = Field(default_factory=P2PConfig, description="libp2p swarm layer: hear versions and relays on the run's topic, serve and fetch verified shards from peers (bootstrap: the coordinator's, from GET /v1/run, unless set)")
    pins: KeyPins = Field(default_factory=KeyPins, description="operator, coordinator and verifier keys trusted "
                          "ahead of GET /v1/run: a served key that differs stops the worker at start (empty = "
                          "believe the coordinator)")
