"""Per-token log-probabilities of completion tokens under a model, for a packed micro-batch.

The worker sampled token t from softmax(logits / temperature) (seeded Gumbel-max, see
`protocol.sampling`), so every log-probability here is of that same temperature-scaled
distribution. One forward pass over the packed rows (position ids restart per sequence and
no attention mask is given, so transformers applies a block-diagonal causal mask), then the
logits at each target's predicting position are gathered: only those (N, V) rows are
normalised, never the whole (rows, L, V) tensor.

Used for the current policy (with gradient), the behaviour policy of older versions and the
reference policy (without gradient).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.packing import MicroBatch


def target_logits(model: Any, mb: MicroBatch) -> torch.Tensor:
    """Logits (N, V) at the positions that predict each completion token, float32."""
    device = next(model.parameters()).device
    out = model(input_ids=mb.input_ids.to(device), position_ids=mb.position_ids.to(device), use_cache=False)
    logits = out.logits
    return logits[mb.row.to(device), mb.col.to(device)].float()


def token_logprobs(model: Any, mb: MicroBatch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log pi(target) per token (N,), entropy per token (N,) or None), temperature-scaled."""
    logits = target_logits(model, mb)
    temps = mb.temperatures.to(logits.device)[:, None]
    logp_all = torch.log_softmax(logits / temps, dim=-1)
    logp = logp_all.gather(-1, mb.targets.to(logits.device)[:, None]).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
