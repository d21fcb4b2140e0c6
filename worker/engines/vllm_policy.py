"""What a vLLM engine may compute with, checked against what vLLM actually resolved.

`worker.config.VllmSettings` refuses the settings a contributor could write in the config;
this module checks the engine vLLM built, which can differ from the arguments (a checkpoint
whose config.json carries a `quantization_config`, vLLM environment variables, another dtype
than asked for on this platform). The rule: the run decides the compute dtype (its
`allowed_dtypes`, agreed at join); weights and activations stay in that dtype (no
quantisation), the KV cache too ('auto', or that dtype by name), one token per step (no
speculative decoding), one batch in flight (no pipeline parallelism: `vllm_capture` pairs
each batch's hidden states with its sampler). `VllmEngine` refuses to start on any finding.

Pure: reads attributes of vLLM's `VllmConfig` (duck-typed, so the default suite tests it
without vLLM).
"""

from __future__ import annotations

from typing import Any

from protocol import dtypes


def findings(vllm_config: Any, dtype: str) -> list[str]:
    """What in `vllm_config` the run does not allow, for a worker that computes in `dtype`
    (a canonical name); empty when the engine is fine."""
    out: list[str] = []
    model = vllm_config.model_config
    quant = getattr(model, "quantization", None)
    if quant:
        out.append(f"quantization {quant!r} (from the arguments or the checkpoint's config.json)")
    resolved = dtypes.canonical(str(getattr(model, "dtype", "")))
    if resolved != dtype:
        out.append(f"vLLM resolved the compute dtype to {resolved or getattr(model, 'dtype', None)}, not {dtype}")
    cache = str(getattr(vllm_config.cache_config, "cache_dtype", "auto"))
    if cache != "auto" and dtypes.canonical(cache) != dtype:
        out.append(f"KV-cache dtype {cache!r}")
    if getattr(vllm_config, "speculative_config", None) is not None:
        out.append("speculative decoding")
    pp = int(getattr(vllm_config.parallel_config, "pipeline_parallel_size", 1) or 1)
    if pp > 1:
        out.append(f"pipeline parallelism ({pp} stages)")
    return out
