"""Configuration of the worker daemon (`swarmrl worker --coordinator URL`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.config import KeyPins
from shardcast.p2p.config import P2PConfig


# vLLM settings that change what the model computes. The run decides how workers compute (its
# allowed dtypes, `protocol.dtypes`) and the verifier has limits for nothing else, so a worker
# refuses them at start (here for the config, `worker.engines.vllm_policy` for what vLLM
# resolved). A contributor who forces one anyway is caught by the proof check: the proofs come
# from vLLM's own forward pass (`worker.engines.vllm_capture`); bench/vllm_settings.py measures it.
FORBIDDEN_VLLM_SETTINGS = {
    "quantization": "quantised weights and activations compute other hidden states than the policy",
    "quantization_config": "quantised weights and activations compute other hidden states than the policy",
    "kv_cache_dtype": "a KV cache in another dtype (fp8, int8) changes every later token's hidden state",
    "calculate_kv_scales": "KV-cache scales only matter for a quantised KV cache, which the run does not allow",
    "speculative_config": "speculative decoding samples several tokens per step, outside swarmrl's seeded rule",
    "pipeline_parallel_size": "pipeline parallelism keeps several batches in flight; the hidden-state capture "
                              "pairs one batch's logits with its sampler",
    "dtype": "the compute dtype is the worker's `dtype` field, agreed with the run at join",
}


class VllmSettings(BaseModel):
    """The vLLM engine's settings a contributor may choose; nothing here changes what is computed."""

    model_config = ConfigDict(extra="forbid")
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1, description="share of the GPU's memory vLLM may take "
                                          "(weights, KV cache, CUDA graphs)")
    max_model_len: int | None = Field(None, ge=1, description="longest prompt + completion vLLM plans for "
                                      "(None = the model's own limit); lower it to fit a small GPU")
    enforce_eager: bool = Field(False, description="run without CUDA graphs and torch.compile (slower; for "
                                "debugging: the proofs hold either way)")

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_changes_the_computation(cls, data: Any) -> Any:
        bad = [k for k in (data if isinstance(data, dict) else {}) if k in FORBIDDEN_VLLM_SETTINGS]
        if bad:
            raise ValueError("; ".join(f"vllm.{k} is not allowed by the run: {FORBIDDEN_VLLM_SETTINGS[k]}"
                                       for k in bad) + " (remove it from the worker config)")
        return data


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    coordinator_url: str = Field("http://127.0.0.1:8700", description="coordinator of the run")
    key_file: Path = Field(Path("~/.swarmrl/worker.key"), description="this worker's identity; created (mode 0600) if missing")
    data_dir: Path = Field(Path("~/.swarmrl/worker"), description="checkpoint cache and submission spool")
    engine: str = Field("auto", description="'auto', 'transformers' or 'vllm'")
    vllm: VllmSettings = Field(default_factory=VllmSettings, description="settings of the vLLM engine (memory, "
                               "length, eager mode); quantisation, KV-cache dtypes and speculative decoding "
                               "are refused")
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
