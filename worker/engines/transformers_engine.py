"""The transformers engine (CPU or GPU): batched KV-cache decoding with seeded sampling.

Prompts are left-padded into one batch; position ids follow the attention mask so padding
does not shift positions. At every step the final hidden state of the last position (the
input of the LM head) is kept for each still-running row, which is exactly what the
verifier's prefill recomputes: the engine calls the base model and the LM head itself, so
the hidden states come free with decoding (no hook, no second pass; bench/worker.py shows
what a prefill pass would add). Sampling is `protocol.sampling.sample_rows` on the float32
logits, all rows in one pass and one host sync per step; hidden states are copied to the
CPU in blocks of steps, not per token. Rows that finished keep being decoded (their tokens
are discarded) until every row is done: simpler than shrinking the KV cache, and the batch
ends when its longest completion does. A new policy version is loaded by reading the new
folder into the same module when the architecture is unchanged (in place), else by loading
a new model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protocol import heap
from protocol.lm import base_model, load_model, reload_weights, resolve_device, resolve_dtype
from protocol.messages import EngineInfo
from protocol.sampling import sample_rows
from worker.engines.base import GenerationRequest, GenerationResult

_HIDDEN_BLOCK = 64  # decode steps of hidden states gathered on the device before one copy to the CPU
_TRIM_EVERY = 16  # CPU decoding: free heap pages go back to the OS this often (protocol.heap)


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

    def use_dtype(self, dtype: str) -> None:
        """Compute in `dtype` from the next load on (the run decides which dtypes are allowed)."""
        new = resolve_dtype(dtype)
        if new != self.dtype:
            self.dtype, self.model, self._config_json = new, None, None

    def load(self, checkpoint_dir: Path, version: int) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        config_json = (checkpoint_dir / "config.json").read_text()
        self.version = None  # until the new weights are all in: a load that fails labels nothing
        if self.model is not None and config_json == self._config_json:
            if not reload_weights(self.model, checkpoint_dir, self.device):
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
        seeds = [r.seed for r in requests]
        temps = torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=dev)
        width = max(len(r.ends) for r in requests)  # each row's end ids, padded with its first
        eos = torch.tensor([list(r.ends) + [r.ends[0]] * (width - len(r.ends)) for r in requests],
                           dtype=torch.long, device=dev)
        max_tokens = torch.tensor([r.max_tokens for r in requests], dtype=torch.long, device=dev)
        out = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        last_hidden = out.last_hidden_state[:, -1]
        next_pos = positions[:, -1] + 1
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        length = torch.zeros(B, dtype=torch.long, device=dev)      # tokens kept per row
        by_eos = torch.zeros(B, dtype=torch.bool, device=dev)
        step_tokens: list[torch.Tensor] = []
        hidden_blocks: list[torch.Tensor] = []     # (steps, B, H) on the CPU, moved in blocks
        step_hidden: list[torch.Tensor] = []
        for step in range(max(r.max_tokens for r in requests)):
            # Every row is sampled at once: the noise depends only on (seed, step, token id),
            # so batching changes nothing (protocol.sampling.sample_rows == sample_tokens row by row).
            logits = head(last_hidden).float()
            tok = sample_rows(logits, temps, seeds, torch.full((B,), step, dtype=torch.long, device=dev))
            running = ~done
            step_tokens.append(tok)
            step_hidden.append(last_hidden)
            length = length + running.long()
            hit_eos = running & (tok[:, None] == eos).any(dim=1)
            by_eos = by_eos | hit_eos
            done = done | hit_eos | (running & (length >= max_tokens))
            if len(step_hidden) == _HIDDEN_BLOCK:
                hidden_blocks.append(torch.stack(step_hidden).to("cpu"))
                step_hidden = []
            if bool(done.all()):
                break
            if dev.type == "cpu" and step % _TRIM_EVERY == _TRIM_EVERY - 1:
                heap.trim()  # protocol.heap: glibc would otherwise grow ~8 MB per step here
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=dev)], dim=1)
            out = base(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            last_hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
        if step_hidden:
            hidden_blocks.append(torch.stack(step_hidden).to("cpu"))
        hidden = torch.cat(hidden_blocks)                  # (steps, B, H)
        tokens = torch.stack(step_tokens).to("cpu")        # (steps, B)
        lengths, eos_rows = length.tolist(), by_eos.tolist()
        return [GenerationResult(token_ids=tokens[: lengths[i], i].tolist(),
                                 finish_reason="eos" if eos_rows[i] else "length",
                                 hidden=hidden[: lengths[i], i].clone())
                for i in range(B)]
