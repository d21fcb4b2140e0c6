"""Recent policy versions' weights, for recomputing behaviour log-probabilities.

A rollout generated with version v (inside the async window) is trained on when the trainer
is already at version n > v. Its behaviour log-probabilities are recomputed here with the
weights of v, never taken from the worker. `WeightHistory` keeps the weights of the last
few versions: in memory (a CPU copy of the state dict, which is what tiny and medium models
use) or as the path of the version's checkpoint folder on disk (what a restarted trainer
has), loaded lazily into one shadow model that is reused for every old version.

Collaborators: `step.py` asks `logprobs(version, micro_batches)`; `main.py` calls
`remember` after each published version and `forget_before` to bound memory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from trainer.logprobs import token_logprobs
from trainer.packing import MicroBatch


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


class WeightHistory:
    """Weights of recent versions; computes log-probabilities under any of them."""

    def __init__(self, template: Any, keep: int):
        self._template = template
        self.keep = keep
        self._states: dict[int, dict[str, torch.Tensor] | Path] = {}
        self._shadow: Any = None
        self._shadow_version: int | None = None

    def versions(self) -> list[int]:
        return sorted(self._states)

    def __contains__(self, version: int) -> bool:
        return version in self._states

    def remember(self, version: int, model_or_path: Any) -> None:
        """Keep `version`'s weights: a model (copied to CPU now) or a checkpoint folder (read when needed)."""
        if self.keep <= 0:
            return
        if isinstance(model_or_path, (str, Path)):
            self._states[version] = Path(model_or_path)
        else:
            self._states[version] = {k: v.detach().to("cpu", copy=True) for k, v in model_or_path.state_dict().items()}
        while len(self._states) > self.keep:
            del self._states[min(self._states)]

    def paths(self) -> dict[int, Path]:
        """Versions held as checkpoint folders (what followers of a torchrun world load)."""
        return {v: s for v, s in self._states.items() if isinstance(s, Path)}

    def replace_paths(self, paths: dict[int, str | Path]) -> None:
        """Hold exactly these versions, as folders (a follower rank mirrors rank 0's history)."""
        self._states = {int(v): Path(p) for v, p in paths.items()}
        if self._shadow_version not in self._states:
            self._shadow_version = None

    def forget_before(self, version: int) -> None:
        for v in [v for v in self._states if v < version]:
            del self._states[v]

    def _load_shadow(self, state: dict[str, torch.Tensor] | Path, what: str) -> Any:
        if self._shadow is None:
            self._shadow = copy.deepcopy(self._template).eval()
            for p in self._shadow.parameters():
                p.requires_grad_(False)
        if isinstance(state, Path):
            state = _load_state(state)
        missing, unexpected = self._shadow.load_state_dict(state, strict=False)
        # Tied embeddings are saved once; anything else missing means a wrong checkpoint.
        if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
            raise KeyError(f"{what}: weights do not fit the model ({missing[:3]}, {unexpected[:3]})")
        return self._shadow

    def _shadow_at(self, version: int) -> Any:
        if self._shadow_version != version or self._shadow is None:
            self._load_shadow(self._states[version], f"version {version}")
            self._shadow_version = version
        return self._shadow

    def model_at_path(self, path: Path) -> Any:
        """The shadow model loaded with the checkpoint at `path` (evaluation of a sharded trainer)."""
        self._shadow_version = None
        return self._load_shadow(Path(path), str(path))

    @torch.no_grad()
    def logprobs(self, version: int, mb: MicroBatch) -> torch.Tensor:
        """Log-probabilities of `mb`'s targets under `version`'s weights (raises KeyError if unknown)."""
        model = self._shadow_at(version)
        logp, _ = token_logprobs(model, mb)
        return logp
