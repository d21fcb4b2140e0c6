"""The transformers engine (CPU or GPU): batched KV-cache decoding with seeded sampling.

Prompts are left-padded into one batch; position ids follow the attention mask so padding
does not shift positions. At every step the final hidden state of the last position (the
input of the LM head) is kept for each still-running row, which is exactly what the
verifier's prefill recomputes. Sampling is `protocol.sampling.sample_tokens` on the float32
logits. A new policy version is loaded by reading the new folder into the same module when
the architecture is unchanged (in place), else by loading a new model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protocol.lm import base_model, load_model, resolve_device, resolve_dtype
from protocol.messages import EngineInfo
from protocol.sampling import sample_tokens
from worker.engines.base import GenerationRequest, GenerationResult


class TransformersEngine:
    name = "transformers"

    def __init__(self, device: str = "auto", dtype: str = "auto", threads: int = 0):
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = resolve_dtype(dtype)
        if threads:
            torch.set_num_threads(threads)
        self.model = None
        self.version: int | None = None
        self._config_json: str | None = None

    def load(self, checkpoint_dir: Path, version: int) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        config_json = (checkpoint_dir / "config.json").read_text()
        if self.model is not None and config_json == self._config_json:
            from safetensors.torch import load_file

            state = {}
            for f in sorted(checkpoint_dir.glob("*.safetensors")):
                state.update(load_file(str(f), device=str(self.device)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
                self.model = load_model(str(checkpoint_dir), self.device, self.dtype)
        else:
            self.model = load_model(str(checkpoint_dir), self.device, self.dtype)
        self._config_json = config_json
        self.version = version

    def info(self) -> EngineInfo:
        import transformers

        return EngineInfo(name=self.name, version=transformers.__version__,
                          dtype=str(self.dtype).replace("torch.", ""), device=str(self.device))

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.model is None:
            raise RuntimeError("no policy version loaded")
        if not requests:
            return []
        model, dev = self.model, self.device
        B = len(requests)
        L = max(len(r.prompt_ids) for r in requests)
        ids = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, L - len(r.prompt_ids):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        base = base_model(model)
        head = model.get_output_embeddings()
        out = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        last_hidden = out.last_hidden_state[:, -1]
        next_pos = positions[:, -1] + 1
        tokens: list[list[int]] = [[] for _ in requests]
        hiddens: list[list[torch.Tensor]] = [[] for _ in requests]
        finish: list[str | None] = [None] * B
        max_steps = max(r.max_tokens for r in requests)
        for step in range(max_steps):
            logits = head(last_hidden).float()
            running = [i for i in range(B) if finish[i] is None]
            if not running:
                break
            feed = torch.zeros(B, dtype=torch.long)
            # Rows sharing a temperature are sampled together; each row has its own seed.
            for i in running:
                r = requests[i]
                tok = int(sample_tokens(logits[i : i + 1], r.temperature, [r.seed], step)[0])
                tokens[i].append(tok)
                hiddens[i].append(last_hidden[i].to("cpu", copy=True))
                feed[i] = tok
                if tok == r.eos_token_id:
                    finish[i] = "eos"
                elif len(tokens[i]) >= r.max_tokens:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=dev)], dim=1)
            out = base(input_ids=feed.to(dev)[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            last_hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
        results = []
        for i, r in enumerate(requests):
            h = torch.stack(hiddens[i]) if hiddens[i] else torch.zeros(0, last_hidden.shape[-1], dtype=last_hidden.dtype)
            results.append(GenerationResult(token_ids=tokens[i], finish_reason=finish[i] or "length", hidden=h))
        return results
