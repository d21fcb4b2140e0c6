"""Hidden states from vLLM's own forward pass: the rows its LM head turned into the logits
that chose each token, captured inside vLLM's worker process and handed to the request
they belong to. Proofs (`protocol.proof`) are built from these rows, so they attest the
computation that picked the tokens, not a separate prefill.

Data flow, per decoding step of vLLM's worker process:

1. The model runner gathers the hidden states of the positions it samples from and calls
   `model.compute_logits(sample_hidden_states)`. `install` wraps that method on the model
   instance: the wrapper hands the rows to `CAPTURE.offer` and computes the logits unchanged.
   These rows are `protocol.lm`'s "final hidden state" (after the final norm, the LM head's
   input): vLLM's `*ForCausalLM.compute_logits` applies only the LM head to them
   (vllm/model_executor/models/qwen2.py, llama.py: `self.logits_processor(self.lm_head, h)`).
2. The sampler then applies swarmrl's seeded-sampling logits processor (`vllm_sampling`) to
   the logits of the same rows; it already knows, for every row, the request (by the
   `swarmrl_key` of its extra_args) and the completion position t, and calls `CAPTURE.claim`
   with them. `claim` keeps a copy of the batch's rows with that attribution (to pinned host
   memory, asynchronously, on a GPU: no per-step wait for the device) and forgets the offer.
3. After `LLM.generate`, the engine calls `take` through `collective_rpc`: the rows of the
   call's keys travel back as bytes (plain msgpack types: vLLM's utility results need no
   pickling) and are assembled per request in token order by `assemble`.

Why this holds under CUDA graphs and torch.compile: in vLLM 0.32 both model runners call
`compute_logits` eagerly, after the captured/compiled forward pass returns:
vllm/v1/worker/gpu_model_runner.py `GPUModelRunner.execute_model` (after `_model_forward`,
"sample_hidden_states = hidden_states[logits_indices]") and
vllm/v1/worker/gpu/model_runner.py `GPUModelRunner.sample` (Model Runner V2, after the
graph replay in `execute_model`; `CudaGraphManager.capture` captures "the model forward
pass" only). `support_torch_compile` decorates the inner `*Model` classes, not the
`*ForCausalLM` that owns `compute_logits`. The gathered rows are a new tensor (advanced
indexing), not a view of a graph's static output buffer, so holding them until the sampler
runs is safe.

Chunked prefill, prefix caching, preemption: a row at sequence position p is always the final
hidden state of position p, i.e. of completion token t = p - prompt_len + 1. Rows of a
prefill chunk that is not the last one are stored under the t the processor names and are
overwritten by the row of the last chunk, which comes later (last row wins per (key, t));
rows with t < 0 are dropped. A request recomputed after preemption (with or without cached
prefix blocks) produces the row of its next token again from the same weights and tokens.
The last prompt token is always recomputed, even on a full prefix-cache hit, so every
completion token has a row. `assemble` fails closed: a request with any row missing, or a
row the processor saw without an offered batch of the same size, raises `CaptureError`.

Invariants: one engine per worker process (the capture is per process, as vLLM's worker
is); compute_logits and the processor run in pairs, one batch at a time (so pipeline
parallelism, which keeps several batches in flight, is refused by `vllm_policy`);
speculative decoding is refused (several rows per request). Tensor-parallel ranks each
capture the same rows; `take` uses the first rank that has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from worker.errors import EngineRefused

ARG_KEY = "swarmrl_key"     # SamplingParams.extra_args: which request of an engine call a row belongs to
EXTENSION = "worker.engines.vllm_capture.CaptureExtension"   # vLLM's worker_extension_cls


class CaptureError(EngineRefused):
    """vLLM's hidden states could not be captured for every token (no proof can be built)."""


