"""Per-token log-probabilities of completion tokens under a model, for a packed micro-batch.

The worker sampled token t from softmax(logits / temperature) (seeded Gumbel-max, see
`protocol.sampling`), so every log-probability here is of that same temperature-scaled
distribution. One forward pass over the packed rows (position ids restart per sequence and
no attention mask is given, so transformers applies a block-diagonal causal mask) yields the
final hidden states; those at each target's predicting position are gathered, and the LM
head + log-softmax run on `logit_rows` targets at a time. Under autograd each chunk is
checkpointed (`torch.utils.checkpoint`): its logits are dropped after the forward and
recomputed in the backward, so one chunk of (rows, V) logits exists at a time instead of the
micro-batch's (targets, V) or (rows, L, V). At a 151,936-entry vocabulary and 16k targets
that is 156 MB (512 rows) instead of 10 GB.

The model is called as a whole (`model(...)`, asking transformers for the last position's
logits only: `logits_to_keep=1`), so FSDP2's hooks on the root module run as in a normal
forward (the root's parameters stay gathered from its forward to its backward); the final
hidden states are taken from the base model's output with a forward hook.

Used for the current policy (with gradient), the behaviour policy of older versions and the
reference policy (without gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from protocol.lm import base_model
from trainer.packing import MicroBatch

LOGIT_ROWS = 512  # targets whose full-vocabulary logits exist at once


def target_hidden(model: Any, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states (N, H) at the positions that predict each completion token, the
    model's logits output (one position per row), tied into the loss with weight 0 so that
    FSDP's backward hooks on the root fire as they do for a loss on the logits)."""
    device = next(model.parameters()).device
    ids = mb.input_ids.to(device)
    seen: list[torch.Tensor] = []
    hook = base_model(model).register_forward_hook(lambda _m, _a, out: seen.append(out.last_hidden_state))
    try:
        out = model(input_ids=ids, position_ids=mb.position_ids.to(device), use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return seen[-1][mb.row.to(device), mb.col.to(device)], out.logits


def _chunk(head: Any, h: torch.Tensor, targets: torch.Tensor, temps: torch.Tensor,
           with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(h).float()
    logp_all = torch.log_softmax(logits / temps[:, None], dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else logp.new_zeros(0)
    return logp, entropy


def token_logprobs(model: Any, mb: MicroBatch, with_entropy: bool = False,
                   logit_rows: int = LOGIT_ROWS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log pi(target) per token (N,), entropy per token (N,) or None), temperature-scaled."""
    hidden, empty_logits = target_hidden(model, mb)
    head = model.get_output_embeddings()
    targets = mb.targets.to(hidden.device)
    temps = mb.temperatures.to(hidden.device)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    logps, ents = [], []
    for a in range(0, max(1, hidden.shape[0]), logit_rows):
        args = (head, hidden[a:a + logit_rows], targets[a:a + logit_rows], temps[a:a + logit_rows], with_entropy)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if grad else _chunk(*args)
        logps.append(lp)
        ents.append(ent)
    tie = empty_logits.float()
    logp = torch.cat(logps) + torch.where(torch.isfinite(tie), tie, 0.0).sum() * 0.0  # adds exactly 0
    return logp, torch.cat(ents) if with_entropy else None
