"""The verifier's one forward pass per submission: prompt + completion, claimed policy version.

Collaborators: `verifier.models` supplies the model; `verifier.judge` consumes the outputs.
All completions of a submission share the lease's prompt, so they go through the model as
one right-padded batch (`protocol.lm.completion_hidden`, the same definition of "final
hidden state" the workers use), split only when the batch would exceed `max_batch_tokens`
(8,192 by default: large enough to keep a GPU busy, small enough that one batch's activations
stay a few hundred MB on a small model; the hidden states kept are T x H per completion).

Memory is bounded by a chunk, not by the submission: the base model's pass yields hidden
states only; the LM head then runs on `POSITION_CHUNK` positions at a time
(`protocol.lm.logits_in_chunks`), and each chunk of logits is reduced on the spot to what the
sampling check reads (`verifier.checks.sampling.score_completion`: per position a shortfall
and a magnitude) and dropped. So `ModelOutputs.logits` holds `PositionScores`, not logits, and
the prefill records whether every logit was finite (`ModelOutputs.non_finite`) as it goes.
At a 151,936-entry vocabulary a 16 x 2,048-token submission would need ~20 GB of float32
logits at once; here one chunk is 256 x 151,936 x 4 B = 156 MB (`bench/memory.py`).
"""

from __future__ import annotations

from typing import Any

import torch

from protocol.lm import completion_hidden, logits_in_chunks
from verifier.checks import sampling
from verifier.checks.sampling import PositionScores, score_completion
from verifier.job import OpenedJob
from verifier.judge import ModelOutputs


MAX_BATCH_TOKENS = 8192  # prompt + completion tokens per forward pass: bounds the activations of one batch


def vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


@torch.no_grad()
def prefill(model: Any, oj: OpenedJob, *, max_batch_tokens: int = MAX_BATCH_TOKENS,
            only: list[int] | None = None) -> ModelOutputs:
    """`only`: prefill just these completions (in this order; the precision probe's one)."""
    prompt = list(oj.lease.prompt_token_ids)
    index = list(range(len(oj.completions))) if only is None else list(only)
    comps = [oj.completions[i] for i in index]
    seeds = [oj.lease.seeds[i] for i in index]
    temperature = oj.lease.sampling.temperature
    hidden: list[torch.Tensor] = []
    scores: list[PositionScores] = []
    start = 0
    while start < len(comps):
        end, longest = start, 0
        while end < len(comps):
            longest = max(longest, len(prompt) + len(comps[end]))
            if end > start and longest * (end - start + 1) > max_batch_tokens:
                break
            end += 1
        for k, h in enumerate(completion_hidden(model, prompt, comps[start:end]), start):
            scores.append(score_completion(logits_in_chunks(model, h, sampling.POSITION_CHUNK), comps[k],
                                           seeds[k], temperature))
            hidden.append(h.to("cpu"))
        start = end
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return ModelOutputs(hidden=hidden, logits=scores, dtype=dtype, non_finite=not all(s.finite for s in scores))