@dataclass
class Capture:
    """The rows of one vLLM worker process, from `compute_logits` to `take`."""

    offered: torch.Tensor | None = None                 # rows of the last compute_logits call
    claimed: list[tuple[list[int], Any, list[int], torch.Tensor]] = field(default_factory=list)  # keys, t, rows, batch
    lost: set[int] = field(default_factory=set)         # keys with a row that could not be matched

    def offer(self, hidden: torch.Tensor) -> None:
        self.offered = hidden

    def claim(self, n_rows: int, rows: list[int], keys: list[int], t: Any) -> None:
        """The processor's rows `rows` (of a logits batch of `n_rows`) are completion positions
        `t` (a list, or a tensor on the rows' device) of requests `keys`. Nothing here waits for
        the device: on a GPU the batch's rows go to pinned host memory asynchronously and are
        picked out in `take` (no index tensor is sent to the device)."""
        hidden, self.offered = self.offered, None
        if hidden is None or hidden.shape[0] != n_rows:
            self.lost.update(keys)
            return
        if hidden.device.type == "cpu":
            hidden = hidden.detach().clone()       # never alias a buffer vLLM may reuse
        else:
            hidden = hidden.detach().to("cpu", non_blocking=True)
            t = t.to("cpu", non_blocking=True) if isinstance(t, torch.Tensor) else t
        self.claimed.append((keys, t, rows, hidden))

    def take(self, first: int, end: int) -> dict:
        """The rows of keys in [first, end), as plain types; forgets everything claimed."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        claimed, lost, self.claimed, self.lost = self.claimed, self.lost, [], set()
        parts = []
        for keys, t, rows, batch in claimed:
            t = t.tolist() if isinstance(t, torch.Tensor) else list(t)
            mine = [i for i, k in enumerate(keys) if first <= k < end]
            if mine:
                sel = batch[[rows[i] for i in mine]].contiguous()
                parts.append({"keys": [keys[i] for i in mine], "t": [int(t[i]) for i in mine],
                              "dtype": str(sel.dtype).replace("torch.", ""), "width": int(sel.shape[1]),
                              "data": sel.view(torch.uint8).numpy().tobytes()})
        return {"parts": parts, "lost": sorted(k for k in lost if first <= k < end)}


CAPTURE = Capture()


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise CaptureError(f"captured rows of unknown dtype {name!r}")
    return dt


def assemble(taken: dict, first: int, lengths: list[int]) -> list[torch.Tensor]:
    """Per request `first + i`, its `lengths[i]` rows in token order (T, H) on the CPU."""
    if taken["lost"]:
        raise CaptureError(f"vLLM computed logits for {len(taken['lost'])} request(s) without offering their "
                           "hidden states (an unsupported model runner or vLLM version)")
    rows: dict[tuple[int, int], torch.Tensor] = {}
    for part in taken["parts"]:
        flat = torch.frombuffer(bytearray(part["data"]), dtype=torch.uint8)
        block = flat.view(_dtype(part["dtype"])).reshape(len(part["keys"]), part["width"])
        for k, t, row in zip(part["keys"], part["t"], block):
            if t >= 0:
                rows[(k, t)] = row          # a later row of the same position wins (see the docstring)
    out = []
    for i, n in enumerate(lengths):
        missing = [t for t in range(n) if (first + i, t) not in rows]
        if missing:
            raise CaptureError(f"no hidden state captured for {len(missing)} of the {n} tokens of request {i} "
                               f"(first missing: {missing[0]})")
        out.append(torch.stack([rows[(first + i, t)] for t in range(n)]) if n else torch.zeros(0))
    return out


def install(model: Any) -> bool:
    """Wrap `model.compute_logits` (on the instance) so that its input rows are offered to
    `CAPTURE`; idempotent. False if the model has no `compute_logits`."""
    current = getattr(model, "compute_logits", None)
    if current is None:
        return False
    if getattr(current, "_swarmrl_capture", False):
        return True

    def compute_logits(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        CAPTURE.offer(hidden_states)
        return current(hidden_states, *args, **kwargs)

    compute_logits._swarmrl_capture = True  # type: ignore[attr-defined]
    model.compute_logits = compute_logits
    return True


class CaptureExtension:
    """Mixed into vLLM's worker class (`LLM(worker_extension_cls=EXTENSION)`); its methods are
    called by name through `LLM.collective_rpc`, so nothing is pickled."""

    def swarmrl_install_capture(self) -> str:
        """Install the hook on this worker's model; the model class, or '' if it cannot be."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        CAPTURE.offered = None
        return type(model).__name__ if install(model) else ""

    def swarmrl_take_hidden(self, first: int, end: int) -> dict:
        return CAPTURE.take(first, end)
