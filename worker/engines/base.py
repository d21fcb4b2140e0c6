"""The engine interface every inference backend implements.

An engine holds one policy version at a time. `generate` must sample with
`protocol.sampling` (seeded Gumbel-max, noise from each request's seed and the completion
position) and return, for every completion token, the final hidden state of the position
that chose it (`protocol.lm` defines this), so that proofs from any engine pass the same
verifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from protocol.messages import EngineInfo


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    seed: int
    temperature: float
    max_tokens: int
    eos_token_id: int
    eos_token_ids: tuple[int, ...] = ()  # every id that ends it (protocol.conformance.lease_eos); () = eos_token_id

    @property
    def ends(self) -> tuple[int, ...]:
        return self.eos_token_ids or (self.eos_token_id,)


@dataclass
class GenerationResult:
    token_ids: list[int]
    finish_reason: Literal["eos", "length"]
    hidden: torch.Tensor  # (len(token_ids), H) on the CPU, in the engine's compute dtype


class Engine(Protocol):
    name: str
    version: int | None

    def load(self, checkpoint_dir: Path, version: int) -> None:
        """Make `checkpoint_dir` (a verified transformers folder) the current policy."""

    def use_dtype(self, dtype: str) -> None:
        """Compute in `dtype` (a canonical name from `protocol.dtypes`) from the next load on."""

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate one completion per request with seeded sampling."""

    def info(self) -> EngineInfo:
        """Name, version, dtype and device, for submissions."""
