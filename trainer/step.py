"""One GRPO step: kept groups -> packed micro-batches -> behaviour log-probs -> loss -> optimizer update.

Order of work inside a step (the proximal policy is the weights at the start of the step):
1. sequences of this rank, packed (`packing.py`); the loss normaliser is the number of
   completion tokens of the whole step over all ranks;
2. behaviour log-probabilities of tokens from older versions, recomputed with that
   version's weights (`history.py`); tokens of the current version have behaviour =
   proximal, so they cost nothing extra; a version the history no longer holds is counted
   and treated as on-policy (importance weight 1);
3. `updates` passes over the micro-batches, each ending in one optimizer update; the first
   pass records the proximal log-probabilities (they equal the current ones before any
   update, so no extra forward is needed);
4. gradients are summed over ranks by `all_reduce` (identity in one process), clipped to
   `grad_clip`, and applied.

`run_step` is a plain function; `main.py` owns the model, optimizer, history and counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config import LossConfig
from trainer.history import WeightHistory
from trainer.logprobs import token_logprobs
from trainer.loss import LossStats, policy_loss
from trainer.packing import (
    MicroBatch,
    count_targets,
    empty_micro_batch,
    pack,
    sequences_from_groups,
    shard_for_rank,
)


@dataclass
class StepOptions:
    loss: LossConfig
    grad_clip: float
    updates: int = 1
    row_tokens: int = 0
    micro_batch_tokens: int = 8192
    pad_id: int = 0


@dataclass
class StepResult:
    version: int  # the version these weights were at before the step
    groups: int
    sequences: int
    tokens: int  # completion tokens over all ranks
    padded_tokens: int
    real_tokens: int
    micro_batches: int
    grad_norm: float
    stale_tokens: int
    missing_behaviour_tokens: int
    seconds: float
    stats: dict[str, float] = field(default_factory=dict)


def stale_behaviour_logprobs(mbs: list[MicroBatch], version: int, history: WeightHistory | None
                             ) -> tuple[list[tuple[torch.Tensor, torch.Tensor] | None], int, int]:
    """For each micro-batch, (mask of stale tokens whose version the history holds, their
    behaviour log-probs) or None; plus counts of stale tokens and of those with no weights left.
    Versions are visited one at a time so the shadow model loads each version's weights once."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(mbs)
    stale = missing = 0
    versions = sorted({int(v) for mb in mbs for v in mb.versions.unique().tolist()} - {version})
    for v in versions:
        known = history is not None and v in history
        for i, mb in enumerate(mbs):
            sel = mb.versions == v
            n = int(sel.sum())
            if not n:
                continue
            stale += n
            if not known:
                missing += n
                continue
            logp = history.logprobs(v, mb).cpu()
            if out[i] is None:
                out[i] = (torch.zeros_like(sel), torch.zeros(sel.shape[0]))
            mask, values = out[i]
            out[i] = (mask | sel, torch.where(sel, logp, values))
    return out, stale, missing


def run_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    groups: list[tuple[object, list[float]]],
    *,
    version: int,
    opts: StepOptions,
    history: WeightHistory | None = None,
    ref_model: Any = None,
    rank: int = 0,
    world: int = 1,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grad_sync: Callable[[Any], None] | None = None,
    loss_scale: float = 1.0,
    max_count: Callable[[int], int] | None = None,
) -> StepResult:
    """One optimizer step (or `opts.updates` of them) on `groups` (pairs of group and advantages).

    `all_reduce(t)` sums a tensor over ranks; `grad_sync(model)` sums gradients over ranks
    (not needed with FSDP, which reduces in backward: pass `loss_scale=world` there since it
    averages). `max_count(n)` is the maximum of n over ranks: with FSDP every rank must run
    the same number of forward/backward passes, so ranks with fewer micro-batches run empty
    ones (zero loss). In one process all three are None."""
    t0 = time.monotonic()
    seqs_all = sequences_from_groups(groups)
    total_tokens = count_targets(seqs_all)
    seqs = shard_for_rank(seqs_all, rank, world)
    mbs = pack(seqs, row_tokens=opts.row_tokens, micro_batch_tokens=opts.micro_batch_tokens, pad_id=opts.pad_id)
    if max_count is not None:
        mbs = mbs + [empty_micro_batch(opts.pad_id)] * (max_count(len(mbs)) - len(mbs))
    cfg = opts.loss
    need_entropy = cfg.entropy_coef > 0
    model.train()

    ref: list[torch.Tensor | None] = [None] * len(mbs)
    if cfg.kl_coef > 0 and ref_model is not None:
        with torch.no_grad():
            ref = [token_logprobs(ref_model, mb)[0] for mb in mbs]

    stale_lp, stale, missing = stale_behaviour_logprobs(mbs, version, history)
    prox: list[torch.Tensor] = []
    stats = LossStats()
    grad_norm = 0.0
    for update in range(max(1, opts.updates)):
        optimizer.zero_grad(set_to_none=True)
        pass_stats = LossStats()
        for i, mb in enumerate(mbs):
            logp, entropy = token_logprobs(model, mb, with_entropy=need_entropy)
            if mb.num_targets == 0:  # a padding pass: keeps FSDP's collectives in step across ranks
                (logp.sum() * 0.0).backward()
                prox.append(logp.detach())
                continue
            if update == 0:  # before any update the current weights are the proximal policy
                prox.append(logp.detach())
            behav = prox[i]
            if stale_lp[i] is not None:
                mask, values = stale_lp[i]
                behav = torch.where(mask.to(behav.device), values.to(behav.device), behav)
            loss, st = policy_loss(logp, prox[i], behav, mb.advantages.to(logp.device), torch.ones_like(logp), cfg,
                                   num_tokens=total_tokens, ref_logp=ref[i], entropy=entropy)
            (loss * loss_scale).backward()
            pass_stats.add(st)
        if grad_sync is not None:
            grad_sync(model)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor under FSDP
        optimizer.step()
        stats = pass_stats
    optimizer.zero_grad(set_to_none=True)

    totals = torch.tensor([stats.tokens, stats.loss_sum, stats.clipped, stats.ratio_sum, stats.iw_sum,
                           stats.iw_capped, stats.kl_sum, stats.entropy_sum, float(stale), float(missing),
                           float(sum(mb.padded_tokens for mb in mbs)), float(sum(mb.real_tokens for mb in mbs))],
                          dtype=torch.float64)
    if all_reduce is not None:
        totals = all_reduce(totals)
    t = totals.tolist()
    merged = LossStats(tokens=t[0], loss_sum=t[1], clipped=t[2], ratio_sum=t[3], iw_sum=t[4], iw_capped=t[5],
                       kl_sum=t[6], entropy_sum=t[7])
    return StepResult(version=version, groups=len(groups), sequences=len(seqs_all), tokens=total_tokens,
                      padded_tokens=int(t[10]), real_tokens=int(t[11]), micro_batches=len(mbs),
                      grad_norm=grad_norm, stale_tokens=int(t[8]), missing_behaviour_tokens=int(t[9]),
                      seconds=time.monotonic() - t0, stats=merged.means())
