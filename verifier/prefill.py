"""The verifier's one forward pass per submission: prompt + completion, claimed policy version.

Collaborators: `verifier.models` supplies the model; `verifier.judge` consumes the outputs.
All completions of a submission share the lease's prompt, so they go through the model as
one right-padded batch (`protocol.lm.completion_outputs`, the same definition of "final
hidden state" the workers use), split only when the batch would exceed `max_batch_tokens`.
"""

from __future__ import annotations

from typing import Any

import torch

from protocol.lm import completion_outputs
from verifier.job import OpenedJob
from verifier.judge import ModelOutputs


def vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


@torch.no_grad()
def prefill(model: Any, oj: OpenedJob, *, max_batch_tokens: int = 65536, only: list[int] | None = None) -> ModelOutputs:
    """`only`: prefill just these completions (in this order; the precision probe's one)."""
    prompt = list(oj.lease.prompt_token_ids)
    comps = oj.completions if only is None else [oj.completions[i] for i in only]
    hidden: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    start = 0
    while start < len(comps):
        end, longest = start, 0
        while end < len(comps):
            longest = max(longest, len(prompt) + len(comps[end]))
            if end > start and longest * (end - start + 1) > max_batch_tokens:
                break
            end += 1
        for h, lg in completion_outputs(model, prompt, comps[start:end]):
            hidden.append(h.to("cpu"))
            logits.append(lg.float().to("cpu"))
        start = end
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return ModelOutputs(hidden=hidden, logits=logits, dtype=dtype)
