"""The policy-gradient loss of a trainer step: GRPO/PPO-clip with INTELLECT-2's changes, or CISPO.

Inputs are flat per-token tensors of one micro-batch (packed sequences, see `packing.py`):
the current log-probabilities `logp` (with gradient), the proximal log-probabilities
`prox_logp` (the weights at the start of this step, no gradient), the behaviour
log-probabilities `behav_logp` (the weights of the policy version that generated each
rollout, recomputed by the trainer: never taken from a worker), per-token advantages and a
0/1 mask of the completion tokens. All log-probabilities are of the temperature-scaled
distribution the worker sampled from.

Objective (decoupled PPO, Hilton et al. 2021, with INTELLECT-2's two-sided clipping):

    r   = pi_theta / pi_prox                                 (trust region around the proximal policy)
    w   = min(pi_prox / pi_behav, max_importance_weight)     (staleness correction, no gradient)
    grpo:  l = -w * min( min(r, delta) * A, clip(r, 1-eps, 1+eps) * A )
    cispo: l = -w * sg(min(r, delta)) * A * log pi_theta

plus optional `kl_coef * k3(pi_ref, pi_theta)` and `-entropy_coef * H(pi_theta)` per token.
The cap `delta` only bites for negative advantages (PPO's min leaves r * A unbounded there).

Token-level normalisation: the sum over every completion token of the whole step is divided
by the number of those tokens (`num_tokens`, counted over all micro-batches and ranks), so a
step on N ranks or M micro-batches has the same gradient as one process on the whole batch.

Pure functions of tensors; `LossConfig` comes from `config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer.config import LossConfig


@dataclass
class LossStats:
    """Sums over the masked tokens of a micro-batch (divide by `tokens` for means)."""

    tokens: float = 0.0
    loss_sum: float = 0.0
    clipped: float = 0.0  # tokens whose gradient is zeroed or capped by clipping
    ratio_sum: float = 0.0
    iw_sum: float = 0.0
    iw_capped: float = 0.0
    kl_sum: float = 0.0
    entropy_sum: float = 0.0
    extra: dict = field(default_factory=dict)

    def add(self, other: LossStats) -> None:
        for name in ("tokens", "loss_sum", "clipped", "ratio_sum", "iw_sum", "iw_capped", "kl_sum", "entropy_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def means(self) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {"tokens": self.tokens, "loss": self.loss_sum / n, "clip_fraction": self.clipped / n,
                "ratio": self.ratio_sum / n, "importance_weight": self.iw_sum / n,
                "importance_capped_fraction": self.iw_capped / n, "kl": self.kl_sum / n,
                "entropy": self.entropy_sum / n}


def importance_weights(prox_logp: torch.Tensor, behav_logp: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """min(pi_prox / pi_behav, cap), without gradient, and a 0/1 tensor of the capped tokens."""
    raw = torch.exp((prox_logp - behav_logp).detach().float())
    return raw.clamp(max=cap), (raw > cap).float()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per sampled token: e^x - x - 1, x = ref - logp."""
    x = ref_logp.detach() - logp
    return torch.exp(x) - x - 1.0


def policy_loss(
    logp: torch.Tensor,
    prox_logp: torch.Tensor,
    behav_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    num_tokens: float | None = None,
    ref_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The loss of one micro-batch (a scalar to call backward on) and its statistics.

    Every tensor is 1-D over the same tokens. `num_tokens` is the normaliser (all completion
    tokens of the step); by default the mask's sum. `ref_logp` is needed when kl_coef > 0,
    `entropy` when entropy_coef > 0.
    """
    mask = mask.float()
    adv = advantages.float()
    logp32 = logp.float()
    prox = prox_logp.detach().float()
    ratio = torch.exp(logp32 - prox)
    w, capped = importance_weights(prox, behav_logp.float(), cfg.max_importance_weight)
    if cfg.kind == "grpo":
        surr_capped = torch.clamp(ratio, max=cfg.delta) * adv
        surr_clipped = torch.clamp(ratio, 1.0 - cfg.epsilon, 1.0 + cfg.epsilon) * adv
        per_token = -w * torch.minimum(surr_capped, surr_clipped)
        # A token's gradient is cut where the clipped branch is the smaller (constant) one or r > delta.
        clipped = ((surr_clipped < surr_capped) | ((adv < 0) & (ratio > cfg.delta))).float()
    elif cfg.kind == "cispo":
        coef = torch.clamp(ratio, max=cfg.delta).detach()
        per_token = -w * coef * adv * logp32
        clipped = (ratio > cfg.delta).float()
    else:  # config validation makes this unreachable
        raise ValueError(f"unknown loss kind {cfg.kind!r}")
    kl = torch.zeros_like(per_token)
    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs the reference log-probabilities")
        kl = kl_k3(logp32, ref_logp.float())
        per_token = per_token + cfg.kl_coef * kl
    ent = torch.zeros_like(per_token)
    if cfg.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        ent = entropy.float()
        per_token = per_token - cfg.entropy_coef * ent
    n = float(mask.sum()) if num_tokens is None else float(num_tokens)
    loss = (per_token * mask).sum() / max(n, 1.0)
    with torch.no_grad():
        stats = LossStats(
            tokens=float(mask.sum()), loss_sum=float((per_token * mask).sum()),
            clipped=float((clipped * mask).sum()), ratio_sum=float((ratio * mask).sum()),
            iw_sum=float((w * mask).sum()), iw_capped=float((capped * mask).sum()),
            kl_sum=float((kl * mask).sum()), entropy_sum=float((ent * mask).sum()),
        )
    return loss, stats
