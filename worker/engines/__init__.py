"""Inference engines: load a policy version, generate with seeded sampling, return tokens
and the final hidden states that proofs are built from. `base.py` is the interface; one
file per backend; `make_engine` picks one by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.engines.base import Engine, GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from worker.config import VllmSettings


def make_engine(name: str, device: str = "auto", dtype: str = "auto", threads: int = 0,
                vllm: "VllmSettings | None" = None) -> Engine:
    """`vllm`: the vLLM engine's settings (worker config `[vllm]`), used when vLLM is picked."""
    if name in ("auto", "transformers"):
        if name == "auto":
            try:
                import torch

                if torch.cuda.is_available():
                    import vllm  # noqa: F401

                    name = "vllm"
            except ImportError:
                pass
        if name in ("auto", "transformers"):
            from worker.engines.transformers_engine import TransformersEngine

            return TransformersEngine(device=device, dtype=dtype, threads=threads)
    if name == "vllm":
        from worker.engines.vllm_engine import VllmEngine  # type: ignore[import-not-found]

        return VllmEngine(device=device, dtype=dtype, threads=threads, settings=vllm)
    raise ValueError(f"unknown engine {name!r}; use auto, transformers or vllm")


__all__ = ["Engine", "GenerationRequest", "GenerationResult", "make_engine"]
